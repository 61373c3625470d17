"""Speculative decoding (n-gram prompt lookup) on the shipped default-lm, against plain
decoding in the same run: two engines, each with its own copy of the model and its own
compiled graphs (one speculating, one not), requests alternating between them, medians of
rounds; the CPU named first.

    python -m bench.speculative [--rounds 5] [--tokens 160] [--compile auto]

Workloads:
  - grounded: the prompt holds a passage and asks for it again (input-grounded: what
    prompt lookup is for; the shipped model copies little from its context);
  - ordinary: fortune-style prompts, greedy (its own output repeats itself);
  - nothing to look up: sampled at temperature 1 (little repeats): the back-off cost;
  - 32 concurrent greedy requests: speculation stands aside (max_batch), the cost of
    asking.
Acceptance per position is printed for each speculating workload.
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
from app.engine.engine import Engine, EngineConfig
from app.engine.speculative import SpeculativeConfig
from app.sampling_params import SamplingParams
from app.tokenizer import Tokenizer
from bench.machine import cpu_info, cpu_line

MODEL = Path(__file__).resolve().parent.parent / "models" / "default-lm"
PASSAGE = ("The cat sat on the mat and looked at the door. Nobody came in, and the cat "
           "went back to sleep.")
GROUNDED = [f"{PASSAGE}\nSay it again:\n{PASSAGE[:40]}",
            f"Quote this: \"{PASSAGE}\"\nQuote: \"The cat"]
ORDINARY = ["The meaning of life is", "Once upon a time", "You will be", "Love is",
            "A computer is"]


def counters(engine: Engine) -> tuple[int, int, list[int]]:
    s = engine.stats()
    return s.spec_draft_tokens, s.spec_accepted_tokens, list(s.spec_accepted_per_position)


async def pair(engines: tuple[Engine, Engine], prompts: list[list[int]],
               params: SamplingParams, rounds: int) -> dict[str, object]:
    """tokens/s with speculation (engines[0]) and without (engines[1], its own model copy
    and compiled graphs, so speculation's step shapes never touch the baseline's), batch 1,
    each prompt in turn; and the acceptance of the speculating runs."""
    engine, baseline = engines
    for e in engines:
        await e.generate(prompts[0], params)  # warm-up
    spec_rates, plain_rates = [], []
    before = counters(engine)
    for _ in range(rounds):
        for e, rates in ((engine, spec_rates), (baseline, plain_rates)):
            tokens, start = 0, time.perf_counter()
            for prompt in prompts:
                out = await e.generate(prompt, params)
                tokens += len(out.completions[0].token_ids)
            rates.append(tokens / (time.perf_counter() - start))
    after = counters(engine)
    scored, kept = after[0] - before[0], after[1] - before[1]
    per_pos = [a - (before[2][i] if i < len(before[2]) else 0)
               for i, a in enumerate(after[2])]
    s, b = statistics.median(spec_rates), statistics.median(plain_rates)
    return {"tokens_per_s_spec": round(s, 1), "tokens_per_s_plain": round(b, 1),
            "ratio": round(s / b, 3), "acceptance": round(kept / scored, 3) if scored else None,
            "kept_per_position": per_pos}


async def concurrent(engines: tuple[Engine, Engine], prompts: list[list[int]],
                     params: SamplingParams, rounds: int) -> dict[str, object]:
    batch = [prompts[i % len(prompts)] + [5 + i] for i in range(32)]
    rates: dict[str, list[float]] = {"spec": [], "plain": []}
    for _ in range(rounds):
        for which, e in (("spec", engines[0]), ("plain", engines[1])):
            start = time.perf_counter()
            outs = await asyncio.gather(*(e.generate(q, params) for q in batch))
            tokens = sum(len(o.completions[0].token_ids) for o in outs)
            rates[which].append(tokens / (time.perf_counter() - start))
    s, b = statistics.median(rates["spec"]), statistics.median(rates["plain"])
    return {"tokens_per_s_spec": round(s, 1), "tokens_per_s_plain": round(b, 1),
            "ratio": round(s / b, 3)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=160)
    parser.add_argument("--k", type=int, default=4, help="num_speculative_tokens")
    parser.add_argument("--compile", default="auto", choices=["auto", "off"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prepack", default="auto", choices=["auto", "off"])
    parser.add_argument("--only", nargs="*", default=None,
                        choices=["grounded", "ordinary", "nothing_to_look_up", "concurrent_32"])
    args = parser.parse_args()
    print(cpu_line(cpu_info()))
    torch.set_num_threads(args.threads)
    tokenizer = Tokenizer.from_dir(MODEL)
    spec = SpeculativeConfig(num_speculative_tokens=args.k)
    engines = tuple(
        Engine(load_model(MODEL, dtype="float32", device="cpu"), tokenizer,
               EngineConfig(compile=args.compile, prepack=args.prepack,
                           speculative=config))
        for config in (spec, None))
    pair_of: tuple[Engine, Engine] = (engines[0], engines[1])
    for e in pair_of:
        await e.start()
    try:
        encode = tokenizer.encode
        greedy = SamplingParams(max_tokens=args.tokens, temperature=0.0, ignore_eos=True)
        sampled = SamplingParams(max_tokens=args.tokens, temperature=1.0, ignore_eos=True,
                                 seed=7)
        prompts = {"grounded": [encode(p) for p in GROUNDED],
                   "ordinary": [encode(p) for p in ORDINARY]}
        work = {
            "grounded": lambda: pair(pair_of, prompts["grounded"], greedy, args.rounds),
            "ordinary": lambda: pair(pair_of, prompts["ordinary"], greedy, args.rounds),
            "nothing_to_look_up": lambda: pair(pair_of, prompts["ordinary"], sampled,
                                               args.rounds),
            "concurrent_32": lambda: concurrent(pair_of, prompts["ordinary"], greedy,
                                                max(1, args.rounds // 2)),
        }
        results: dict[str, object] = {"config": spec.__dict__,
                                      "compile": pair_of[0].stats().compile}
        for name, run in work.items():
            if args.only is None or name in args.only:
                results[name] = await run()
    finally:
        for e in pair_of:
            await e.shutdown()
    for name, row in results.items():
        print(f"{name}: {json.dumps(row)}")


if __name__ == "__main__":
    asyncio.run(main())
