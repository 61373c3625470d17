"""Speculative decoding through the API (--speculative-config): the same completions as
without it, its counters in /metrics (ours and vLLM's names) and /v1/info, and the
per-request off switch."""

from __future__ import annotations

import asyncio
from typing import Any

from app.main import create_app
from tests.api.test_metrics import get_metrics, value
from tests.app_helpers import running_app, settings_for
from tests.waiting import until

SPEC = ('{"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_min": 1, '
        '"cooldown": 0, "max_verify_cost": null}')
PROMPTS = [[7, 8, 9, 10, 7, 8, 9, 10, 7, 8], [21, 22, 23, 21, 22, 23, 21], [5, 6, 5, 6, 5]]


def test_speculation_changes_nothing_but_speed(checkpoints: dict[str, Any]) -> None:
    async def answers(config: str | None, **extra: Any) -> tuple[list[str], Any, Any]:
        settings = settings_for(f"lm={checkpoints['lm']}", speculative_config=config,
                                metrics_compat="vllm")
        async with running_app(settings) as (_, client):
            texts = []
            for prompt in PROMPTS:
                r = await client.post("/v1/completions", json={
                    "model": "lm", "prompt": prompt, "max_tokens": 24, "temperature": 0,
                    "ignore_eos": True, **extra})
                assert r.status_code == 200, r.text
                texts.append(r.json()["choices"][0]["text"])
            info = (await client.get("/v1/info")).json()["models"][0]
            return texts, info, await get_metrics(client)

    async def main() -> None:
        plain, plain_info, _ = await answers(None)
        assert plain_info["speculative"] == "off" and plain_info["spec_acceptance_rate"] is None
        spec, info, metrics = await answers(SPEC)
        assert spec == plain
        assert info["speculative"].startswith("ngram: 4 tokens")
        drafts = value(metrics, "llm_spec_decode_drafts_total", model="lm")
        accepted = value(metrics, "vllm:spec_decode_num_accepted_tokens_total",
                         model_name="lm")
        scored = value(metrics, "llm_spec_decode_draft_tokens_total", model="lm")
        assert drafts > 0 and 0 < accepted <= scored
        assert info["spec_acceptance_rate"] == accepted / scored
        assert value(metrics, "vllm:spec_decode_num_accepted_tokens_per_pos_total",
                     model_name="lm", position="0") > 0
        off, off_info, _ = await answers(SPEC, speculative=False)
        assert off == plain and off_info["spec_acceptance_rate"] is None

    asyncio.run(main())


def test_draft_model_by_served_name_and_refusals(hf_checkpoint: Any, checkpoints: dict[str, Any],
                                                 tmp_path: Any) -> None:
    """--speculative-config with a draft model named by another served model (same
    tokenizer): the target's completions as without it, the method in /v1/info, the draft
    served as itself without speculating; a draft path that is no checkpoint is refused
    by the settings, one with another tokenizer at startup with a clear reason."""
    import pytest
    from pydantic import ValidationError

    from app.api.state import Phase, ServerState
    from app.train.bpe import train_bpe
    from tests.helpers import CORPUS, build_hf_checkpoint

    draft_dir = hf_checkpoint("qwen2")[0]
    models = [f"lm={checkpoints['lm']}", f"small={draft_dir}"]
    spec = ('{"method": "draft_model", "model": "small", "num_speculative_tokens": 3, '
            '"max_verify_cost": null}')

    async def answers(config: str | None) -> tuple[list[str], dict[str, Any]]:
        async with running_app(settings_for(*models, speculative_config=config)) as (_, client):
            texts = []
            for prompt in PROMPTS:
                r = await client.post("/v1/completions", json={
                    "model": "lm", "prompt": prompt, "max_tokens": 16, "temperature": 0,
                    "ignore_eos": True})
                assert r.status_code == 200, r.text
                texts.append(r.json()["choices"][0]["text"])
            info = (await client.get("/v1/info")).json()["models"]
            return texts, {m["name"]: m for m in info}

    async def main() -> None:
        plain, _ = await answers(None)
        spec_texts, info = await answers(spec)
        assert spec_texts == plain
        assert info["lm"]["speculative"].startswith("draft_model: 3 tokens, draft model small")
        assert info["lm"]["spec_acceptance_rate"] is not None
        assert info["small"]["speculative"] == "off"

    asyncio.run(main())
    with pytest.raises(ValidationError, match="neither a served model's name nor a checkpoint"):
        settings_for(*models, speculative_config='{"model": "/nowhere"}')
    other = tmp_path / "other"
    build_hf_checkpoint("qwen2", other, train_bpe(CORPUS, vocab_size=300, min_frequency=1))

    async def refused() -> str | None:
        settings = settings_for(models[0], speculative_config=f'{{"model": "{other}"}}')
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            state: ServerState = app.state.server
            await until(lambda: state.phase is not Phase.STARTING, "the models to load", 60)
            assert state.phase is Phase.FAILED
            return state.failure

    failure = asyncio.run(refused())
    assert failure is not None and "needs the target's tokenizer" in failure
