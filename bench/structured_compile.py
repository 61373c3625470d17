"""Structured output: the time of a cache-miss compile of a small JSON Schema (each one
new, so each goes through the compile check in the child process), median of 10, on the
shipped default-lm's tokenizer.

    python -m bench.structured_compile

The first compile (which also starts the checker process) is reported apart from the
median; the CPU (model, ISA) is printed with the figures.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from app.structured import ConstraintCompiler, ConstraintSpec
from app.tokenizer import Tokenizer
from bench.machine import cpu_info, cpu_line

ROOT = Path(__file__).resolve().parents[1]
RUNS = 10


def small_schema(i: int) -> str:
    """A small schema, different for every `i` (so never a cache hit)."""
    return json.dumps({"type": "object", "properties": {
        f"name{i}": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 150}},
        "required": [f"name{i}"], "additionalProperties": False})


def main() -> int:
    directory = ROOT / "models" / "default-lm"
    compiler = ConstraintCompiler(Tokenizer.from_dir(directory), 8192)
    print(cpu_line(cpu_info()))
    times = []
    for i in range(RUNS + 1):
        start = time.perf_counter()
        compiler.compile(ConstraintSpec("json_schema", small_schema(i), "bench"))
        times.append(time.perf_counter() - start)
    print(f"first compile: {times[0] * 1000:.1f} ms")
    print(f"cache-miss compile, median of {RUNS}: {statistics.median(times[1:]) * 1000:.1f} ms"
          f" (min {min(times[1:]) * 1000:.1f}, max {max(times[1:]) * 1000:.1f})")
    close = getattr(compiler, "close", None)  # the baseline's compiler has no child to stop
    if close is not None:
        close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
