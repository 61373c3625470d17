"""Every route that takes a prompt applies the same limits, the same way
(app/api/prompt_input.py): --max-prompt-tokens, the vocabulary of token-id prompts, and
the one `cache_salt` type."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI

LIMIT = 40
LONG = "the quick brown fox jumps over the lazy dog, " * 12  # well over LIMIT tokens
SHORT = "hello"
LONG_IDS = list(range(5, 5 + 3 * LIMIT))
SHORT_IDS = [5, 6, 7]


def chat(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], "max_tokens": 1}


# (route, body for a prompt, the field a 400 must name)
PROMPT_ROUTES = [
    ("/v1/generate", lambda p: {"prompt": p, "max_tokens": 1}, "prompt"),
    ("/v1/completions", lambda p: {"prompt": p, "max_tokens": 1}, "prompt"),
    ("/v1/completions", lambda p: {"prompt": [p], "max_tokens": 0, "echo": True}, "prompt"),
    ("/v1/chat/completions", chat, "messages"),
    ("/v1/predict", lambda p: {"text": p}, "text"),
    ("/v1/classify", lambda p: {"model": "cls", "text": p}, "text"),
    ("/v1/classify", lambda p: {"text": p, "candidate_labels": ["a", "b"]}, "text"),
    ("/v1/classify", lambda p: {"text": p, "candidate_labels": ["a", "b"],
                                "method": "generate"}, "text"),
    ("/v1/embeddings", lambda p: {"input": p}, "input"),
    ("/v1/perplexity", lambda p: {"text": p}, "text"),
]
# Routes that also take token ids, and the field that holds them.
TOKEN_ID_ROUTES = [
    ("/v1/completions", lambda ids: {"prompt": ids, "max_tokens": 1}, "prompt"),
    ("/v1/completions", lambda ids: {"prompt": [ids], "max_tokens": 1}, "prompt"),
    ("/v1/embeddings", lambda ids: {"input": ids}, "input"),
    ("/v1/embeddings", lambda ids: {"input": [ids]}, "input"),
    ("/v1/perplexity", lambda ids: {"text": ids}, "text"),
    ("/v1/perplexity", lambda ids: {"text": [ids]}, "text"),
]


def _id(route: tuple[str, Any, str]) -> str:
    return f"{route[0]}:{route[1]('P')}"


@pytest.mark.parametrize("route", PROMPT_ROUTES, ids=_id)
def test_max_prompt_tokens_applies_to_every_text_prompt(api: Any, route: Any) -> None:
    """Defect 3: /v1/perplexity ignored --max-prompt-tokens (a 120-token text got 200
    there and 400 on /v1/generate)."""
    path, make, param = route

    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        count = (await client.post("/v1/tokenize", json={"text": LONG})).json()["count"]
        assert count > LIMIT
        ok = await client.post(path, json=make(SHORT))
        assert ok.status_code == 200, ok.text
        r = await client.post(path, json=make(LONG))
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["param"] == param, error
        assert "--max-prompt-tokens" in error["message"] and str(LIMIT) in error["message"]

    api(body, max_prompt_tokens=LIMIT)


@pytest.mark.parametrize("route", TOKEN_ID_ROUTES, ids=lambda r: f"{r[0]}:{r[1]([1])}")
def test_token_id_prompts_get_the_same_limits(api: Any, route: Any) -> None:
    path, make, param = route

    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        ok = await client.post(path, json=make(SHORT_IDS))
        assert ok.status_code == 200, ok.text
        for ids, words in ((LONG_IDS, "--max-prompt-tokens"), ([5, 10**6], "vocabulary"),
                           ([5, 400], "vocabulary")):  # 400: the test vocabulary's size
            r = await client.post(path, json=make(ids))
            assert r.status_code == 400, r.text
            error = r.json()["error"]
            assert error["param"] == param and words in error["message"], error

    api(body, max_prompt_tokens=LIMIT)


@pytest.mark.parametrize("path", ["/v1/detokenize", "/detokenize"])
def test_detokenize_checks_the_vocabulary_the_same_way(api: Any, path: str) -> None:
    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        r = await client.post(path, json={"tokens": [5, 10**6]})
        assert r.status_code == 400
        error = r.json()["error"]
        assert error["param"] == "tokens" and "vocabulary" in error["message"]

    api(body)


def test_context_still_bounds_prompts_without_max_prompt_tokens(api: Any) -> None:
    """Without --max-prompt-tokens the context is the limit, except for perplexity,
    whose windows are for texts longer than the context."""
    ids = [5 + i % 200 for i in range(300)]  # the test model's context is 256

    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        for path, make in ((p, m) for p, m, _ in TOKEN_ID_ROUTES[::2]):
            r = await client.post(path, json=make(ids))
            if path == "/v1/perplexity":
                assert r.status_code == 200, r.text
            else:
                assert r.status_code == 400 and "256-token context" in r.json()["error"][
                    "message"], r.text

    api(body)


SALTED = [
    ("/v1/generate", {"prompt": SHORT, "max_tokens": 1}),
    ("/v1/completions", {"prompt": SHORT, "max_tokens": 1}),
    ("/v1/chat/completions", chat(SHORT)),
    ("/v1/predict", {"text": SHORT}),
    ("/v1/classify", {"model": "cls", "text": SHORT}),
    ("/v1/embeddings", {"input": SHORT}),
    ("/v1/perplexity", {"text": SHORT_IDS}),
]


@pytest.mark.parametrize(("path", "request_body"), SALTED, ids=[p for p, _ in SALTED])
def test_cache_salt_is_one_type_everywhere(api: Any, path: str,
                                           request_body: dict[str, Any]) -> None:
    """Defect 5: embeddings and perplexity took "" and any length as cache_salt."""

    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        ok = await client.post(path, json={**request_body, "cache_salt": "tenant-a"})
        assert ok.status_code == 200, ok.text
        for bad in ("", "x" * 257):
            r = await client.post(path, json={**request_body, "cache_salt": bad})
            assert r.status_code == 422, (bad, r.text)
            assert r.json()["error"]["param"] == "cache_salt"

    api(body)
