"""The one rule for a missing tool (tests.helpers.require_tool): skipped with its reason
locally, a failure naming the tool under CI=true."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import require_cpp_compiler, require_tool

ROOT = Path(__file__).resolve().parents[1]


def test_a_present_tool_neither_skips_nor_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    require_tool("frobnicator", True, "apt-get install frobnicator")


def test_a_missing_tool_skips_with_its_reason_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="frobnicator is missing: apt-get install"):
        require_tool("frobnicator", False, "apt-get install frobnicator")


@pytest.mark.parametrize("value", ["true", "TRUE"])
def test_a_missing_tool_fails_naming_it_under_ci(monkeypatch: pytest.MonkeyPatch,
                                                 value: str) -> None:
    """Guards: a CI run that stays green while the browser, promtool or fortunes tests
    were all skipped for want of their tool."""
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match=r"frobnicator is missing.*CI=true"):
        require_tool("frobnicator", False, "apt-get install frobnicator")


def test_the_run_summary_names_each_skip_and_ci_fails_the_run(tmp_path: Path) -> None:
    """A pytest run as `make test` starts it (pyproject's addopts, -ra among them): every
    skip's reason is in the summary locally, and CI=true turns it into a failed run."""
    module = tmp_path / "test_needs_tools.py"
    module.write_text(
        "from tests.helpers import require_tool\n\n"
        "def test_one():\n    require_tool('first-tool', False, 'how to get the first')\n\n"
        "def test_two():\n    require_tool('second-tool', False, 'how to get the second')\n")
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}

    def run(**extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"),
                               "--rootdir", str(ROOT), "-p", "no:cacheprovider", str(module)],
                              cwd=ROOT, capture_output=True, text=True, timeout=300,
                              env={**env, **extra})

    local = run()
    assert local.returncode == 0, local.stdout + local.stderr
    assert "SKIPPED" in local.stdout
    assert "first-tool is missing: how to get the first" in local.stdout
    assert "second-tool is missing: how to get the second" in local.stdout
    # Each skip is reported at the test that needs the tool, not inside the helper.
    assert "test_needs_tools.py:4: first-tool" in local.stdout, local.stdout
    assert "helpers.py" not in local.stdout
    in_ci = run(CI="true")
    assert in_ci.returncode == 1, in_ci.stdout + in_ci.stderr
    assert "FAILED" in in_ci.stdout and "first-tool is missing" in in_ci.stdout
    assert "second-tool is missing" in in_ci.stdout


def test_a_missing_cpp_compiler_follows_the_same_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """Guards: one module skipping for want of a C++ compiler while another failed."""
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=re.escape("a C++ compiler is missing")):
        require_cpp_compiler()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=re.escape("a C++ compiler is missing")):
        require_cpp_compiler()
