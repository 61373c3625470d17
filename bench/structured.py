"""Structured output overhead: tokens/s of the shipped default-lm with and without a JSON
Schema constraint, at batch 1 and 32, in one run; and llguidance's mask time per token.

    python -m bench.structured

Both sides sample at temperature 1.0 with the same seeds; constrained requests end when
their JSON is complete, so tokens/s (generated tokens over wall time) is the comparable
figure. The CPU (model, ISA) and torch threads are printed with the figures.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from app.checkpoint import load_model
from app.engine.compute import compute_thread
from app.engine.engine import Engine, EngineConfig
from app.engine.scheduler import SchedulerConfig
from app.sampling_params import SamplingParams
from app.structured import Constraint, ConstraintCompiler, ConstraintSpec
from app.tokenizer import Tokenizer
from bench.machine import cpu_info, cpu_line, wait_idle

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ('{"type": "object", "properties": {"name": {"type": "string", "maxLength": 12}, '
          '"age": {"type": "integer", "minimum": 0, "maximum": 150}, "mood": {"enum": '
          '["happy", "sad", "meh"]}, "tags": {"type": "array", "items": {"type": "string", '
          '"maxLength": 8}, "maxItems": 3}}, "required": ["name", "age", "mood", "tags"], '
          '"additionalProperties": false}')


def main() -> int:
    directory = ROOT / "models" / "default-lm"
    pool = compute_thread()
    loaded = pool.submit(load_model, directory, "auto", "cpu").result()
    tokenizer = Tokenizer.from_dir(directory)
    compiler = ConstraintCompiler(tokenizer, loaded.config.vocab_size)
    constraint = compiler.compile(ConstraintSpec("json_schema", SCHEMA, "bench"))
    config = EngineConfig(block_size=16, num_kv_blocks=2048, compile="auto", prepack="auto",
                          scheduler=SchedulerConfig(max_num_seqs=64,
                                                    max_num_batched_tokens=512))
    engine = Engine(loaded, tokenizer, config, executor=pool)
    runner = asyncio.Runner()
    runner.run(engine.start())
    prompt = tokenizer.encode("Fortune:")

    def tok_s(batch: int, constrained: bool) -> float:
        async def go() -> float:
            start = time.perf_counter()
            outs = await asyncio.gather(*(
                _generate(engine, prompt, SamplingParams(max_tokens=96, temperature=1.0,
                                                         seed=i),
                          constraint if constrained else None) for i in range(batch)))
            return sum(len(o.completions[0].token_ids) for o in outs) / (
                time.perf_counter() - start)
        wait_idle()
        return runner.run(go())

    cpu = cpu_info()
    print(f"{cpu_line(cpu)}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; default-lm, {loaded.dtype}")
    print("| batch | unconstrained tok/s | JSON Schema tok/s | ratio |")
    print("|---|---|---|---|")
    for batch in (1, 32):
        free, bound = [], []
        for _ in range(3):  # interleaved, medians
            free.append(tok_s(batch, False))
            bound.append(tok_s(batch, True))
        f, b = statistics.median(free), statistics.median(bound)
        print(f"| {batch} | {f:.0f} | {b:.0f} | {b / f:.2f}x |")
    matcher = constraint.template.deep_copy()  # llguidance's own type: is_stopped()
    times: list[float] = []
    rng = torch.Generator().manual_seed(0)
    while not matcher.is_stopped() and len(times) < 200:
        start = time.perf_counter()
        bits = matcher.compute_bitmask()
        times.append(time.perf_counter() - start)
        allowed = [i for i in range(loaded.config.vocab_size)
                   if bits[i // 8] >> (i % 8) & 1]
        matcher.consume_token(allowed[int(torch.randint(len(allowed), (1,),
                                                        generator=rng))])
    print(f"llguidance mask, vocab {loaded.config.vocab_size}: median "
          f"{statistics.median(times) * 1e6:.0f} us per token over {len(times)} tokens")
    runner.run(engine.shutdown())
    runner.close()
    pool.shutdown()
    return 0


async def _generate(engine: Engine, prompt: list[int], params: SamplingParams,
                    constraint: Constraint | None) -> Any:
    from app.engine.output import merge_outputs

    stream = engine.submit(prompt, params, constraint=constraint)
    return merge_outputs(await stream.collect())


if __name__ == "__main__":
    sys.exit(main())
