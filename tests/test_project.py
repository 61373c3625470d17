"""Project-level invariants that a fresh clone depends on."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_torch_pin_is_the_same_everywhere() -> None:
    makefile = re.search(r"torch==([\d.]+)", (ROOT / "Makefile").read_text())
    requirements = re.search(r"^torch==([\d.]+)$", (ROOT / "requirements.txt").read_text(), re.M)
    assert makefile and requirements
    assert makefile.group(1) == requirements.group(1) == "2.13.0"


def test_ci_runs_the_readme_test_command() -> None:
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make serve" in readme


def test_every_setting_is_in_the_readme_table() -> None:
    from app.config import Settings

    readme = (ROOT / "README.md").read_text()
    for name in Settings.model_fields:
        flag, env = f"`--{name.replace('_', '-')}`", f"`LLM_{name.upper()}`"
        assert f"| {flag} | {env} |" in readme, name
