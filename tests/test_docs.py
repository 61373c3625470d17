"""The docs a user decides with: links that stay inside the repository, one duration per
benchmark, make targets that exist, PERFORMANCE.md opening with what to expect, and
DEPLOYMENT.md saying plainly what CI does with the image."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.helpers import require_tool

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def tracked(*patterns: str) -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "--", *patterns], cwd=ROOT, text=True,
                             capture_output=True, check=True, timeout=30).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        require_tool("git (and a git checkout)", False,
                     f"run from a clone with git installed ({exc})")
        raise  # not reached: require_tool skipped or failed
    return [ROOT / line for line in out.splitlines() if line]


def test_markdown_links_resolve_inside_the_repository() -> None:
    checked = 0
    for md in tracked("*.md"):
        for target in LINK.findall(md.read_text()):
            if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # a URL or an anchor in the same file
            path = (md.parent / target.split("#")[0]).resolve()
            where = f"{md.relative_to(ROOT)} -> {target}"
            assert path.is_relative_to(ROOT), f"links outside the repository: {where}"
            assert path.exists(), f"broken link: {where}"
            checked += 1
    assert checked >= 5


def test_nothing_points_at_files_outside_the_repository() -> None:
    """A fresh clone has no ../shared (or any sibling folder): text may not send a
    reader there."""
    me = Path(__file__).resolve()
    for path in tracked("*.md", "*.py", "*.toml", "Makefile", "Dockerfile", "*.yaml"):
        if path.resolve() == me:
            continue
        text = path.read_text(errors="replace")
        assert "../shared" not in text, path.relative_to(ROOT)


def _minutes(text: str) -> str:
    found = re.findall(r"(\d+(?:-\d+)?) minutes", text)
    assert len(found) == 1, text
    return found[0]


def _make_comment(target: str) -> str:
    """The comment block right above a Makefile target."""
    lines = (ROOT / "Makefile").read_text().splitlines()
    end = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
    start = end
    while start > 0 and lines[start - 1].startswith("#"):
        start -= 1
    return " ".join(lines[start:end])


def _line_with(path: str, needle: str) -> str:
    lines = [line for line in (ROOT / path).read_text().splitlines() if needle in line]
    assert lines, (path, needle)
    return lines[0]


@pytest.mark.parametrize(("target", "module"), [("bench-peers", "peers"),
                                                ("bench", "engine")])
def test_each_benchmark_has_one_duration_everywhere(target: str, module: str) -> None:
    stated = {_minutes(_make_comment(target)),
              _minutes(_line_with(f"bench/{module}.py", f"python -m bench.{module} "))}
    performance = [line for line in (ROOT / "docs" / "PERFORMANCE.md").read_text()
                   .splitlines() if f"bench.{module}" in line and "minutes" in line]
    stated |= {_minutes(line) for line in performance}
    assert len(stated) == 1, stated


def test_every_make_target_the_docs_name_exists() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z0-9-]*):", makefile, re.M))
    named: set[str] = set()
    for path in [*tracked("*.md"), ROOT / "pyproject.toml", ROOT / "Makefile"]:
        # As a command: in backticks, at a line's start (code blocks), or "run with make X".
        named |= set(re.findall(r"(?:`|^\s*|run with |[(;] )make ([a-z][a-z0-9-]*)",
                                path.read_text(), re.M))
    assert "test-slow" in named  # pyproject.toml's marker description names it
    assert named <= targets, named - targets


def test_performance_opens_with_what_to_expect() -> None:
    text = (ROOT / "docs" / "PERFORMANCE.md").read_text()
    sections = re.findall(r"^## (.+)$", text, re.M)
    assert sections[0] == "What to expect"
    first = text.split("\n## ")[1]
    assert "AMD EPYC Zen 4" in first and "2 vCPUs" in first
    for model in ("`default-lm`", "GPT-2 124M"):
        assert model in first
    assert "ms per token" in first and "tokens/s" in first
    assert text.index("## What to expect") < text.index("Against the targets")


def test_deployment_says_what_ci_proves_of_the_image_and_how_to_push_it() -> None:
    text = (ROOT / "docs" / "DEPLOYMENT.md").read_text()
    # CI builds and runs the image after the tests, and the docs say so with its cost.
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.startswith("make ")]
    assert ci == ["make test", "make image-test"], ci
    assert "### What CI proves" in text and "`make image-test` in all" in text
    makefile = (ROOT / "Makefile").read_text()
    for target in set(re.findall(r"`make (image[a-z-]*)", text)):
        assert re.search(rf"(?m)^{target}:", makefile), f"DEPLOYMENT.md names make {target}"
    image = re.search(r"image: (\S+):(\S+)", (ROOT / "k8s" / "base" / "deployment.yaml")
                      .read_text())
    assert image is not None
    name, tag = image.groups()
    assert f"docker tag {name}:{tag} <registry>/{name}:{tag}" in text
    assert f"docker push <registry>/{name}:{tag}" in text
    assert f"kustomize edit set image {name}=<registry>/{name}:{tag}" in text
