"""A real browser (Debian's Chromium, driven by Playwright) against a real server.

Playwright's own browser download cannot reach its host here, so the tests launch the
system's Chromium (`make tools` installs Debian's `chromium` package when missing);
LLM_TEST_CHROMIUM names another binary. Screenshots go to a temporary folder whose path
the session prints at the end.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tests.helpers import require_tool
from tests.live import ROOT, LiveServer

playwright_sync: ModuleType | None
try:
    from playwright import sync_api as playwright_sync
except ImportError:  # the browser fixture reports it, once per test, by the one rule
    playwright_sync = None

MODELS = ("--model", f"default-lm={ROOT / 'models' / 'default-lm'}",
          "--model", f"fortune-classifier={ROOT / 'models' / 'fortune-classifier'}")
API_KEY = "playground-test-key"


def chromium_path() -> str | None:
    named = os.environ.get("LLM_TEST_CHROMIUM")
    if named:
        return named
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


# Module scope, not session: while Playwright's sync API runs, the main thread has a
# running event loop, and every later test that calls asyncio.run() would fail.
@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    require_tool("Playwright for Python", playwright_sync is not None,
                 "`make install-dev` installs it")
    assert playwright_sync is not None  # narrowed for mypy: require_tool returned
    path = chromium_path()
    require_tool("chromium", path is not None,
                 "`make tools` installs Debian's chromium package (needs root and apt), or "
                 "set LLM_TEST_CHROMIUM to a Chromium binary")
    assert path is not None  # narrowed for mypy: require_tool returned
    with playwright_sync.sync_playwright() as p:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        launched = p.chromium.launch(executable_path=path, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("playground-screenshots")
    yield folder
    print(f"\nplayground screenshots: {folder}")


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    with LiveServer(*MODELS) as live:
        yield live


@pytest.fixture(scope="module")
def keyed_server() -> Iterator[LiveServer]:
    with LiveServer(*MODELS, "--api-key", API_KEY) as live:
        yield live
