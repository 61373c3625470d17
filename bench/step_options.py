"""The one-graph decode step as the runner compiles it, against the same step compiled
with other inductor options, in one process: calls interleaved, so the host's drift
between processes does not enter the ratio.

    python -m bench.step_options ['{"size_asserts": True}'] [--model DIR] [--rounds 15]

The shipped default-lm unless --model; --compile and --prepack auto, on the engine's
compute thread (as the server runs it); one decode row over a 40-token context. Prints
each arm's median call time every five rounds and the median over rounds of the
per-round ratio (runner's step time / other step time: above 1, the other options are
faster), and checks that both give the same logits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from app.checkpoint import load_model
from app.engine.compute import compute_thread
from app.engine.engine import Engine, EngineConfig
from app.engine.runner import ModelRunner
from app.modeling.decode_step import CompiledStep, decode_rows, decode_step, run_decode_step
from app.modeling.direct_call import DirectCompiled
from app.tokenizer import Tokenizer

MODEL = Path(__file__).resolve().parent.parent / "models" / "default-lm"
CONTEXT = 40
CALLS = 40  # of each arm per round


def compare(runner: ModelRunner, options: dict[str, Any], rounds: int) -> dict[str, float]:
    if runner.step is None:
        raise SystemExit("the runner has no compiled decode step (compile off?)")
    other = CompiledStep(runner.step.kernel_attention)
    other.graph = DirectCompiled(decode_step, dynamic=None, options=options)
    table = list(range(-(-CONTEXT // runner.block_size)))
    rows = decode_rows([1], [CONTEXT], [table], runner.block_size, runner.device,
                       any_lengths=runner.step.kernel_attention)
    if rows is None:
        raise SystemExit("no decode rows for the one-graph step")
    ids, pos = torch.tensor([5]), torch.tensor([CONTEXT - 1])

    def call(step: CompiledStep) -> torch.Tensor:
        return run_decode_step(step, runner.model, ids, pos, runner.cache, rows,
                               runner.one_row_gemv)

    with torch.inference_mode():
        same = torch.equal(call(runner.step), call(other))
        for _ in range(3):  # the other's direct calls identified, caches warm
            call(other)
        ratios, base_us, other_us = [], [], []
        for r in range(rounds):
            ta, tb = [], []
            for _ in range(CALLS):
                t = time.perf_counter()
                call(runner.step)
                ta.append(time.perf_counter() - t)
                t = time.perf_counter()
                call(other)
                tb.append(time.perf_counter() - t)
            base_us.append(statistics.median(ta) * 1e6)
            other_us.append(statistics.median(tb) * 1e6)
            ratios.append(base_us[-1] / other_us[-1])
            if r % 5 == 4:
                print(f"round {r + 1}: runner's step {base_us[-1]:.0f} us, other "
                      f"{other_us[-1]:.0f} us", flush=True)
    return {"same_logits": same, "runner_step_us": statistics.median(base_us),
            "other_step_us": statistics.median(other_us),
            "other_gain_median": statistics.median(ratios),
            "other_gain_min": min(ratios), "other_gain_max": max(ratios)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("options", nargs="?", default='{"size_asserts": true}',
                        help="inductor options of the other step, as JSON")
    parser.add_argument("--model", type=Path, default=MODEL)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    options = json.loads(args.options)
    torch.set_num_threads(args.threads)
    compute = compute_thread("bench")
    loaded = compute.submit(load_model, args.model, dtype="auto", device="cpu").result()
    engine = Engine(loaded, Tokenizer.from_dir(args.model),
                    EngineConfig(compile="auto", prepack="auto"), executor=compute)
    await engine.start()
    try:
        result = compute.submit(compare, engine.runner, options, args.rounds).result()
    finally:
        await engine.shutdown()
    print(json.dumps({"options": options, **result}))


if __name__ == "__main__":
    asyncio.run(main())
