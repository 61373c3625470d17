"""The shipped draft (models/default-lm-draft) with the shipped default-lm: it loads as
default-lm's draft (same tokenizer), greedy output is plain decoding's, and it guesses
well enough to pay (its card gives the measured acceptance)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from app.checkpoint import load_model
from app.engine.draft_runner import DraftModel
from app.engine.engine import Engine, EngineConfig
from app.engine.speculative import SpeculativeConfig
from app.sampling_params import SamplingParams
from app.tokenizer import Tokenizer

MODELS = Path(__file__).resolve().parents[2] / "models"
PROMPTS = ["The meaning of life is", "Once upon a time", "A computer is"]


def test_shipped_draft_guesses_for_default_lm() -> None:
    target_dir, draft_dir = MODELS / "default-lm", MODELS / "default-lm-draft"
    tokenizer = Tokenizer.from_dir(target_dir)
    params = SamplingParams(max_tokens=48, temperature=0.0, ignore_eos=True)
    spec = SpeculativeConfig(method="draft_model", model=str(draft_dir),
                             num_speculative_tokens=3, max_verify_cost=None)

    async def outputs(speculative: SpeculativeConfig | None) -> tuple[list[list[int]], float]:
        draft = None if speculative is None else DraftModel(
            load_model(draft_dir, dtype="float32", device="cpu"), Tokenizer.from_dir(draft_dir))
        engine = Engine(load_model(target_dir, dtype="float32", device="cpu"), tokenizer,
                        EngineConfig(num_kv_blocks=64, speculative=speculative), draft=draft)
        await engine.start()
        try:
            outs = [(await engine.generate(tokenizer.encode(p), params)).completions[0].token_ids
                    for p in PROMPTS]
            stats = engine.stats()
            rate = stats.spec_accepted_tokens / max(1, stats.spec_draft_tokens)
            return outs, rate
        finally:
            await engine.shutdown()

    plain, _ = asyncio.run(outputs(None))
    guessed, acceptance = asyncio.run(outputs(spec))
    assert guessed == plain
    assert acceptance >= 0.5, acceptance
