"""Test-only launcher: `python -m tests.reliability.fault_server [serve flags]` runs the
real server with an engine step that raises after the first N steps (N from
FAULT_AFTER_STEPS), to prove that a dead engine makes the process exit non-zero."""

from __future__ import annotations

import os
import sys
from typing import Any

from pydantic_settings import CliApp

from app.config import Settings
from app.engine.engine import Engine
from app.serve import serve


def main() -> int:
    after = int(os.environ.get("FAULT_AFTER_STEPS", "0"))
    original = Engine.__init__

    def patched(self: Engine, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        steps = {"n": 0}

        def fault(out: Any) -> None:
            steps["n"] += 1
            if steps["n"] > after:
                raise RuntimeError("injected device fault")

        self.fault_hook = fault

    Engine.__init__ = patched  # type: ignore[method-assign]
    return serve(CliApp.run(Settings, cli_args=sys.argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
