"""Project-level invariants that a fresh clone depends on."""

from __future__ import annotations

import ast
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement

from tests.helpers import require_tool

ROOT = Path(__file__).resolve().parents[1]


def _make(*args: str, env: dict[str, str] | None = None, unset: tuple[str, ...] = ()
          ) -> subprocess.CompletedProcess[str]:
    """`make ARGS` in the repository, as a user would run it, with `env` set over this
    process's environment and the variables in `unset` removed from it."""
    make = shutil.which("make") or ""
    require_tool("make", bool(make), "install Debian's make package")
    # Under `make test` the outer make's variables would make this one a sub-make (which
    # prints "Entering directory" lines and inherits flags): run it as a user would.
    dropped = ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", *unset)
    outer = {k: v for k, v in os.environ.items() if k not in dropped}
    return subprocess.run([make, "--no-print-directory", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**outer, **(env or {})})


def _requirement(path: Path, name: str) -> Requirement:
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and Requirement(line).name == name:
            return Requirement(line)
    raise AssertionError(f"{name} is not in {path.name}")


def test_make_installs_the_torch_that_requirements_pin() -> None:
    """Guards: the Makefile's first torch install drifting from requirements.txt, so the
    next `pip install -r requirements.txt` replaces it (with an unpinned, multi-GB CUDA
    build where the index offers one)."""
    run = _make("-n", "-B", ".venv/bin/.installed")
    assert run.returncode == 0, run.stderr
    installs = [shlex.split(line) for line in run.stdout.splitlines()
                if "pip install" in line and "torch" in line and "-r" not in line.split()]
    assert len(installs) == 1, run.stdout
    made = [Requirement(word) for word in installs[0] if word.startswith("torch")]
    pinned = _requirement(ROOT / "requirements.txt", "torch")
    assert len(made) == 1 and made[0].specifier == pinned.specifier, (made, pinned)
    assert str(pinned.specifier).startswith("=="), "torch is pinned exactly"


