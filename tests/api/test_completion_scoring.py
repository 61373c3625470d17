"""Completions as lm-evaluation-harness and vLLM clients use them: token-id prompts,
echo with the prompt's logprobs (loglikelihood tasks send exactly this), vLLM's
prompt_logprobs, and max_tokens 0 to score without generating. Values are checked
against `transformers` on the same checkpoint."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import torch
from fastapi import FastAPI

from tests.api.offsets import assert_offsets_cover

PROMPT = [5, 17, 42, 99, 7, 64]


def reference_logprobs(ref: Any, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(ref(torch.tensor([ids])).logits[0].float(), -1)


def test_echo_with_logprobs_scores_token_id_prompts(api: Any, hf_checkpoint: Any) -> None:
    _, ref = hf_checkpoint("llama_gqa_llama3")
    expected = reference_logprobs(ref, PROMPT)

    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        # lm-evaluation-harness's local-completions loglikelihood payload, verbatim.
        r = await client.post("/v1/completions", json={
            "model": "lm", "prompt": [PROMPT, PROMPT[:3]], "temperature": 0,
            "max_tokens": 1, "logprobs": 1, "seed": 1234, "echo": True})
        assert r.status_code == 200, r.text
        choices = sorted(r.json()["choices"], key=lambda c: c["index"])
        assert len(choices) == 2
        lp = choices[0]["logprobs"]
        assert len(lp["tokens"]) == len(PROMPT) + 1 == len(lp["token_logprobs"])
        assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
        for pos in range(1, len(PROMPT)):
            want = float(expected[pos - 1, PROMPT[pos]])
            assert abs(lp["token_logprobs"][pos] - want) < 1e-4
            top = lp["top_logprobs"][pos]
            best = float(expected[pos - 1].max())
            assert abs(max(top.values()) - best) < 1e-4  # lm-eval's greedy check
            assert len(top) <= 2  # the prompt's own token and the most likely one
        # text = the prompt echoed + the completion; offsets run across both (the
        # prompt has byte tokens: tests/api/test_completion_logprobs.py checks those).
        assert choices[0]["text"].startswith(lp["tokens"][0])
        assert_offsets_cover(choices[0]["text"], lp["tokens"], lp["text_offset"])
        assert len(choices[1]["logprobs"]["tokens"]) == 4
        assert r.json()["usage"]["completion_tokens"] == 2

    api(body)


def test_prompt_logprobs_and_scoring_without_generating(api: Any, hf_checkpoint: Any) -> None:
    _, ref = hf_checkpoint("llama_gqa_llama3")
    expected = reference_logprobs(ref, PROMPT)

    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        r = await client.post("/v1/completions", json={
            "prompt": PROMPT, "max_tokens": 0, "echo": True, "prompt_logprobs": 3})
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        assert r.json()["usage"]["completion_tokens"] == 0
        assert choice["finish_reason"] == "length"
        prompt_lps = choice["prompt_logprobs"]
        assert len(prompt_lps) == len(PROMPT) and prompt_lps[0] is None
        for pos in range(1, len(PROMPT)):
            entry = prompt_lps[pos]
            own = entry[str(PROMPT[pos])]
            assert abs(own["logprob"] - float(expected[pos - 1, PROMPT[pos]])) < 1e-4
            assert own["rank"] == int((expected[pos - 1] > expected[pos - 1, PROMPT[pos]])
                                      .sum()) + 1
            assert 3 <= len(entry) <= 4
            others = sorted(v["rank"] for k, v in entry.items() if k != str(PROMPT[pos]))
            # The 3 most likely tokens, ranks 1-3, less the prompt's own if it is one.
            assert others == [r for r in (1, 2, 3) if r != own["rank"]]
        decoded = await client.post("/v1/detokenize", json={"tokens": PROMPT})
        assert choice["text"] == decoded.json()["text"]  # the prompt echoed, nothing more
        bad = await client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 0})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "max_tokens"
        oov = await client.post("/v1/completions", json={"prompt": [1, 10**6]})
        assert oov.status_code == 400 and "vocabulary" in oov.json()["error"]["message"]

    api(body)


def test_streamed_echo_puts_the_prompt_first(api: Any) -> None:
    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        plain = await client.post("/v1/completions", json={
            "prompt": "hello there", "max_tokens": 3, "temperature": 0, "ignore_eos": True})
        async with client.stream("POST", "/v1/completions", json={
                "prompt": "hello there", "max_tokens": 3, "temperature": 0, "echo": True,
                "ignore_eos": True, "stream": True}) as r:
            events = [json.loads(line[6:]) async for line in r.aiter_lines()
                      if line.startswith("data: {")]
        text = "".join(e["choices"][0]["text"] for e in events)
        assert text == "hello there" + plain.json()["choices"][0]["text"]
        assert events[0]["choices"][0]["text"].startswith("hello there")

    api(body)


@pytest.mark.parametrize("prompt", [[], [[]], [-1]])
def test_malformed_token_id_prompts_get_422_or_400(api: Any, prompt: Any) -> None:
    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        r = await client.post("/v1/completions", json={"prompt": prompt})
        assert r.status_code in (400, 422) and "error" in r.json()

    api(body)


def test_generate_prompt_logprobs(api: Any, hf_checkpoint: Any) -> None:
    _, ref = hf_checkpoint("llama_gqa_llama3")

    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        tok = await client.post("/v1/tokenize", json={"text": "hello world again"})
        ids = tok.json()["tokens"]
        expected = reference_logprobs(ref, ids)
        r = await client.post("/v1/generate", json={
            "prompt": "hello world again", "max_tokens": 2, "prompt_logprobs": 0,
            "temperature": 0})
        assert r.status_code == 200, r.text
        lps = r.json()["results"][0]["prompt_logprobs"]
        assert len(lps) == len(ids) and lps[0] is None
        for pos in range(1, len(ids)):
            (key, entry), = lps[pos].items()  # prompt_logprobs 0: the token itself only
            assert key == str(ids[pos])
            assert abs(entry["logprob"] - float(expected[pos - 1, ids[pos]])) < 1e-4
            assert entry["rank"] >= 1
        async with client.stream("POST", "/v1/generate", json={
                "prompt": "hello world again", "max_tokens": 3, "prompt_logprobs": 2,
                "stream": True, "ignore_eos": True}) as s:
            events = [json.loads(line[6:]) async for line in s.aiter_lines()
                      if line.startswith("data: {")]
        carrying = [e for e in events if "prompt_logprobs" in e]
        assert len(carrying) == 1 and carrying[0] is events[0]
        assert len(carrying[0]["prompt_logprobs"]) == len(ids)

    api(body)
