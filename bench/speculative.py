"""Speculative decoding (n-gram prompt lookup, and a draft model) on the shipped
default-lm, against plain decoding in the same run: engines each with its own copy of the
model and its own compiled graphs (one speculating, one not), requests alternating
between them, medians of rounds; the CPU named first.

    python -m bench.speculative [--rounds 5] [--tokens 160] [--compile auto]
        [--draft models/default-lm-draft] [--draft-k 4]

Workloads:
  - grounded: the prompt holds a passage and asks for it again (input-grounded: what
    prompt lookup is for; the shipped model copies little from its context);
  - ordinary: fortune-style prompts, greedy (its own output repeats itself);
  - nothing to look up: sampled at temperature 1 (little repeats): the back-off cost;
  - 32 concurrent greedy requests: speculation stands aside (max_batch), the cost of
    asking.
  - draft_ordinary, draft_grounded (when the --draft checkpoint exists): the same
    prompts, speculating with the draft model (method draft_model) instead of n-gram
    lookup, against the same plain engine; with the draft's own cost: its share of the
    step time and the mean time of one draft forward and of one plain target step.
Acceptance per position is printed for each speculating workload.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import torch

from app.checkpoint import load_model
from app.engine.compute import compute_thread
from app.engine.draft_runner import DraftModel
from app.engine.engine import Engine, EngineConfig, StepStats
from app.engine.runner_warmup import verification_cost
from app.engine.speculative import SpeculativeConfig
from app.modeling.loaded import LoadedModel
from app.sampling_params import SamplingParams
from app.tokenizer import Tokenizer
from bench.machine import cpu_info, cpu_line

MODEL = Path(__file__).resolve().parent.parent / "models" / "default-lm"
DRAFT = MODEL.parent / "default-lm-draft"
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
    spec_rates: list[float] = []
    plain_rates: list[float] = []
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


class StepClock:
    """Mean step time of an engine (its step observers), between two reads."""

    def __init__(self, engine: Engine) -> None:
        self.steps, self.seconds = 0, 0.0
        engine.step_observers.append(self._observe)

    def _observe(self, stats: StepStats) -> None:
        self.steps += 1
        self.seconds += stats.seconds

    def read(self) -> tuple[int, float]:
        return self.steps, self.seconds


async def draft_pair(engines: tuple[Engine, Engine], prompts: list[list[int]],
                     params: SamplingParams, rounds: int) -> dict[str, object]:
    """pair() with the draft engine first, and what its steps cost: ms per step of each
    engine, the draft's share of the speculating steps, ms per draft forward."""
    drafter = engines[0].core.drafter
    if drafter is None:
        return {"off": engines[0].stats().speculative}
    clocks = [StepClock(e) for e in engines]
    before = [c.read() for c in clocks]
    draft_before = (drafter.forwards, drafter.seconds)
    row = await pair(engines, prompts, params, rounds)
    (n_spec, s_spec), (n_plain, s_plain) = [
        (c.read()[0] - b[0], c.read()[1] - b[1]) for c, b in zip(clocks, before, strict=True)]
    forwards, seconds = drafter.forwards - draft_before[0], drafter.seconds - draft_before[1]
    row.update({"ms_per_step_spec": round(1000 * s_spec / max(1, n_spec), 2),
                "ms_per_step_plain": round(1000 * s_plain / max(1, n_plain), 2),
                "draft_share_of_spec_steps": round(seconds / s_spec, 3) if s_spec else None,
                "ms_per_draft_forward": round(1000 * seconds / max(1, forwards), 2)})
    return row


