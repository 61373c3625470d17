"""The integer dot-product kernels (`idot`) against the widening C++ kernels (`cpp`), the
ops called directly: cold weights (12 different ones per timing, as a decode step streams
them), 1 and 16 rows, fp32 and bf16 activations, int8 and int4 (groups of 64).

    OMP_NUM_THREADS=1 python -m bench.int_dot            # 3072 x 768, the bench's shape
    OMP_NUM_THREADS=1 python -m bench.int_dot 768 2048   # out features, in features

Medians of 31 timings of 12 products; ratios are cpp / idot (above 1: idot faster). On a
shared machine prefer 1 thread: with 2, a descheduled thread stalls a product at random.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import torch

from app.kernels.build import quant_extension
from app.modeling.quantize import quantize_int4, quantize_int8

WEIGHTS = 12


def median_ms(fn: Callable[[], object]) -> float:
    times = []
    for _ in range(31):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2] / WEIGHTS * 1e3


def main() -> int:
    module, why = quant_extension()
    if module is None:
        sys.stderr.write(f"{why}\n")
        return 1
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3072
    k = int(sys.argv[2]) if len(sys.argv) > 2 else 768
    torch.manual_seed(0)
    weights = [torch.randn(n, k) * 0.02 for _ in range(WEIGHTS)]
    w8 = [quantize_int8(w) for w in weights]
    w4 = [quantize_int4(w, 64) for w in weights]
    ops = torch.ops.llm_quant
    print(f"{n} x {k}, {torch.get_num_threads()} threads, idot built for "
          f"{ops.idot_isa()}; ms per product")
    for rows in (1, 16):
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(rows, k).to(dtype)
            t = {
                "int8 cpp": median_ms(lambda: [ops.int8_linear(x, q.q, q.scale) for q in w8]),  # noqa: B023
                "int8 idot": median_ms(lambda: [ops.idot_int8_linear(x, q.q, q.scale)  # noqa: B023
                                                for q in w8]),
                "int4 cpp": median_ms(lambda: [ops.int4_linear(x, q.q, q.scale, q.mins, 64)  # noqa: B023
                                               for q in w4]),
                "int4 idot": median_ms(lambda: [ops.idot_int4_linear(x, q.q, q.scale,  # noqa: B023
                                                                     q.mins, 64) for q in w4]),
            }
            print(f"{rows:>2} rows {str(dtype).removeprefix('torch.'):>8}: "
                  + ", ".join(f"{name} {ms:.4f}" for name, ms in t.items())
                  + f"; idot vs cpp: int8 {t['int8 cpp'] / t['int8 idot']:.2f}x, "
                  f"int4 {t['int4 cpp'] / t['int4 idot']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