def test_ci_runs_the_readme_test_command_strictly(tmp_path: Path) -> None:
    """Guards: CI running something other than what the README tells a developer to run
    (`make test`, then `make image-test`), or running it without CI=true, where missing
    tools only skip their tests and the run stays green. (tests/test_docs.py checks that
    every make target the docs name exists.)"""
    fake = tmp_path / "bin"
    fake.mkdir()
    called = tmp_path / "make-args"
    (fake / "make").write_text(f'#!/bin/sh\necho "CI=$CI $*" >> {called}\n')
    (fake / "make").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PATH"] = f"{fake}{os.pathsep}{os.environ.get('PATH', '')}"
    run = subprocess.run([str(ROOT / ".ci" / "run")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    # Then the container image, built and run (docs/DEPLOYMENT.md, "What CI proves").
    assert called.read_text().splitlines() == ["CI=true test", "CI=true image-test"]
    quick_start = re.search(r"```(?:sh|bash|shell)?\n(.*?)```",
                            (ROOT / "README.md").read_text(), re.S)
    assert quick_start is not None
    assert "make test" in [line.split("#")[0].strip()
                           for line in quick_start.group(1).splitlines()]


def test_every_setting_is_in_the_readme_table() -> None:
    """Guards: a setting added without a row in the README's settings table, or a row
    left for a setting that was renamed or removed."""
    from app.config import Settings

    rows = re.findall(r"^\| `--([a-z0-9-]+)` \| `LLM_([A-Z0-9_]+)` \|", (ROOT / "README.md")
                      .read_text(), re.M)
    assert rows, "no settings table in README.md"
    for flag, env in rows:
        assert flag.replace("-", "_") == env.lower(), (flag, env)
    assert sorted(env.lower() for _, env in rows) == sorted(Settings.model_fields)


def _bare_path(tmp_path: Path) -> Path:
    """A PATH folder with only the programs the tools targets need to run at all."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for program in ("id", "tr"):
        if not (bin_dir / program).exists():
            (bin_dir / program).symlink_to(shutil.which(program) or f"/usr/bin/{program}")
    return bin_dir


def _make_tools_where_nothing_can_be_installed(tmp_path: Path, ci: str | None
                                                ) -> subprocess.CompletedProcess[str]:
    """`make tools` on a machine without any of its tools and no way to install them: no
    apt-get or tool on PATH, no Python for checkov's venv, no fortunes folder."""
    bin_dir = _bare_path(tmp_path)
    env = {"PATH": str(bin_dir)} if ci is None else {"PATH": str(bin_dir), "CI": ci}
    # Under CI=true (as .ci/run sets it) the "local" run must not inherit it.
    return _make("tools", "PYTHON=false", f"TOOLS_VENV={tmp_path / 'tools-venv'}",
                 f"FORTUNES_DIR={tmp_path / 'no-fortunes'}", env=env,
                 unset=("CI",) if ci is None else ())


def test_make_tools_fails_under_ci_naming_each_tool_it_could_not_install(
        tmp_path: Path) -> None:
    """Guards: `make tools` printing "will be skipped" and exiting 0 under CI=true, so the
    browser, promtool, checkov and fortunes tests were skipped and `.ci/run` stayed green."""
    in_ci = _make_tools_where_nothing_can_be_installed(tmp_path, ci="true")
    assert in_ci.returncode != 0, in_ci.stdout
    assert "could not install: promtool checkov fortunes chromium g++ curl" in in_ci.stderr
    # Locally the same machine is fine: the tests say what they skip.
    local = _make_tools_where_nothing_can_be_installed(tmp_path, ci=None)
    assert local.returncode == 0, local.stderr
    assert "unavailable: promtool checkov fortunes chromium g++ curl" in local.stdout


def test_make_image_tools_fails_naming_each_tool_it_could_not_install(
        tmp_path: Path) -> None:
    """Guards: `make image-test` (run by .ci/run) skipping, or failing later with a shell's
    "command not found", on a machine without buildah or debootstrap and no way to install
    them: no Docker daemon, no apt-get. Building and running the image needs both, so
    this fails outside CI as well."""
    bin_dir = _bare_path(tmp_path)
    for ci in ("true", None):
        image = _make("image-tools", "PYTHON=false",
                      env={"PATH": str(bin_dir), **({"CI": ci} if ci else {})},
                      unset=("CI",) if ci is None else ())
        assert image.returncode != 0, image.stdout
        assert "could not install: buildah debootstrap" in image.stderr, image.stderr


def _make_serve(*args: str, env: dict[str, str] | None = None) -> str:
    """The command `make serve` runs (dry run, the install step taken as done)."""
    run = _make("-n", "-o", ".venv/bin/.installed", "serve", *args, env=env)
    assert run.returncode == 0, run.stderr
    return run.stdout.strip().splitlines()[-1]


def test_make_serve_passes_no_flag_that_would_shadow_llm_variables() -> None:
    """Guards: `make serve` passing flags (a flag wins over its LLM_* variable, so
    `LLM_PORT=9000 make serve` would be ignored), or taking PORT/HOST from the environment,
    where they are often set for something else."""
    # PORT in the environment is not make's business: only the command line counts.
    assert _make_serve(env={"LLM_PORT": "9000", "PORT": "1234", "HOST": "0.0.0.0"}) == (
        ".venv/bin/python -m app serve")
    assert _make_serve("PORT=9000", "HOST=0.0.0.0", "MODEL=lm=models/default-lm") == (
        "LLM_HOST='0.0.0.0' LLM_PORT='9000' LLM_MODEL='lm=models/default-lm' "
        ".venv/bin/python -m app serve")


def test_serve_settings_default_to_loopback_and_read_llm_variables(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Guards: a server reachable from the network by default, or LLM_* variables that
    do not reach the settings."""
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


def _settings_from(monkeypatch: pytest.MonkeyPatch, variables: dict[str, str]) -> Any:
    from pydantic_settings import CliApp

    from app.config import Settings

    for name in [n for n in os.environ if n.startswith("LLM_")]:
        monkeypatch.delenv(name)
    for name, value in variables.items():
        if name.startswith("LLM_"):
            monkeypatch.setenv(name, value)
    return CliApp.run(Settings, cli_args=[])


def test_container_and_k8s_bind_all_interfaces(monkeypatch: pytest.MonkeyPatch) -> None:
    """Guards: the image or the pod serving on the loopback default, where nothing outside
    the container can reach it (and the probes fail). The settings are built from the
    Dockerfile's ENV and the ConfigMap's data as the server would build them."""
    from tests.deploy.test_image_smoke import dockerfile_runtime

    image_env, _ = dockerfile_runtime()
    in_image = _settings_from(monkeypatch, image_env)
    assert (in_image.host, in_image.port) == ("0.0.0.0", 8000)
    configmap = yaml.safe_load((ROOT / "k8s" / "base" / "configmap.yaml").read_text())
    in_pod = _settings_from(monkeypatch, {**image_env, **configmap["data"]})
    assert (in_pod.host, in_pod.port) == ("0.0.0.0", 8000)


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
