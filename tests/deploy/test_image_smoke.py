"""The container image without Docker: a fresh virtual environment built with the
Dockerfile's own install steps from the same requirements.txt, started with the image's
ENV and CMD, must become ready."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import httpx

from tests.helpers import require_tool
from tests.live import LiveServer

ROOT = Path(__file__).resolve().parents[2]


def dockerfile_runtime() -> tuple[dict[str, str], list[str]]:
    """ENV and CMD of the Dockerfile's final stage (line continuations joined)."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    stages = re.split(r"(?m)^FROM ", text)
    env: dict[str, str] = {}
    cmd: list[str] = []
    for line in stages[-1].splitlines():
        if line.startswith("ENV "):
            for item in shlex.split(line[4:]):
                key, _, value = item.partition("=")
                env[key] = value
        elif line.startswith("CMD "):
            cmd = json.loads(line[4:])
    return env, cmd


def test_dockerfile_installs_from_the_shared_requirements() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "COPY requirements.txt" in text and "pip install -r requirements.txt" in text
    torch_arg = re.search(r"ARG TORCH_VERSION=([\d.]+)", text)
    pinned = re.search(r"^torch==([\d.]+)$", (ROOT / "requirements.txt").read_text(), re.M)
    assert torch_arg and pinned and torch_arg.group(1) == pinned.group(1)
    assert "USER 10001" in text and "HEALTHCHECK" in text


def test_image_install_steps_and_cmd_serve(tmp_path: Path) -> None:
    require_tool("the shipped model models/default-lm",
                 (ROOT / "models" / "default-lm" / "model.safetensors").exists(),
                 "they are in the repository; `make models` re-creates them")
    env, cmd = dockerfile_runtime()
    assert cmd[:3] == ["python", "-m", "app"]
    venv = tmp_path / "venv"
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
           "--disable-pip-version-check"]
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # The Dockerfile's build stage, step by step.
    torch_version = re.search(r"ARG TORCH_VERSION=([\d.]+)", (ROOT / "Dockerfile").read_text())
    assert torch_version is not None
    subprocess.run([*pip, f"torch=={torch_version.group(1)}"], check=True, timeout=900)
    subprocess.run([*pip, "-r", str(ROOT / "requirements.txt")], check=True, timeout=900)
    subprocess.run([*pip, "--no-deps", "--no-build-isolation", str(ROOT)], check=True,
                   timeout=300)
    # The runtime stage builds the quantized kernels beside the installed package; the
    # server then loads that build without compiling (and without a writable cache).
    assert "python -m app.kernels.build --prebuilt" in (ROOT / "Dockerfile").read_text()
    python = str(venv / "bin" / "python")
    subprocess.run([python, "-m", "app.kernels.build", "--prebuilt"], check=True,
                   timeout=600, cwd=tmp_path, env={**os.environ, "HOME": str(tmp_path)})
    loaded = subprocess.run(
        [python, "-c", "from app.kernels.build import quant_extension; "
                       "print(quant_extension()[1])"],
        check=True, capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**os.environ, "HOME": str(tmp_path / "elsewhere")})
    assert "(prebuilt)" in loaded.stdout, loaded.stdout
    # The runtime stage: models where the image puts them, the image's environment.
    model_env = env["LLM_MODEL"]
    for entry in model_env.split(","):
        _, _, path = entry.partition("=")
        assert Path(path).parts[1] == "models", path
    mapped = ",".join(f"{e.split('=')[0]}={ROOT / 'models' / Path(e.split('=')[1]).name}"
                      for e in model_env.split(","))
    run_env = {k: v for k, v in env.items() if k.startswith(("LLM_", "PYTHON"))}
    run_env.update({"LLM_MODEL": mapped, "LLM_HOST": "127.0.0.1", "HOME": str(tmp_path)})
    run_env["PATH"] = f"{venv / 'bin'}:{os.environ.get('PATH', '')}"
    # The image's defaults compile and warm up both models at startup (--compile auto).
    live = LiveServer(env=run_env, python=str(venv / "bin" / "python"), args_override=cmd[3:],
                      ready_timeout=600)
    with live:
        ready = httpx.get(live.url + "/readyz", timeout=5)
        assert ready.status_code == 200
        assert set(ready.json()["models"]) == {e.split("=")[0] for e in model_env.split(",")}
    assert live.proc.returncode == 0
