"""The shipped checkpoints: they load, batch-invariant greedy decoding, readable output."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from app.checkpoint import load_model
from app.engine.engine import Engine, EngineConfig
from app.engine.request import RequestKind
from app.engine.scheduler import SchedulerConfig
from app.sampling_params import SamplingParams
from app.tokenizer import Tokenizer
from tests.helpers import require_tool

MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.fixture(autouse=True)
def _needs_the_shipped_models() -> None:
    require_tool("the shipped model models/default-lm",
                 (MODELS / "default-lm" / "model.safetensors").exists(),
                 "they are in the repository; `make models` re-creates them")


def engine_for(name: str) -> Engine:
    loaded = load_model(MODELS / name, dtype="float32", device="cpu")
    tokenizer = Tokenizer.from_dir(MODELS / name, loaded.config.eos_token_ids)
    cfg = EngineConfig(num_kv_blocks=1024, scheduler=SchedulerConfig(
        max_num_seqs=32, max_num_batched_tokens=512))
    return Engine(loaded, tokenizer, cfg, name=name)


def test_greedy_is_batch_invariant_on_the_shipped_lm() -> None:
    async def main() -> None:
        engine = engine_for("default-lm")
        await engine.start()
        try:
            tok = engine.tokenizer
            prompt = tok.encode("The best thing about computers is")
            params = SamplingParams(max_tokens=32, temperature=0.0, ignore_eos=True)
            alone = (await engine.generate(prompt, params)).completions[0]
            rng = random.Random(3)
            words = "love politics science the a of food sports law and is".split()
            others = [tok.encode(" ".join(rng.choice(words) for _ in range(rng.randint(1, 80))))
                      for _ in range(31)]
            results = await asyncio.gather(
                *(engine.generate(o, SamplingParams(max_tokens=rng.randint(1, 40),
                                                    temperature=0.0, ignore_eos=True))
                  for o in others[:10]),
                engine.generate(prompt, params),
                *(engine.generate(o, params) for o in others[10:]))
            assert results[10].completions[0].token_ids == alone.token_ids
            # Readable text, not one token repeated.
            assert len(set(alone.token_ids)) > 8 and alone.text.strip()
        finally:
            await engine.shutdown()

    asyncio.run(main())


def test_shipped_classifier_knows_its_topics() -> None:
    async def main() -> None:
        engine = engine_for("fortune-classifier")
        await engine.start()
        try:
            labels = engine.model_config.id2label
            cases = {"The compiler crashed and the disk is full.": "computers",
                     "Lawyers and judges argue in court.": "law",
                     "I love you more than words can say.": "love"}
            for text, expected in cases.items():
                out = await engine.generate(engine.tokenizer.encode(text),
                                            SamplingParams(max_tokens=1),
                                            kind=RequestKind.CLASSIFY)
                scores = out.class_scores
                assert scores is not None
                assert labels[max(range(len(labels)), key=scores.__getitem__)] == expected
        finally:
            await engine.shutdown()

    asyncio.run(main())
