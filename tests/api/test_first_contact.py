"""What a new user meets on the unhappy paths, against the shipped default-lm: unknown and
unsupported fields named, a body that is not a JSON object explained, one max_tokens
message with the real bound, and streamed completions one choice per event."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.api.openai_fields import IGNORED_FIELDS
from tests.api.test_request_contracts import strict, strict_events

ROOT = Path(__file__).resolve().parents[2]
MODELS = [f"default-lm={ROOT / 'models' / 'default-lm'}"]
CHAT = [{"role": "user", "content": "Tell me a joke"}]
JSON_TYPE = {"content-type": "application/json"}


def error(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = strict(r.text)
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == status
    return dict(body["error"])


def test_unknown_fields_get_400_naming_them_on_every_route(api: Any) -> None:
    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        typos = [
            ("/v1/completions", {"prompt": "hi", "temprature": 0}, "temprature",
             "temperature"),
            ("/v1/chat/completions", {"messages": CHAT, "max_token": 2}, "max_token",
             "max_tokens"),
            ("/v1/generate", {"prompt": "hi", "max_token": 2}, "max_token", "max_tokens"),
            ("/v1/embeddings", {"input": "hi", "dimension": 8}, "dimension", "dimensions"),
            ("/v1/predict", {"text": "hi", "topk": 3}, "topk", "top_k"),
            ("/v1/generate", {"prompt": "hi", "structured_outputs": {"regx": "a"}},
             "structured_outputs.regx", "structured_outputs.regex"),
        ]
        for path, req, field, hint in typos:
            e = error(await client.post(path, json=req), 400)
            assert e["param"] == field, (path, e)
            assert e["message"] == f"unknown field '{field}' (did you mean '{hint}'?)", e
            assert e["type"] == "invalid_request_error"
        e = error(await client.post("/v1/completions", json={
            "prompt": "hi", "zzz": 1, "yyy": 2}), 400)
        assert e["message"] == "unknown fields 'zzz', 'yyy'" and e["param"] == "zzz"

    api(body, models=MODELS)


def test_a_misspelt_message_content_is_caught(api: Any) -> None:
    """Messages stay open to clients' extra fields, but a user turn without `content` (a
    typo such as `contnet`) is refused rather than sent as an empty turn."""

    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        r = await client.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "contnet": "hi"}], "max_tokens": 2})
        assert r.status_code == 422, r.text
        assert "a user message needs `content`" in r.json()["error"]["message"]
        assert r.json()["error"]["param"] == "messages.0"
        # An assistant turn as the openai client returns it (no content, extra fields).
        ok = await client.post("/v1/chat/completions", json={"max_tokens": 2, "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": None, "refusal": None, "annotations": []},
            {"role": "user", "content": "again"}]})
        assert ok.status_code == 200, ok.text

    api(body, models=MODELS)


def test_unsupported_openai_features_get_400_saying_so(api: Any) -> None:
    # (tools and tool_choice are supported since issue 23: tests/api/test_chat_tools.py)
    refused = [
        ({"functions": [{"name": "f"}]}, "functions", "not supported"),
        ({"function_call": "auto"}, "function_call", "not supported"),
        ({"modalities": ["text", "audio"]}, "modalities", "text is the only output"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio", "not supported"),
        ({"reasoning_effort": "high"}, "reasoning_effort", "not supported"),
    ]

    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        for extra, param, words in refused:
            e = error(await client.post("/v1/chat/completions", json={
                "messages": CHAT, "max_tokens": 2, **extra}), 400)
            assert e["param"] == param and words in e["message"], (extra, e)
        e = error(await client.post("/v1/completions", json={
            "prompt": "hi", "max_tokens": 2, "suffix": " end"}), 400)
        assert e["param"] == "suffix" and "not supported" in e["message"]
        # Their "off" values ask for nothing: accepted.
        off = {"tools": [], "tool_choice": "none", "functions": [], "function_call": "none",
               "modalities": ["text"]}
        r = await client.post("/v1/chat/completions", json={
            "messages": CHAT, "max_tokens": 2, **off})
        assert r.status_code == 200, r.text
        r = await client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2,
                                                       "suffix": ""})
        assert r.status_code == 200, r.text

    api(body, models=MODELS)


def test_harmless_openai_fields_are_accepted_and_listed_in_the_readme(api: Any) -> None:
    values = {"user": "u-1", "metadata": {"team": "a"}, "store": False,
              "service_tier": "auto", "prompt_cache_key": "k", "safety_identifier": "s"}
    assert set(values) == set(IGNORED_FIELDS)
    readme = (ROOT / "README.md").read_text()
    for name in IGNORED_FIELDS:
        assert f"`{name}`" in readme, name

    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        base = {"max_tokens": 4, "temperature": 0, "ignore_eos": True}
        for path, req in (("/v1/completions", {"prompt": "Once upon a time", **base}),
                          ("/v1/chat/completions", {"messages": CHAT, **base})):
            plain = await client.post(path, json=req)
            extra = await client.post(path, json={**req, **values})
            assert plain.status_code == extra.status_code == 200, extra.text
            # Ignored means the same answer as without them.
            assert plain.json()["choices"] == extra.json()["choices"]
        # response_format (structured output) is implemented, not ignored.
        r = await client.post("/v1/chat/completions", json={
            "messages": CHAT, "max_tokens": 60, "seed": 1,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
                "type": "object", "properties": {"n": {"type": "integer", "minimum": 0,
                                                    "maximum": 99}},
                "required": ["n"], "additionalProperties": False}}}})
        assert r.status_code == 200, r.text
        assert isinstance(json.loads(r.json()["choices"][0]["message"]["content"])["n"], int)

    api(body, models=MODELS)


BODY_CASES = [
    ("no content type", b'{"prompt": "hi"}', {}, "got no Content-Type header"),
    ("form post", b"prompt=hi", {"content-type": "application/x-www-form-urlencoded"},
     "got Content-Type: application/x-www-form-urlencoded"),
    ("text", b'{"prompt": "hi"}', {"content-type": "text/plain"},
     "got Content-Type: text/plain"),
    ("JSON array", b'[{"prompt": "hi"}]', JSON_TYPE, "got a JSON array"),
    ("JSON string", b'"hi"', JSON_TYPE, "got a JSON string"),
    ("empty body", b"", {}, "the body is empty"),
    ("empty JSON body", b"", JSON_TYPE, "the body is empty"),
]


VALID: dict[str, dict[str, Any]] = {
    "/v1/generate": {"prompt": "hi", "max_tokens": 2},
    "/v1/chat/completions": {"messages": CHAT, "max_tokens": 2},
    "/v1/predict": {"text": "hi"},
}


@pytest.mark.parametrize("path", list(VALID))
def test_a_body_that_is_not_a_json_object_says_how_to_send_one(api: Any, path: str) -> None:
    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        for name, content, headers, detail in BODY_CASES:
            e = error(await client.post(path, content=content, headers=headers), 400)
            assert e["message"] == ("the body must be a JSON object; send Content-Type: "
                                    f"application/json ({detail})"), (name, e)
            assert e["param"] is None
        e = error(await client.post(path, content=b'{"prompt": ', headers=JSON_TYPE), 400)
        assert e["message"].startswith("request body is not valid JSON")
        # A JSON object with a bad value of a known field stays 422, naming the field.
        e = error(await client.post(path, json={**VALID[path], "temperature": -1}), 422)
        assert e["param"] == "temperature"
        assert (await client.post(path, json=VALID[path])).status_code == 200

    api(body, models=MODELS)


def test_max_tokens_over_any_bound_gets_one_message_with_the_real_bound(api: Any) -> None:
    prompt = "The best thing about computers is"

    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        model = app.state.server.models["default-lm"]
        n = len(model.tokenizer.encode(prompt))
        room = model.max_model_len - n
        assert model.max_model_len == 256
        for path, req in (("/v1/generate", {"prompt": prompt}),
                          ("/v1/completions", {"prompt": prompt})):
            e = error(await client.post(path, json={**req, "max_tokens": 100000}), 400)
            assert e["param"] == "max_tokens"
            assert e["message"] == (
                f"max_tokens is 100000, but this prompt of {n} tokens leaves room for at "
                f"most {room} in the 256-token context of default-lm (server limit: "
                "--max-tokens-limit 2048)")
            # The bound it names is the real one: it works, one more does not.
            ok = await client.post(path, json={**req, "max_tokens": room, "temperature": 0})
            assert ok.status_code == 200, ok.text
            over = await client.post(path, json={**req, "max_tokens": room + 1})
            assert over.status_code == 400 and f"at most {room} " in over.json()["error"][
                "message"]
        e = error(await client.post("/v1/chat/completions", json={
            "messages": CHAT, "max_completion_tokens": 5000}), 400)
        assert e["param"] == "max_completion_tokens"
        assert re.fullmatch(r"max_completion_tokens is 5000, but this prompt of \d+ tokens "
                            r"leaves room for at most \d+ in the 256-token context of "
                            r"default-lm \(server limit: --max-tokens-limit 2048\)",
                            e["message"]), e
        # The server's default can be the one that does not fit: said so.
        long = "word " * 200
        e = error(await client.post("/v1/completions", json={"prompt": long}), 400)
        assert "(the server's default, --default-max-tokens)" in e["message"]
        # A prompt that fills the context is blamed on the field that holds it.
        async def count(req: dict[str, Any]) -> int:
            return int((await client.post("/v1/tokenize", json=req)).json()["count"])

        async def filling(make: Any) -> Any:
            """The request body whose prompt is exactly the context (256 tokens) long."""
            for words in range(256, 0, -1):
                if await count(make(words)) == 256:
                    return make(words)
            raise AssertionError("no filling prompt found")

        text = await filling(lambda k: {"text": "word " * k})
        e = error(await client.post("/v1/generate", json={"prompt": text["text"],
                                                          "max_tokens": 1}), 400)
        assert e["param"] == "prompt" and "no room is left to generate" in e["message"], e
        chat = await filling(lambda k: {"messages": [{"role": "user", "content": "word " * k}]})
        e = error(await client.post("/v1/chat/completions", json={**chat, "max_tokens": 1}),
                  400)
        assert e["param"] == "messages" and "no room is left to generate" in e["message"], e
        # Scoring a long prompt with echo generates nothing: no max_tokens bound applies.
        r = await client.post("/v1/completions", json={"prompt": long, "max_tokens": 0,
                                                       "echo": True, "logprobs": 1})
        assert r.status_code == 200, r.text

    api(body, models=MODELS)


def test_max_tokens_over_the_server_limit_names_it_when_it_is_the_smaller(api: Any) -> None:
    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        e = error(await client.post("/v1/generate", json={"prompt": "hi",
                                                          "max_tokens": 200}), 400)
        assert e["message"].startswith("max_tokens is 200, but the server allows at most "
                                       "100 (--max-tokens-limit; this prompt of"), e

    api(body, models=MODELS, max_tokens_limit=100, default_max_tokens=16)


@pytest.mark.parametrize("prompt", ["Once upon a time", ["Once upon a time", "Love is"]])
def test_streamed_completions_carry_one_choice_per_event(api: Any, prompt: Any) -> None:
    n = 3
    prompts = 1 if isinstance(prompt, str) else len(prompt)

    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        r = await client.post("/v1/completions", json={
            "prompt": prompt, "n": n, "max_tokens": 5, "ignore_eos": True, "seed": 0,
            "stream": True, "stream_options": {"include_usage": True}})
        assert r.status_code == 200, r.text
        events = strict_events(r.text)
        usage, chunks = events[-1], events[:-1]
        assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 5 * n * prompts
        assert all(len(e["choices"]) == 1 for e in chunks), chunks
        indices = [e["choices"][0]["index"] for e in chunks]
        assert sorted(set(indices)) == list(range(n * prompts))
        for i in range(n * prompts):
            finishes = [e["choices"][0]["finish_reason"] for e in chunks
                        if e["choices"][0]["index"] == i]
            assert finishes[-1] == "length" and finishes.count("length") == 1

    api(body, models=MODELS)
