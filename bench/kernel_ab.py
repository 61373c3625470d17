"""The C++ kernels at two revisions, timed in one process: a before/after of a kernel change
that a shared host's drift cannot fake.

    python -m bench.kernel_ab BASE [HEAD] [--weights int4|int8|float] [--activations bf16|f32]
        [--rows 8] [--rounds 15]

BASE and HEAD are git revisions of this repository (HEAD defaults to the working tree,
"."). Each one's kernel sources (app/kernels: SOURCES and HEADERS of app.kernels.build) are
built with this CPU's flags under their own op namespace (`llm_quant_base`,
`llm_quant_head`: one process cannot register `llm_quant` twice), then the 134M Llama's
48 products (12 layers of 768->2304, 768->768, 768->4096 and 2048->768) run with each
build in turn, `--rounds` alternations of 7 timings, the order swapped every round.
Printed: each build's median ms for the 48 products and the median of the rounds'
ratios base / head (above 1: HEAD faster), with its range. Weights: int4 (groups of 64),
int8, or plain float in the activations' dtype (`float_linear`).
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from app.kernels.build import HEADERS, SOURCES, _ninja_on_path, cpu_isa
from app.modeling.quantize import quantize_int4, quantize_int8

REPO = Path(__file__).resolve().parents[1]
SHAPES = ((2304, 768), (768, 768), (4096, 768), (768, 2048))  # (out, in) per layer
LAYERS = 12
GROUP = 64
_REGISTRATION = re.compile(r"\b(TORCH_LIBRARY(?:_FRAGMENT|_IMPL)?)\(llm_quant\b")


def renamed(source: str, tag: str) -> str:
    """A kernel source whose op registrations use the namespace `llm_quant_<tag>`."""
    return _REGISTRATION.sub(rf"\1(llm_quant_{tag}", source)


def kernel_source(revision: str, path: Path) -> str:
    """A kernel file's text at a git revision ("." for the working tree)."""
    if revision == ".":
        return path.read_text()
    relative = path.relative_to(REPO).as_posix()
    shown = subprocess.run(["git", "-C", str(REPO), "show", f"{revision}:{relative}"],
                           capture_output=True, text=True)
    if shown.returncode:
        raise SystemExit(f"{relative} at {revision}: {shown.stderr.strip()}")
    return shown.stdout


def build(revision: str, tag: str, root: Path) -> object:
    """The kernels at `revision`, built and loaded; their ops under torch.ops.llm_quant_<tag>."""
    from torch.utils import cpp_extension

    _ninja_on_path()
    folder = root / tag
    (folder / "build").mkdir(parents=True)
    for path in SOURCES + HEADERS:
        (folder / path.name).write_text(renamed(kernel_source(revision, path), tag))
    _, flags = cpu_isa()
    cpp_extension.load(name=f"kernel_ab_{tag}",
                       sources=[str(folder / path.name) for path in SOURCES],
                       build_directory=str(folder / "build"),
                       extra_cflags=["-O3", "-ffast-math", "-fopenmp", *flags],
                       extra_ldflags=["-fopenmp"], verbose=False)
    return getattr(torch.ops, f"llm_quant_{tag}")


def products(ops: object, weights: str, rows: int,
             dtype: torch.dtype) -> Callable[[], None]:
    """The 48 products of one decode step of `rows` rows, as one call."""
    torch.manual_seed(0)
    xs = {k: torch.randn(rows, k).to(dtype) for _, k in SHAPES}
    calls: list[Callable[[], object]] = []
    for _ in range(LAYERS):
        for n, k in SHAPES:
            w = torch.randn(n, k) * 0.02
            x = xs[k]
            if weights == "int4":
                q4 = quantize_int4(w, GROUP)
                calls.append(partial(ops.int4_linear.default,  # type: ignore[attr-defined]
                                     x, q4.q, q4.scale, q4.mins, GROUP))
            elif weights == "int8":
                q8 = quantize_int8(w)
                calls.append(partial(ops.int8_linear.default,  # type: ignore[attr-defined]
                                     x, q8.q, q8.scale))
            else:
                calls.append(partial(ops.float_linear.default,  # type: ignore[attr-defined]
                                     x, w.to(dtype)))

    def step() -> None:
        for call in calls:
            call()
    return step


def median_ms(step: Callable[[], None], timings: int = 7) -> float:
    times = []
    for _ in range(timings):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base")
    parser.add_argument("head", nargs="?", default=".")
    parser.add_argument("--weights", choices=("int4", "int8", "float"), default="int4")
    parser.add_argument("--activations", choices=("bf16", "f32"), default="bf16")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    dtype = torch.bfloat16 if args.activations == "bf16" else torch.float32
    with tempfile.TemporaryDirectory(prefix="kernel-ab-") as root:
        steps = {tag: products(build(revision, tag, Path(root)), args.weights, args.rows, dtype)
                 for tag, revision in (("base", args.base), ("head", args.head))}
        for step in steps.values():
            step()  # warm-up: first-touch of every weight and output
        times: dict[str, list[float]] = {"base": [], "head": []}
        for round_ in range(args.rounds):
            order = ("base", "head") if round_ % 2 == 0 else ("head", "base")
            for tag in order:
                times[tag].append(median_ms(steps[tag]))
    ratios = sorted(b / h for b, h in zip(times["base"], times["head"], strict=True))
    isa, _ = cpu_isa()
    print(f"{args.weights} weights, {args.activations} activations, {args.rows} rows, "
          f"{torch.get_num_threads()} threads, kernels built for {isa}; 48 products:")
    print(f"  base {args.base}: {statistics.median(times['base']):.2f} ms, head {args.head}: "
          f"{statistics.median(times['head']):.2f} ms; base / head median "
          f"{statistics.median(ratios):.3f} (rounds {ratios[0]:.2f}-{ratios[-1]:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
