"""/v1/perplexity against `transformers` (whole text, and the perplexity guide's sliding
window over a text longer than the context) and against `python -m app eval lm`'s
computation on the same tokens."""

from __future__ import annotations

import math
import random
from typing import Any

import httpx
import torch
from fastapi import FastAPI

from app.checkpoint import load_model
from app.train.data import pack_tokens
from app.train.evaluate import lm_metrics


def hf_nll(ref: Any, ids: list[int], window: int, stride: int) -> float:
    """The transformers perplexity guide's loop: chunks of `stride` targets, each scored
    with the `window` tokens ending at it."""
    total, count, first = 0.0, 0, 1
    while first < len(ids):
        end = min(first + stride, len(ids))
        start = max(0, end - window)
        with torch.no_grad():
            logp = torch.log_softmax(ref(torch.tensor([ids[start:end]])).logits[0].float(), -1)
        for pos in range(first, end):
            total -= float(logp[pos - start - 1, ids[pos]])
            count += 1
        first = end
    return total / count


def test_perplexity_matches_transformers(api: Any, hf_checkpoint: Any) -> None:
    _, ref = hf_checkpoint("llama_gqa_llama3")
    rng = random.Random(3)
    short = [rng.randrange(5, 300) for _ in range(40)]
    long = [rng.randrange(5, 300) for _ in range(600)]  # the context is 256

    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        r = await client.post("/v1/perplexity", json={"model": "lm", "text": [short, long],
                                                      "logprobs": True})
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["window"] == 256 and out["stride"] == 128
        first, second = out["results"]
        assert first["tokens"] == 40 and first["scored_tokens"] == 39
        assert second["scored_tokens"] == 599 and len(second["logprobs"]) == 599
        assert abs(first["mean_nll"] - hf_nll(ref, short, 256, 128)) < 1e-4
        assert abs(second["mean_nll"] - hf_nll(ref, long, 256, 128)) < 1e-4
        assert abs(second["perplexity"] - math.exp(second["mean_nll"])) < 1e-6 * second[
            "perplexity"]
        weighted = (first["mean_nll"] * 39 + second["mean_nll"] * 599) / 638
        assert abs(out["mean_nll"] - weighted) < 1e-9
        narrow = await client.post("/v1/perplexity", json={"text": long, "window": 64,
                                                           "stride": 16})
        assert abs(narrow.json()["mean_nll"] - hf_nll(ref, long, 64, 16)) < 1e-4
        text = await client.post("/v1/perplexity", json={"text": "hello world, hello you"})
        assert text.status_code == 200 and text.json()["results"][0]["perplexity"] > 1
        for bad, param in (({"text": long, "window": 64, "stride": 64}, "stride"),
                           ({"text": [7]}, "text"), ({"text": long, "window": 10**5},
                                                     "window")):
            err = await client.post("/v1/perplexity", json=bad)
            assert err.status_code == 400 and err.json()["error"]["param"] == param

    api(body)


def test_perplexity_equals_eval_lm(api: Any, hf_checkpoint: Any, tokenizer: Any) -> None:
    directory, _ = hf_checkpoint("llama_gqa_llama3")
    rng = random.Random(9)
    doc = [rng.randrange(5, 300) for _ in range(300)]
    context = 64
    rows = pack_tokens([doc], tokenizer.eos_ids[0], context)  # what eval lm scores
    expected = lm_metrics(load_model(directory, "float32", "cpu").model, rows)
    stream = [*rows[0].tolist()[:1], *[t for row in rows.tolist() for t in row[1:]]]

    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        r = await client.post("/v1/perplexity", json={"text": stream, "window": context + 1,
                                                      "stride": context})
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["results"][0]["scored_tokens"] == expected["tokens"]
        assert abs(got["mean_nll"] - expected["loss"]) < 1e-5
        assert abs(got["perplexity"] / expected["perplexity"] - 1) < 1e-5

    api(body)
