"""The split of a request between the scheduler and the output side (vLLM v1's
EngineCore / OutputProcessor): the request the scheduler sees holds nothing output-side,
request.py and output_processor.py do not import each other, and the output processor
imports neither torch nor the runner."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import subprocess
import sys
from pathlib import Path

import app.engine.request as request_module

ROOT = Path(__file__).resolve().parents[2]
ENGINE = ROOT / "app" / "engine"

# Everything a reader's output is built from; none of it belongs to the scheduler's view.
OUTPUT_SIDE = {"collector", "texts", "stop_texts", "generators", "matchers", "constraint",
               "score_logprobs", "score_top", "embed_sum", "embed_last"}


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, under TYPE_CHECKING too."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_the_scheduler_view_of_a_request_holds_nothing_output_side() -> None:
    classes = [c for _, c in inspect.getmembers(request_module, inspect.isclass)
               if dataclasses.is_dataclass(c) and c.__module__ == request_module.__name__]
    assert classes  # the test did look at the request's dataclasses
    for cls in classes:
        names = {f.name for f in dataclasses.fields(cls)}
        assert not names & OUTPUT_SIDE, (cls.__name__, names & OUTPUT_SIDE)


def test_request_and_output_processor_do_not_import_each_other() -> None:
    request_imports = imported_modules(ENGINE / "request.py")
    assert not request_imports & {"app.engine.output_processor", "app.engine.stream",
                                  "app.engine.stop_text"}, request_imports
    assert "app.engine.request" in imported_modules(ENGINE / "output_processor.py")


def test_the_output_processor_imports_neither_torch_nor_the_runner() -> None:
    code = ("import sys, app.engine.output_processor; "
            "print(sorted(m for m in ('torch', 'app.engine.runner', 'app.engine.sampling_plan',"
            " 'app.sampling') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=120, cwd=ROOT)
    assert done.stdout.strip() == "[]", done.stdout
