"""Project-level invariants that a fresh clone depends on."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import require_tool

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


def _make_serve(*args: str, env: dict[str, str] | None = None) -> str:
    """The command `make serve` runs (dry run, the install step taken as done)."""
    make = shutil.which("make") or ""
    require_tool("make", bool(make), "install Debian's make package")
    # Under `make test` the outer make's variables would make this one a sub-make (which
    # prints "Entering directory" lines and inherits flags): run it as a user would.
    outer = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    run = subprocess.run([make, "--no-print-directory", "-n", "-o", ".venv/bin/.installed",
                          "serve", *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, env={**outer, **(env or {})})
    assert run.returncode == 0, run.stderr
    return run.stdout.strip().splitlines()[-1]


def test_make_serve_passes_no_flag_that_would_shadow_llm_variables() -> None:
    # PORT in the environment is not make's business: only the command line counts.
    assert _make_serve(env={"LLM_PORT": "9000", "PORT": "1234", "HOST": "0.0.0.0"}) == (
        ".venv/bin/python -m app serve")
    assert _make_serve("PORT=9000", "HOST=0.0.0.0", "MODEL=lm=models/default-lm") == (
        "LLM_HOST='0.0.0.0' LLM_PORT='9000' LLM_MODEL='lm=models/default-lm' "
        ".venv/bin/python -m app serve")


def test_serve_settings_default_to_loopback_and_read_llm_variables(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic_settings import CliApp

    from app.config import Settings

    for name in [n for n in os.environ if n.startswith("LLM_")]:
        monkeypatch.delenv(name)
    plain = CliApp.run(Settings, cli_args=[])
    assert (plain.host, plain.port) == ("127.0.0.1", 8000)
    assert plain.model == ["default-lm=models/default-lm",
                           "fortune-classifier=models/fortune-classifier"]
    monkeypatch.setenv("LLM_PORT", "9000")
    monkeypatch.setenv("LLM_MODEL", "lm=models/default-lm")
    from_env = CliApp.run(Settings, cli_args=[])
    assert (from_env.host, from_env.port, from_env.model) == (
        "127.0.0.1", 9000, ["lm=models/default-lm"])
    # A flag still wins over the variable, which is why the Makefile passes none.
    assert CliApp.run(Settings, cli_args=["--port", "9001"]).port == 9001


def test_container_and_k8s_bind_all_interfaces() -> None:
    assert "LLM_HOST=0.0.0.0" in (ROOT / "Dockerfile").read_text()
    assert 'LLM_HOST: "0.0.0.0"' in (ROOT / "k8s" / "base" / "configmap.yaml").read_text()


def _third_party_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("app", "bench")}


def _requirement_names(path: Path) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            names.add(re.split(r"[=<>\[;~! ]", line)[0].lower().replace("_", "-"))
    return names


def test_documented_load_generator_needs_only_the_runtime_install() -> None:
    """`python -m bench.load` is documented to run after `make serve`, which installs
    requirements.txt only: every package it imports must be there."""
    from importlib.metadata import packages_distributions

    runtime = _requirement_names(ROOT / "requirements.txt")
    dists = packages_distributions()
    needed = _third_party_imports(ROOT / "bench" / "load.py")
    assert "httpx" in needed
    for module in needed:
        names = {d.lower().replace("_", "-") for d in dists.get(module, [module])}
        assert names & runtime, f"bench/load.py imports {module}, not in requirements.txt"
