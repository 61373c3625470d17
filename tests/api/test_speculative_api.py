"""Speculative decoding through the API (--speculative-config): the same completions as
without it, its counters in /metrics (ours and vLLM's names) and /v1/info, and the
per-request off switch."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.api.test_metrics import get_metrics, value
from tests.app_helpers import running_app, settings_for

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
