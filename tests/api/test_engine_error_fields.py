"""The engine's request checks name no request field (the engine does not know the API's
fields); app/api/errors.py says which field each kind of failure is about."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.engine.errors import InvalidRequest
from app.engine.request import RequestKind
from app.engine.validation import RequestLimits, check_request
from app.modeling.config import ModelConfig, config_from_hf
from app.sampling_params import SamplingParams


def limits(model: ModelConfig) -> RequestLimits:
    return RequestLimits(model_name="m", model=model, max_model_len=64, kv_cache_tokens=32,
                         block_size=4, max_top_logprobs=5, max_num_seqs=2)


@pytest.mark.parametrize(("prompt", "params", "kind"), [
    ([], SamplingParams(), RequestKind.GENERATE),
    ([10**6], SamplingParams(), RequestKind.GENERATE),
    ([5] * 70, SamplingParams(), RequestKind.GENERATE),
    ([5] * 10, SamplingParams(max_tokens=30), RequestKind.GENERATE),
    ([5], SamplingParams(top_p=0.0), RequestKind.GENERATE),
    ([5], SamplingParams(n=3), RequestKind.GENERATE),
    ([5], SamplingParams(), RequestKind.CLASSIFY),
], ids=["empty", "vocabulary", "context", "kv-cache", "sampling", "n", "task"])
def test_engine_request_errors_name_no_field(hf_checkpoint: Any, prompt: list[int],
                                             params: SamplingParams,
                                             kind: RequestKind) -> None:
    directory, _ = hf_checkpoint("llama_gqa_llama3")
    config = config_from_hf(json.loads((directory / "config.json").read_text()))
    with pytest.raises(InvalidRequest) as caught:
        check_request(limits(config), prompt, params, kind)
    assert caught.value.param is None, caught.value.param


def test_the_api_names_the_field_of_an_engine_error(api: Any) -> None:
    """Failures only the engine sees (the KV cache's size, n against the batch, a
    logit_bias token outside the vocabulary) still get 400 naming the field."""

    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        for request, param in (
                ({"prompt": "hello", "max_tokens": 100}, "max_tokens"),
                ({"prompt": "hello", "max_tokens": 2, "n": 3}, "n"),
                ({"prompt": "hello", "max_tokens": 2, "logit_bias": {"100000": 1}},
                 "logit_bias")):
            r = await client.post("/v1/generate", json=request)
            assert r.status_code == 400, r.text
            assert r.json()["error"]["param"] == param, r.text

    api(body, num_kv_blocks=16, block_size=4, max_num_seqs=2)
