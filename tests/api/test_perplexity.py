"""/v1/perplexity against `transformers` (whole text, and the perplexity guide's sliding
window over a text longer than the context, by the guide's own loop) and against
`python -m app eval lm`'s computation on the same tokens."""

from __future__ import annotations

import math
import random
from typing import Any

import httpx
import pytest
import torch
from fastapi import FastAPI

from app.api.routes.perplexity import windows
from app.checkpoint import load_model
from app.train.data import pack_tokens
from app.train.evaluate import lm_metrics


def guide_nll(ref: Any, ids: list[int], max_length: int, stride: int) -> float:
    """Mean NLL by the loop of the transformers guide "Perplexity of fixed-length models",
    on the transformers model: windows begin every `stride` tokens, each holds up to
    `max_length` tokens and labels only the `trg_len` tokens after the previous window's
    end (the rest -100), and the model's own shifted loss scores them. One change: each
    window's loss is weighted by the tokens it really averages over; the guide's
    `num_valid_tokens - batch_size` is that for the first window only (later windows'
    first label is masked already), which would count a token too few per later window."""
    encodings = torch.tensor([ids])
    seq_len = encodings.size(1)
    nll_sum, n_tokens, prev_end_loc = 0.0, 0, 0
    for begin_loc in range(0, seq_len, stride):
        end_loc = min(begin_loc + max_length, seq_len)
        trg_len = end_loc - prev_end_loc
        input_ids = encodings[:, begin_loc:end_loc]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            loss = float(ref(input_ids, labels=target_ids).loss)
        scored = int((target_ids[:, 1:] != -100).sum())
        nll_sum += loss * scored
        n_tokens += scored
        prev_end_loc = end_loc
        if end_loc == seq_len:
            break
    return nll_sum / n_tokens


@pytest.mark.parametrize(("length", "window", "stride"),
                         [(600, 256, 128), (600, 64, 16), (10, 4, 3), (5, 256, 128),
                          (300, 65, 64), (7, 2, 1)])
def test_windows_step_by_stride_and_score_each_token_once(length: int, window: int,
                                                          stride: int) -> None:
    spans = windows(length, window, stride)
    assert [start for start, _, _ in spans] == [k * stride for k in range(len(spans))]
    assert all(end - start <= window for start, end, _ in spans)
    assert spans[-1][1] == length
    # Each window scores the tokens after the previous one's end, the first its all but
    # its first: every token but the text's first, once.
    assert [end for _, end, _ in spans[:-1]] == [first for _, _, first in spans[1:]]
    assert [p for _, end, first in spans for p in range(first, end)] == list(range(1, length))


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
        assert abs(first["mean_nll"] - guide_nll(ref, short, 256, 128)) < 1e-4
        assert abs(second["mean_nll"] - guide_nll(ref, long, 256, 128)) < 1e-4
        assert abs(second["perplexity"] - math.exp(second["mean_nll"])) < 1e-6 * second[
            "perplexity"]
        weighted = (first["mean_nll"] * 39 + second["mean_nll"] * 599) / 638
        assert abs(out["mean_nll"] - weighted) < 1e-9
        narrow = await client.post("/v1/perplexity", json={"text": long, "window": 64,
                                                           "stride": 16})
        assert abs(narrow.json()["mean_nll"] - guide_nll(ref, long, 64, 16)) < 1e-4
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
