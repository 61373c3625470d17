"""The image's build inputs: a machine's CA bundle and wheel directory reach the build
only as mounts of single RUN steps (never a layer), and the CUDA check names the wheel pip
would choose for the image's Python."""

from __future__ import annotations

import re
from pathlib import Path

from packaging.version import Version

from tests.image.cuda_wheel import best_wheel

ROOT = Path(__file__).resolve().parents[2]


def _wheels(*names: str) -> list[dict[str, object]]:
    return [{"filename": n, "url": f"https://index.invalid/{n}", "size": 1, "metadata": False}
            for n in names]


def test_the_build_inputs_are_mounted_never_copied() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "--mount=type=secret,id=ca" in text
    assert "--mount=type=bind,from=wheels,target=/wheels" in text
    # The empty default stage, so that a plain `docker build .` needs neither input.
    assert re.search(r"(?m)^FROM scratch AS wheels$", text)
    for line in text.splitlines():
        if line.startswith(("COPY", "ADD", "ENV")):
            assert "/wheels" not in line and "secrets" not in line, line
    assert "PIP_CERT=/run/secrets/ca" in text and "ENV PIP_CERT" not in text


def test_the_cuda_check_picks_the_wheel_of_the_images_python() -> None:
    version = Version("2.13.0")
    files = _wheels("torch-2.13.0-cp311-cp311-win_amd64.whl",
                    "torch-2.13.0-cp312-cp312-manylinux_2_28_x86_64.whl",
                    "torch-2.13.0-cp311-cp311-manylinux_2_28_aarch64.whl",
                    "torch-2.12.0-cp311-cp311-manylinux_2_28_x86_64.whl",
                    "torch-2.13.0+cu128-cp311-cp311-manylinux_2_28_x86_64.whl")
    chosen = best_wheel(files, version)
    assert chosen is not None
    assert chosen["filename"] == "torch-2.13.0+cu128-cp311-cp311-manylinux_2_28_x86_64.whl"


def test_the_cuda_check_finds_nothing_for_another_platform_or_glibc() -> None:
    files = _wheels("torch-2.13.0-cp311-cp311-macosx_14_0_arm64.whl",
                    # bookworm's glibc is 2.36: a wheel for 2.39 does not install there
                    "torch-2.13.0-cp311-cp311-manylinux_2_39_x86_64.whl")
    assert best_wheel(files, Version("2.13.0")) is None
