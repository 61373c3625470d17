"""Request fields honoured as OpenAI and vLLM define them, strict JSON everywhere, and
admission that says 400 for what can never fit and 429 only for transient load."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.engine.output import RequestSummary
from app.sampling_params import IMPOSSIBLE_LOGPROB
from tests.waiting import until


def strict(text: str) -> Any:
    """json.loads that refuses NaN / Infinity / -Infinity (as JavaScript, Go and jq do)."""

    def refuse(name: str) -> None:
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def strict_events(text: str) -> list[Any]:
    events = [line[len("data: "):] for line in text.splitlines() if line.startswith("data: ")]
    assert events and events[-1] == "[DONE]", text[-500:]
    return [strict(e) for e in events[:-1]]


def numbers(value: Any) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [float(value)]
    if isinstance(value, dict):
        return [x for v in value.values() for x in numbers(v)]
    if isinstance(value, list):
        return [x for v in value for x in numbers(v)]
    return []


def test_logit_bias_keys_must_be_plain_token_ids(api: Any) -> None:
    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        for key in ("²", "--5", "-5", "+5", "٣", " 5", "5.0", "1e3", "", "0x10"):
            for path, extra in (("/v1/generate", {"prompt": "hi"}),
                                ("/v1/completions", {"prompt": "hi"}),
                                ("/v1/chat/completions",
                                 {"messages": [{"role": "user", "content": "hi"}]})):
                r = await client.post(path, json={**extra, "max_tokens": 2,
                                                  "logit_bias": {key: 1.0}})
                assert r.status_code == 400, (key, path, r.text)
                error = strict(r.text)["error"]
                assert error["param"] == "logit_bias" and repr(key) in error["message"]
        ok = await client.post("/v1/generate", json={"prompt": "hi", "max_tokens": 2,
                                                     "logit_bias": {"5": 1.0}})
        assert ok.status_code == 200, ok.text
        # The connection survives: no reset after a refused key.
        assert (await client.get("/v1/models")).status_code == 200

    api(body)


def test_every_body_and_event_is_strict_json_with_logprobs(api: Any) -> None:
    """top_k=2 with top_logprobs=5 puts impossible tokens among the alternatives; a tiny
    temperature underflows. Each must be reported as the finite floor, everywhere."""
    chat = [{"role": "user", "content": "hello"}]
    filters = {"top_k": 2, "max_tokens": 4, "ignore_eos": True, "seed": 3}
    requests = [
        ("/v1/generate", {"prompt": "hello", "logprobs": True, "top_logprobs": 5, **filters}),
        ("/v1/generate", {"prompt": ["a", "b"], "logprobs": True, "top_logprobs": 5,
                          "temperature": 1e-6, "max_tokens": 3}),
        ("/v1/completions", {"prompt": "hello", "logprobs": 5, **filters}),
        ("/v1/completions", {"prompt": "hello", "logprobs": 5, "top_p": 0.01,
                             "max_tokens": 3}),
        ("/v1/chat/completions", {"messages": chat, "logprobs": True, "top_logprobs": 5,
                                  **filters}),
        ("/v1/chat/completions", {"messages": chat, "logprobs": True, "top_logprobs": 5,
                                  "min_p": 0.9, "max_tokens": 3}),
    ]

    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        seen: list[float] = []
        for path, req in requests:
            for stream in (False, True):
                r = await client.post(path, json={**req, "stream": stream})
                assert r.status_code == 200, (path, r.text)
                payload = strict_events(r.text) if stream else strict(r.text)
                seen += numbers(payload)
        for path, req in (("/v1/predict", {"text": "hello", "top_k": 20,
                                           "temperature": 0.001}),
                          ("/v1/classify", {"text": ["a b", "c"],
                                            "candidate_labels": ["x", "long label here"]}),
                          ("/v1/classify", {"model": "cls", "text": "hello"})):
            r = await client.post(path, json=req)
            assert r.status_code == 200, (path, r.text)
            seen += numbers(strict(r.text))
        assert IMPOSSIBLE_LOGPROB in seen  # the test did reach impossible tokens

    api(body)


def test_requests_that_can_never_fit_the_queue_get_400_not_429(api: Any) -> None:
    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        # texts x labels = 12 scored sequences, more than the queue's 2 requests: served.
        r = await client.post("/v1/classify", json={
            "text": ["one", "two", "three", "four"], "candidate_labels": ["a", "b", "c"]})
        assert r.status_code == 200, r.text
        assert len(r.json()["results"]) == 4
        # More prompts in one request than the queue holds: one admission, served.
        r = await client.post("/v1/generate", json={"prompt": ["a", "b", "c", "d", "e"],
                                                    "max_tokens": 2})
        assert r.status_code == 200, r.text
        assert len(r.json()["results"]) == 5
        # A prompt longer than the waiting queue ever holds: 400 naming the limit, at
        # once, on an idle server.
        r = await client.post("/v1/generate", json={"prompt": "word " * 30, "max_tokens": 2})
        assert r.status_code == 400, r.text
        assert "max_waiting_tokens" in r.json()["error"]["message"]
        assert r.json()["error"]["param"] == "prompt"
        assert "retry-after" not in r.headers
        engine = app.state.server.models["lm"].engine
        assert engine.stats().rejections == 0

    api(body, max_waiting_requests=2, max_waiting_tokens=100)


def test_same_request_id_header_on_concurrent_requests(api: Any) -> None:
    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        req = {"prompt": "hello", "max_tokens": 8, "ignore_eos": True}
        headers = {"X-Request-ID": "same-id"}
        results = await asyncio.gather(*(client.post("/v1/generate", json=req,
                                                     headers=headers) for _ in range(3)))
        for r in results:
            assert r.status_code == 200, r.text
            assert r.headers["x-request-id"] == "same-id"
            assert r.json()["usage"]["completion_tokens"] == 8

    api(body)


def test_a_failed_prompt_aborts_its_siblings(api: Any) -> None:
    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        engine = app.state.server.models["lm"].engine
        ended: list[RequestSummary] = []
        engine.finish_observers.append(ended.append)
        task = asyncio.ensure_future(client.post("/v1/generate", json={
            "prompt": ["first prompt", "second prompt"], "max_tokens": 200,
            "ignore_eos": True}))
        await until(lambda: engine.stats().running_requests == 2, "both prompts to run")
        engine.abort(next(iter(engine._requests)))  # one prompt fails...
        r = await task
        assert r.status_code == 499 and strict(r.text)["error"]["type"] == "request_cancelled"
        await until(lambda: engine.num_requests == 0, "the sibling to end")
        # ...and its sibling was aborted, not run to 200 tokens for nobody.
        assert [s.finish_reason for s in ended] == ["abort", "abort"]
        assert all(s.completion_tokens < 200 for s in ended)
        assert engine.stats().kv_blocks_used == 0

    api(body)


def test_cache_salt_separates_prefix_cache_namespaces(api: Any) -> None:
    prompt = "The quick brown fox jumps over the lazy dog. " * 3

    async def cached(client: httpx.AsyncClient, salt: str | None, **headers: str) -> int:
        req: dict[str, Any] = {"prompt": prompt, "max_tokens": 1}
        if salt is not None:
            req["cache_salt"] = salt
        r = await client.post("/v1/generate", json=req, headers=headers)
        assert r.status_code == 200, r.text
        usage = r.json()["usage"]
        assert usage["prompt_tokens_details"]["cached_tokens"] == usage["cached_tokens"]
        return int(usage["cached_tokens"])

    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        assert await cached(client, "alice") == 0
        assert await cached(client, "alice") > 0
        assert await cached(client, "bob") == 0
        assert await cached(client, None) == 0

    api(body)

    async def by_key(app: FastAPI, client: httpx.AsyncClient) -> None:
        key_a, key_b = {"Authorization": "Bearer key-a"}, {"Authorization": "Bearer key-b"}
        assert await cached(client, None, **key_a) == 0
        assert await cached(client, None, **key_a) > 0
        assert await cached(client, None, **key_b) == 0  # another caller learns nothing
        assert await cached(client, "shared", **key_a) == 0

    api(by_key, api_key=["key-a", "key-b"], cache_salt_api_key=True)


def test_openai_chat_defaults_usage_details_and_fingerprint(api: Any) -> None:
    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        model = app.state.server.models["lm"]
        messages = [{"role": "user", "content": "hi"}]
        r = await client.post("/v1/chat/completions", json={
            "messages": messages, "ignore_eos": True, "temperature": 0})
        assert r.status_code == 200, r.text
        data = r.json()
        usage = data["usage"]
        # No max_tokens: generate until the context is full, not a silent 64-token cut.
        assert data["choices"][0]["finish_reason"] == "length"
        assert usage["prompt_tokens"] + usage["completion_tokens"] == model.max_model_len
        assert usage["prompt_tokens_details"] == {"cached_tokens": usage["cached_tokens"]}
        assert data["system_fingerprint"].startswith("fp_")
        r = await client.post("/v1/chat/completions", json={
            "messages": messages, "max_tokens": 2, "stream": True,
            "stream_options": {"include_usage": True}})
        events = strict_events(r.text)
        assert {e["system_fingerprint"] for e in events} == {data["system_fingerprint"]}
        assert "prompt_tokens_details" in events[-1]["usage"]
        r = await client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2})
        assert r.json()["system_fingerprint"] == data["system_fingerprint"]
        assert r.json()["usage"]["completion_tokens"] == 2

    api(body, max_tokens_limit=4096)


@pytest.mark.parametrize("length", [257, 1000])
def test_stop_strings_are_capped_in_the_schema(api: Any, length: int) -> None:
    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        for stop in ("x" * length, ["ok", "x" * length]):
            r = await client.post("/v1/generate", json={"prompt": "hi", "stop": stop})
            assert r.status_code == 422, r.text
            assert strict(r.text)["error"]["param"].startswith("stop")

    api(body)
