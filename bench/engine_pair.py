"""The engine alone on the shipped default-lm, for before/after checks of one change: run
it once per tree, alternating (A B A B), each with that tree on PYTHONPATH, and compare
the medians printed (one JSON line per run):

    PYTHONPATH=/path/to/before python -m bench.engine_pair float32 int8
    PYTHONPATH=/path/to/after  python -m bench.engine_pair float32 int8

Batch-1 greedy decode (ms/token, median of 3 runs of 64 tokens) and 16 concurrent
requests (tokens/s, median of 2), with --compile and --prepack on auto. Uses only the
engine API that has been stable across versions (load_model, compute_thread, Engine,
generate); the model loads and runs on one compute thread, as in the server (trees
before 2026-12-07 lack compute_thread: check those out with this file from a later one).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

import torch

from app.checkpoint import load_model
from app.engine.compute import compute_thread
from app.engine.engine import Engine, EngineConfig
from app.sampling_params import SamplingParams
from app.tokenizer import Tokenizer

MODEL = Path(__file__).resolve().parent.parent / "models" / "default-lm"
TOKENS = 64


async def measure(engine: Engine, prompt: list[int]) -> dict[str, float]:
    params = SamplingParams(max_tokens=TOKENS, ignore_eos=True, temperature=0.0)
    await engine.generate(prompt, params)  # warm-up
    batch1 = []
    for _ in range(3):
        start = time.perf_counter()
        await engine.generate(prompt, params)
        batch1.append((time.perf_counter() - start) / TOKENS * 1000)
    concurrent = []
    for _ in range(2):
        start = time.perf_counter()
        await asyncio.gather(*(engine.generate([*prompt, i + 5], params) for i in range(16)))
        concurrent.append(16 * TOKENS / (time.perf_counter() - start))
    return {"batch1_ms_per_token": statistics.median(batch1),
            "concurrent16_tokens_per_s": statistics.median(concurrent)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dtype", choices=["float32", "bfloat16"])
    parser.add_argument("quantization", choices=["none", "int8", "int4"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda on a GPU machine")
    parser.add_argument("--scheduler-steps", type=int, default=0,
                        help="num_scheduler_steps (0: the tree's default; trees before "
                             "multi-step decoding have no such setting)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # loaded and run on one compute thread, as the server does (torch work on a second
    # thread starts a second OpenMP team on the same cores: app/engine/compute.py)
    compute = compute_thread("bench")
    loaded = compute.submit(load_model, MODEL, dtype=args.dtype, device=args.device,
                            quantization=args.quantization).result()
    tokenizer = Tokenizer.from_dir(MODEL)
    config = EngineConfig(compile="auto", prepack="auto")
    if args.scheduler_steps:
        from app.engine.scheduler import SchedulerConfig
        config = EngineConfig(compile="auto", prepack="auto", scheduler=SchedulerConfig(
            num_scheduler_steps=args.scheduler_steps))
    engine = Engine(loaded, tokenizer, config, executor=compute)
    await engine.start()
    try:
        result = await measure(engine, tokenizer.encode("The meaning of life is"))
    finally:
        await engine.shutdown()
    print(json.dumps({"dtype": args.dtype, "quantization": args.quantization,
                      "device": args.device, "scheduler_steps": args.scheduler_steps,
                      **result}))


if __name__ == "__main__":
    asyncio.run(main())