async def concurrent(engines: tuple[Engine, Engine], prompts: list[list[int]],
                     params: SamplingParams, rounds: int) -> dict[str, object]:
    batch = [prompts[i % len(prompts)] + [5 + i] for i in range(32)]
    rates: dict[str, list[float]] = {"spec": [], "plain": []}
    order = (("spec", engines[0]), ("plain", engines[1]))
    for i in range(rounds):  # alternating which goes first: the first to run 32 rows pays
        for which, e in (order if i % 2 == 0 else order[::-1]):  # one-time costs
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
    parser.add_argument("--draft", type=Path, default=DRAFT,
                        help="draft model checkpoint (its rows are left out if it is absent)")
    parser.add_argument("--draft-k", type=int, default=4,
                        help="num_speculative_tokens of the draft model")
    parser.add_argument("--only", nargs="*", default=None,
                        choices=["grounded", "ordinary", "nothing_to_look_up", "concurrent_32",
                                 "draft_ordinary", "draft_grounded"])
    args = parser.parse_args()
    print(cpu_line(cpu_info()))
    torch.set_num_threads(args.threads)
    tokenizer = Tokenizer.from_dir(MODEL)
    # speculation on whatever the engine's startup check measures (its verdict is printed)
    spec = SpeculativeConfig(num_speculative_tokens=args.k, max_verify_cost=None)
    # every model loaded and run on one compute thread, as the server does: torch work on
    # a second thread would start a second OpenMP team on the same cores
    # (app/engine/compute.py; in-process figures before 2026-12-07 ran that way)
    compute = compute_thread("bench")

    def load(path: Path) -> LoadedModel:
        return compute.submit(load_model, path, dtype="float32", device="cpu").result()

    engines = tuple(
        Engine(load(MODEL), tokenizer,
               EngineConfig(compile=args.compile, prepack=args.prepack,
                           speculative=config), executor=compute)
        for config in (spec, None))
    pair_of: tuple[Engine, Engine] = (engines[0], engines[1])
    drafting: Engine | None = None
    draft_spec = SpeculativeConfig(method="draft_model", model=str(args.draft),
                                   num_speculative_tokens=args.draft_k, max_verify_cost=None)
    wants_draft = args.only is None or any(n.startswith("draft") for n in args.only)
    if wants_draft and (args.draft / "config.json").is_file():
        draft = DraftModel(load(args.draft), Tokenizer.from_dir(args.draft))
        drafting = Engine(load(MODEL), tokenizer,
                          EngineConfig(compile=args.compile, prepack=args.prepack,
                                       speculative=draft_spec), draft=draft,
                          executor=compute)
    for e in (*pair_of, *([drafting] if drafting else [])):
        await e.start()
    # what the engine's startup check (max_verify_cost) measures here: a verification
    # step against a one-token step, on the speculating engine's own graphs
    loop = asyncio.get_running_loop()
    plain_s, verify_s = await loop.run_in_executor(
        compute, verification_cost, pair_of[0].runner, args.k)
    print(f"startup check: a step scoring {args.k + 1} tokens costs "
          f"{verify_s / plain_s:.2f}x a one-token step ({verify_s * 1e3:.2f} vs "
          f"{plain_s * 1e3:.2f} ms; n-gram speculation stays on up to 2.0x by default)")
    try:
        encode = tokenizer.encode
        greedy = SamplingParams(max_tokens=args.tokens, temperature=0.0, ignore_eos=True)
        sampled = SamplingParams(max_tokens=args.tokens, temperature=1.0, ignore_eos=True,
                                 seed=7)
        prompts = {"grounded": [encode(p) for p in GROUNDED],
                   "ordinary": [encode(p) for p in ORDINARY]}
        work: dict[str, Callable[[], Awaitable[dict[str, object]]]] = {
            "grounded": lambda: pair(pair_of, prompts["grounded"], greedy, args.rounds),
            "ordinary": lambda: pair(pair_of, prompts["ordinary"], greedy, args.rounds),
            "nothing_to_look_up": lambda: pair(pair_of, prompts["ordinary"], sampled,
                                               args.rounds),
            "concurrent_32": lambda: concurrent(pair_of, prompts["ordinary"], greedy,
                                                max(2, args.rounds // 2)),
        }
        if drafting is not None:
            with_draft = (drafting, pair_of[1])
            work["draft_ordinary"] = lambda: draft_pair(with_draft, prompts["ordinary"],
                                                        greedy, args.rounds)
            work["draft_grounded"] = lambda: draft_pair(with_draft, prompts["grounded"],
                                                        greedy, args.rounds)
        results: dict[str, object] = {"config": spec.__dict__,
                                      "compile": pair_of[0].stats().compile}
        if drafting is not None:
            results["draft"] = drafting.stats().speculative
        for name, run in work.items():
            if args.only is None or name in args.only:
                results[name] = await run()
    finally:
        for e in (*pair_of, *([drafting] if drafting else [])):
            await e.shutdown()
    for name, row in results.items():
        print(f"{name}: {json.dumps(row)}")


if __name__ == "__main__":
    asyncio.run(main())
