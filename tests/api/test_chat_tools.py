"""Tool calling and reasoning on /v1/chat/completions (issue 23), in process: valid calls
by construction (required, named, one), streamed calls that add up to the whole answer,
the history of a tool loop, errors, metrics; reasoning_content and the thinking budget on
a tiny checkpoint with DeepSeek-R1's template; Mistral's marker token and ids."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from fastapi import FastAPI

from app.tokenizer import Tokenizer
from tests.chat.families import LONG_CONTEXT, build_family_checkpoint
from tests.helpers import build_hf_checkpoint

WEATHER = {"type": "object", "properties": {
    "city": {"type": "string", "maxLength": 12},
    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"], "additionalProperties": False}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {}, "additionalProperties": False}}},
]
ASK = [{"role": "user", "content": "Weather in Paris?"}]
REQUIRED = {"messages": ASK, "tools": TOOLS, "tool_choice": "required", "max_tokens": 120,
            "temperature": 1.0, "seed": 4}


def calls_of(message: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(c["function"]["name"], json.loads(c["function"]["arguments"]))
            for c in message["tool_calls"]]


async def streamed(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    """A streamed chat answer put together: content, reasoning, calls, finish_reason."""
    out: dict[str, Any] = {"content": "", "reasoning_content": "", "calls": {}, "finish": None}
    async with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for choice in json.loads(line[6:])["choices"]:
                delta = choice["delta"]
                out["finish"] = choice["finish_reason"] or out["finish"]
                out["content"] += delta.get("content") or ""
                out["reasoning_content"] += delta.get("reasoning_content") or ""
                for piece in delta.get("tool_calls", []):
                    if "id" in piece:  # first piece of a call: id and name, once
                        assert piece["index"] not in out["calls"]
                        out["calls"][piece["index"]] = {**piece["function"], "id": piece["id"]}
                    else:
                        out["calls"][piece["index"]]["arguments"] += piece["function"][
                            "arguments"]
    return out


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory, tokenizer: Tokenizer) -> str:
    """The test suite's Llama with its ChatML template (which knows no tools: they go in a
    system message, hermes style) and a context long enough for them."""
    directory = tmp_path_factory.mktemp("lm_long")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    build_hf_checkpoint("llama_gqa_llama3", directory, tokenizer,
                        max_position_embeddings=LONG_CONTEXT)
    return f"lm={directory}"


def test_required_calls_are_valid_and_stream_as_the_whole(api: Any, lm: str) -> None:
    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        r = await client.post("/v1/chat/completions", json=REQUIRED)
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        assert choice["finish_reason"] == "tool_calls"
        message = choice["message"]
        assert message["content"] is None and "reasoning_content" not in message
        calls = calls_of(message)
        assert calls
        for name, arguments in calls:
            if name == "get_weather":
                jsonschema.validate(arguments, WEATHER)
            else:
                assert (name, arguments) == ("get_time", {})
        assert all(c["id"].startswith("call_") and c["type"] == "function"
                   for c in message["tool_calls"])
        stream = await streamed(client, REQUIRED)
        assert stream["finish"] == "tool_calls" and stream["content"] == ""
        assert [(c["name"], json.loads(c["arguments"])) for _, c in
                sorted(stream["calls"].items())] == calls
        metrics = (await client.get("/metrics")).text
        assert 'llm_tool_call_requests_total{model="lm",tool_choice="required"} 2.0' in metrics

    api(body, models=[lm])


def test_named_choice_and_one_call(api: Any, lm: str) -> None:
    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        for seed in range(3):
            r = await client.post("/v1/chat/completions", json={
                **REQUIRED, "seed": seed, "parallel_tool_calls": False,
                "tool_choice": {"type": "function", "function": {"name": "get_weather"}}})
            calls = calls_of(r.json()["choices"][0]["message"])
            assert len(calls) == 1 and calls[0][0] == "get_weather", calls
            jsonschema.validate(calls[0][1], WEATHER)

    api(body, models=[lm])


def test_tool_loop_history_and_errors(api: Any, lm: str) -> None:
    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        first = (await client.post("/v1/chat/completions", json=REQUIRED)).json()
        message = first["choices"][0]["message"]
        history = [*ASK, message] + [
            {"role": "tool", "tool_call_id": c["id"], "content": '{"ok": true}'}
            for c in message["tool_calls"]]
        second = await client.post("/v1/chat/completions", json={
            "messages": history, "tools": TOOLS, "max_tokens": 8, "seed": 1})
        assert second.status_code == 200, second.text
        assert second.json()["choices"][0]["finish_reason"] in ("stop", "length", "tool_calls")
        bad = [
            ({"tool_choice": {"type": "function", "function": {"name": "nope"}}},
             "tool_choice", "not in `tools`"),
            ({"tool_choice": "required", "response_format": {"type": "json_object"}},
             "response_format", "send one of them"),
            ({"thinking_budget": 5}, "thinking_budget", "needs a reasoning parser"),
        ]
        for extra, param, words in bad:  # (the server has no reasoning parser)
            r = await client.post("/v1/chat/completions", json={
                "messages": ASK, "tools": TOOLS, "max_tokens": 4, **extra})
            assert r.status_code == 400, r.text
            error = r.json()["error"]
            assert error["param"] == param and words in error["message"], error
        r = await client.post("/v1/chat/completions", json={
            "messages": [*ASK, {"role": "tool", "content": "21"}], "max_tokens": 2})
        assert r.status_code == 422 and "tool_call_id" in r.text  # as a missing content

    api(body, models=[lm])


@pytest.fixture(scope="module")
def family_checkpoint(tmp_path_factory: pytest.TempPathFactory, tokenizer: Tokenizer) -> Any:
    made: dict[str, Path] = {}

    def make(name: str) -> Path:
        if name not in made:
            logging.getLogger("transformers").setLevel(logging.ERROR)
            made[name] = build_family_checkpoint(name, tokenizer, tmp_path_factory.mktemp(name))
        return made[name]

    return make


def test_reasoning_content_and_budget(api: Any, family_checkpoint: Any) -> None:
    """DeepSeek-R1's template opens <think> in the prompt: a random model reasons until
    the budget forces </think>; reasoning_content and content stream as the whole."""
    directory = family_checkpoint("deepseek_r1")
    budget = 5

    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        request = {"model": "r1", "messages": ASK, "max_tokens": 16, "temperature": 1.0,
                   "seed": 9, "thinking_budget": budget, "logprobs": True}
        r = await client.post("/v1/chat/completions", json=request)
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        tokens = [e["token"] for e in choice["logprobs"]["content"]]
        assert "</think>" in tokens and tokens.index("</think>") <= budget, tokens
        message = choice["message"]
        assert message["reasoning_content"] is not None
        stream = await streamed(client, request)
        assert (stream["reasoning_content"], stream["content"]) == (
            message["reasoning_content"] or "", message["content"] or "")
        plain = await client.post("/v1/chat/completions", json={
            "model": "r1", "messages": ASK, "max_tokens": 4, "thinking_budget": 2,
            "chat_template_kwargs": {"anything": 1}})
        assert plain.status_code == 200, plain.text

    api(body, models=[f"r1={directory}"], reasoning_parser="auto")


def test_mistral_marker_token_and_ids(api: Any, family_checkpoint: Any) -> None:
    directory = family_checkpoint("mistral_v0_3")

    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        r = await client.post("/v1/chat/completions", json={**REQUIRED, "model": "m"})
        assert r.status_code == 200, r.text
        message = r.json()["choices"][0]["message"]
        assert calls_of(message) and all(len(c["id"]) == 9 and c["id"].isalnum()
                                         for c in message["tool_calls"])
        # the 9-character ids come back in the history and the template takes them
        history = [*ASK, message, *[{"role": "tool", "tool_call_id": c["id"], "content": "1"}
                                    for c in message["tool_calls"]]]
        again = await client.post("/v1/chat/completions", json={
            "model": "m", "messages": history, "tools": TOOLS, "max_tokens": 2})
        assert again.status_code == 200, again.text

    api(body, models=[f"m={directory}"])


def test_tokenize_counts_the_chat_prompt(api: Any, family_checkpoint: Any) -> None:
    """/v1/tokenize and vLLM's /tokenize render messages with tools and template kwargs as
    chat does: their count is the chat's usage.prompt_tokens (Qwen3: tools in its template,
    enable_thinking changes the prompt; a tool loop's history with ids and results)."""
    directory = family_checkpoint("qwen3")
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    history = [*ASK, {"role": "assistant", "content": None, "tool_calls": [call]},
               {"role": "tool", "tool_call_id": "call_1", "content": "21"}]

    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        counts = set()
        for extra in ({}, {"tools": TOOLS},
                      {"tools": TOOLS, "chat_template_kwargs": {"enable_thinking": False}}):
            for messages in (ASK, history):
                chat = await client.post("/v1/chat/completions", json={
                    "model": "q", "messages": messages, "max_tokens": 1, **extra})
                assert chat.status_code == 200, chat.text
                prompt_tokens = chat.json()["usage"]["prompt_tokens"]
                ours = await client.post("/v1/tokenize", json={
                    "model": "q", "messages": messages, **extra})
                vllm = await client.post("/tokenize", json={
                    "model": "q", "messages": messages, **extra})
                assert ours.status_code == vllm.status_code == 200, (ours.text, vllm.text)
                assert ours.json()["count"] == vllm.json()["count"] == prompt_tokens, extra
                counts.add(prompt_tokens)
        assert len(counts) == 6  # tools and enable_thinking each change the prompt
        r = await client.post("/v1/tokenize", json={"model": "q", "text": "hi", "tools": TOOLS})
        assert r.status_code == 400 and r.json()["error"]["param"] == "tools"
        # messages are validated as chat validates them: content parts are text, and a
        # malformed history is a 4xx naming the field, never a 500
        parts = await client.post("/v1/tokenize", json={"model": "q", "messages": [
            {"role": "user", "content": [{"type": "text", "text": ASK[0]["content"]}]}]})
        plain = await client.post("/v1/tokenize", json={"model": "q", "messages": ASK})
        assert parts.status_code == 200 and parts.json()["tokens"] == plain.json()["tokens"]
        for bad, param in (({"role": "assistant", "tool_calls": 5}, "messages.0.tool_calls"),
                           ({"role": "assistant", "tool_calls": ["x"]},
                            "messages.0.tool_calls.0"),
                           ({"role": "tool", "content": "21"}, "messages.0"),
                           ({"content": "x"}, "messages.0.role")):
            for path in ("/v1/tokenize", "/tokenize"):
                r = await client.post(path, json={"model": "q", "messages": [bad]})
                assert r.status_code == 422 and r.json()["error"]["param"] == param, r.text

    api(body, models=[f"q={directory}"])
