"""Which dtype should the service default to on this CPU? Our engine in float32 and
bfloat16 on the same weights, side by side.

    python -m bench.dtype

  (a) batch-1 decode ms/token, (b) 32 concurrent requests x 64 tokens, generated tok/s.
"""

from __future__ import annotations

import random
import statistics
import tempfile
from pathlib import Path

import torch

from app.checkpoint import load_model
from app.tokenizer import Tokenizer
from bench.engine import ROOT, Workload, gpt2_small, run_engine


def main() -> None:
    tokenizer = Tokenizer.from_dir(ROOT / "models" / "default-lm")
    rng = random.Random(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        gpt2 = Path(tmp) / "gpt2-124m"
        gpt2_small(gpt2)
        for name, directory in (("gpt2-124m", gpt2), ("default-lm", ROOT / "models" /
                                                       "default-lm")):
            vocab = load_model(directory, dtype="float32", device="cpu").config.vocab_size
            one = Workload("a", [[rng.randrange(10, vocab) for _ in range(32)]], [64])
            many = Workload("b", [[rng.randrange(10, vocab) for _ in range(64)]
                                  for _ in range(32)], [64] * 32)
            for dtype in ("float32", "bfloat16"):
                loaded = load_model(directory, dtype=dtype, device="cpu")
                a = statistics.median(1000 * statistics.median(run_engine(
                    loaded, tokenizer, one).itl) for _ in range(3))
                b = statistics.median(run_engine(loaded, tokenizer, many).tokens_per_s
                                      for _ in range(2))
                rows.append((name, dtype, a, b))
    print(f"{torch.get_num_threads()} threads")
    print("| model | dtype | (a) ms/token | (b) tok/s | (a) fp32/this | (b) this/fp32 |")
    print("|---|---|---|---|---|---|")
    for name, dtype, a, b in rows:
        base = next(r for r in rows if r[0] == name and r[1] == "float32")
        print(f"| {name} | {dtype} | {a:.1f} | {b:.1f} | {base[2] / a:.2f}x | "
              f"{b / base[3]:.2f}x |")


if __name__ == "__main__":
    main()
