"""Time to first token of requests that arrive while others decode, for before/after
checks of the engine's multi-step decoding: run it once per tree, alternating (A B A B),
each with that tree on PYTHONPATH, and compare the medians printed (one JSON line a run):

    PYTHONPATH=/path/to/before python -m bench.arrival_latency
    PYTHONPATH=/path/to/after  python -m bench.arrival_latency [--scheduler-steps 1]

The shipped default-lm (float32, --compile and --prepack auto, on one compute thread as
the server runs it): `--running` long greedy requests decode while `--arrivals` short
ones arrive one at a time, each after a random pause (seeded) and each awaited to its
end before the next: every newcomer finds the running batch in the middle of its decode
schedules with a seat free (a long request that reaches the context's end is replaced
by another). Printed: each newcomer's time to first token (median and
90th percentile, ms) and the long requests' decode rate (tokens/s). Uses only the
engine API stable across versions (load_model, compute_thread, Engine, submit), and is
self-contained like bench/engine_pair.py (its engine set-up is the same lines), so that
it can be copied into an older tree to measure it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
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


async def first_token_ms(engine: Engine, prompt: list[int], params: SamplingParams) -> float:
    start = time.perf_counter()
    first = 0.0
    async for _ in engine.submit(prompt, params):
        first = first or (time.perf_counter() - start) * 1000
    return first


async def measure(engine: Engine, tokenizer: Tokenizer, running: int, arrivals: int,
                  seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    prompt = tokenizer.encode("The meaning of life is")
    short = SamplingParams(max_tokens=8, ignore_eos=True, temperature=0.0)
    await engine.generate(prompt, short)  # warm-up
    # each long request as long as the context allows, replaced when it ends
    room = engine.core.max_model_len - len(prompt) - 1
    long = SamplingParams(max_tokens=room, ignore_eos=True, temperature=0.0)
    counted = [0] * running
    stop = asyncio.Event()

    async def keep_decoding(k: int) -> None:
        while not stop.is_set():
            async for out in engine.submit([*prompt, k + 5], long):
                counted[k] += sum(len(c.token_ids) for c in out.completions)

    workers = [asyncio.create_task(keep_decoding(k)) for k in range(running)]
    await asyncio.sleep(0.5)  # every long request decoding
    before, started = sum(counted), time.perf_counter()
    ttft = []
    for i in range(arrivals):
        await asyncio.sleep(rng.uniform(0.002, 0.02))
        ttft.append(await first_token_ms(engine, [*prompt, 100 + i], short))
    rate = (sum(counted) - before) / (time.perf_counter() - started)
    stop.set()
    await asyncio.gather(*workers)
    ttft.sort()
    return {"ttft_median_ms": statistics.median(ttft),
            "ttft_p90_ms": ttft[int(0.9 * (len(ttft) - 1))],
            "running_tokens_per_s": rate}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--running", type=int, default=8)
    parser.add_argument("--arrivals", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scheduler-steps", type=int, default=0,
                        help="num_scheduler_steps (0: the tree's default)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    compute = compute_thread("bench")  # load and run on one thread, as the server does
    loaded = compute.submit(load_model, MODEL, dtype="float32", device="cpu").result()
    tokenizer = Tokenizer.from_dir(MODEL)
    config = EngineConfig(compile="auto", prepack="auto")
    if args.scheduler_steps:
        from app.engine.scheduler import SchedulerConfig
        config = EngineConfig(compile="auto", prepack="auto", scheduler=SchedulerConfig(
            num_scheduler_steps=args.scheduler_steps))
    engine = Engine(loaded, tokenizer, config, executor=compute)
    await engine.start()
    try:
        result = await measure(engine, tokenizer, args.running, args.arrivals, args.seed)
    finally:
        await engine.shutdown()
    print(json.dumps({"running": args.running, "scheduler_steps": args.scheduler_steps,
                      **result}))


if __name__ == "__main__":
    asyncio.run(main())
