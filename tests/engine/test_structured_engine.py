"""Structured output inside the engine: masks hold for every completion of n > 1, and a
constrained sequence that is preempted and recomputed produces the same tokens as without
preemption (its matcher state follows its output tokens, which do not change)."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from app.checkpoint import load_model
from app.engine.engine import Engine
from app.sampling_params import SamplingParams
from app.structured import ConstraintCompiler, ConstraintSpec
from app.tokenizer import Tokenizer
from tests.engine.conftest import make_engine, run
from tests.engine.test_engine import prompts

PATTERN = r"[a-z]{2,6}( [a-z]{2,6}){3,8}\."


def test_constrained_output_survives_preemption(hf_checkpoint: Any,
                                                tokenizer: Tokenizer) -> None:
    directory, _ = hf_checkpoint("llama_gqa_llama3")
    loaded = load_model(directory, dtype="float32", device="cpu")
    constraint = ConstraintCompiler(tokenizer, loaded.config.vocab_size).compile(
        ConstraintSpec("regex", PATTERN, "guided_regex"))
    vocab = loaded.config.vocab_size
    target = prompts(vocab, [9], seed=1)[0]
    params = SamplingParams(max_tokens=60, temperature=1.0, seed=11, n=3)

    async def generate(engine: Engine, others: int) -> tuple[list[list[int]], int]:
        crowd = [engine.generate(p, SamplingParams(max_tokens=80, ignore_eos=True))
                 for p in prompts(vocab, [30] * others, seed=2)]
        stream = engine.submit_batch([target], params, constraint=constraint)[0]

        async def collect() -> Any:
            final = None
            async for out in stream:
                final = out if final is None else final
                if final is not out:
                    final.merge(out)
            return final

        results = await asyncio.gather(collect(), *crowd)
        out = results[0]
        return [c.token_ids for c in out.completions], engine.stats().preemptions

    async def body() -> None:
        alone = make_engine(loaded, tokenizer)
        await alone.start()
        try:
            expected, _ = await generate(alone, 0)
        finally:
            await alone.shutdown()
        # 40 blocks of 4 tokens cannot hold 7 sequences of 110 tokens: some are preempted.
        tight = make_engine(loaded, tokenizer, num_kv_blocks=40)
        await tight.start()
        try:
            got, preemptions = await generate(tight, 6)
        finally:
            await tight.shutdown()
            tight.blocks.check_invariants()
        assert preemptions > 0
        assert got == expected
        for ids in got:
            text = tokenizer.decode(ids)
            assert re.fullmatch(PATTERN, text), text

    run(body())
