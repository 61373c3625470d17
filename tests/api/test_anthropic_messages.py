"""Anthropic's Messages API in process (issue 24): the translation of content blocks,
tools, tool choice and thinking into the one chat request; answers and streams that add
up to the same message (validated with the anthropic SDK's own pydantic types); stop
sequences named; count_tokens equal to the real prompt; every error in Anthropic's shape
with nothing queued; x-api-key; the documented stream example is a real stream."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from anthropic.types import Message, MessageTokensCount, RawMessageStreamEvent
from fastapi import FastAPI
from pydantic import TypeAdapter

from app.api import examples
from app.api.protocols.anthropic_fields import IGNORED_FIELDS, MessagesRequest
from app.api.protocols.anthropic_messages import chat_input, count_input
from app.tokenizer import Tokenizer
from tests.api.test_request_contracts import strict
from tests.chat.families import LONG_CONTEXT, build_family_checkpoint
from tests.helpers import build_hf_checkpoint

ROOT = Path(__file__).resolve().parents[2]
WEATHER = {"type": "object", "properties": {
    "city": {"type": "string", "maxLength": 12},
    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"], "additionalProperties": False}
TOOLS = [{"name": "get_weather", "description": "Weather in a city", "input_schema": WEATHER},
         {"name": "get_time", "input_schema": {"type": "object", "properties": {}}}]
ASK = [{"role": "user", "content": "Weather in Paris?"}]
EVENTS: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)


def sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name, strict JSON data) pairs; each name equals its data's `type`."""
    out = []
    for block in text.strip().split("\n\n"):
        lines = block.split("\n")
        assert len(lines) == 2 and lines[0].startswith("event: "), block
        assert lines[1].startswith("data: "), block
        name, data = lines[0][len("event: "):], strict(lines[1][len("data: "):])
        assert data["type"] == name, block
        out.append((name, data))
    return out


def assemble(events: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """A stream put together as Anthropic's SDK does (lib/streaming), checking the order
    of events as it goes: start, ping, blocks opened, filled and closed one at a time,
    message_delta, message_stop."""
    names = [name for name, _ in events]
    assert names[:2] == ["message_start", "ping"] and names[-2:] == ["message_delta",
                                                                     "message_stop"], names
    for _, data in events:
        if data["type"] not in ("error", "ping"):
            EVENTS.validate_python(data)  # the SDK's own event types
    message = json.loads(json.dumps(events[0][1]["message"]))
    json_parts: dict[int, str] = {}
    open_block: int | None = None
    for name, data in events[2:-2]:
        if name == "content_block_start":
            assert open_block is None and data["index"] == len(message["content"])
            open_block = data["index"]
            message["content"].append(data["content_block"])
        elif name == "content_block_delta":
            assert data["index"] == open_block
            block, delta = message["content"][data["index"]], data["delta"]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            elif delta["type"] == "thinking_delta":
                block["thinking"] += delta["thinking"]
            else:
                assert delta["type"] == "input_json_delta"
                json_parts[data["index"]] = json_parts.get(data["index"], "") + delta[
                    "partial_json"]
        else:
            assert name == "content_block_stop" and data["index"] == open_block, name
            open_block = None
    assert open_block is None
    for index, text in json_parts.items():
        message["content"][index]["input"] = json.loads(text)
    final = events[-2][1]
    message.update(final["delta"])
    message["usage"].update(final["usage"])
    return message


def comparable(message: dict[str, Any]) -> dict[str, Any]:
    """A message without what differs per request: its id and its calls' ids."""
    content = [{k: v for k, v in block.items() if k != "id"} for block in message["content"]]
    return {**{k: v for k, v in message.items() if k not in ("id", "usage")},
            "content": content,
            "output_tokens": message["usage"]["output_tokens"],
            "prompt_tokens": message["usage"]["input_tokens"]
            + message["usage"]["cache_read_input_tokens"]}


async def create(client: httpx.AsyncClient, body: dict[str, Any],
                 headers: dict[str, str] | None = None) -> dict[str, Any]:
    r = await client.post("/v1/messages", json=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    Message.model_validate(r.json())  # the SDK's own type
    return dict(strict(r.text))


async def stream(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    r = await client.post("/v1/messages", json={**body, "stream": True})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    message = assemble(sse_events(r.text))
    Message.model_validate(message)
    return message


async def count(client: httpx.AsyncClient, body: dict[str, Any]) -> int:
    keep = ("model", "messages", "system", "tools", "tool_choice", "thinking")
    r = await client.post("/v1/messages/count_tokens",
                          json={k: v for k, v in body.items() if k in keep})
    assert r.status_code == 200, r.text
    return MessageTokensCount.model_validate(r.json()).input_tokens


def prompt_of(message: dict[str, Any]) -> int:
    usage = message["usage"]
    return int(usage["input_tokens"] + usage["cache_read_input_tokens"])


# ---------------------------------------------------------------------------- in


def test_blocks_tools_and_thinking_translate_to_the_chat_request() -> None:
    body = MessagesRequest.model_validate({
        "max_tokens": 50, "system": [{"type": "text", "text": "Be brief."},
                                     {"type": "text", "text": "Use tools.", "cache_control": {
                                         "type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "A call.", "signature": "sig"},
                {"type": "redacted_thinking", "data": "xyz"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                 "input": {"city": "Paris", "unit": "celsius"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1",
                 "content": [{"type": "text", "text": "21"}]},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": "down",
                 "is_error": True},
                {"type": "text", "text": "And "}, {"type": "text", "text": "tomorrow?"}]}],
        "tools": TOOLS, "tool_choice": {"type": "tool", "name": "get_weather",
                                        "disable_parallel_tool_use": True},
        "thinking": {"type": "enabled", "budget_tokens": 20},
        "stop_sequences": ["\n\n"], "temperature": 0.5, "top_k": 4, "seed": 3})
    chat = chat_input(body)
    assert chat.messages == [
        {"role": "system", "content": "Be brief.\nUse tools."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "Checking.", "reasoning_content": "A call.",
         "tool_calls": [{"id": "toolu_1", "type": "function", "function": {
             "name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "21"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: down"},
        {"role": "user", "content": "And tomorrow?"}]
    options = chat.options
    assert options.tools[0] == {"type": "function", "function": {
        "name": "get_weather", "parameters": WEATHER, "description": "Weather in a city"}}
    assert options.tool_choice == {"type": "function", "function": {"name": "get_weather"}}
    assert options.parallel_tool_calls is False
    assert options.reasoning_budget == 20
    assert options.template_kwargs == {"enable_thinking": True}
    assert (chat.max_tokens, chat.sampling.stop, chat.sampling.temperature,
            chat.sampling.top_k, chat.sampling.seed) == (50, ["\n\n"], 0.5, 4, 3)
    # count_tokens renders the same prompt: the same messages and options
    counted = count_input(body)
    assert (counted.messages, counted.options) == (chat.messages, chat.options)
    for choice, expected in (({"type": "any"}, "required"), ({"type": "auto"}, "auto"),
                             ({"type": "none"}, "none")):
        options = chat_input(body.model_copy(update={
            "tool_choice": MessagesRequest.model_validate(
                {"max_tokens": 1, "messages": ASK, "tool_choice": choice}).tool_choice,
            "thinking": None})).options
        assert options.tool_choice == expected and options.parallel_tool_calls
        assert options.reasoning_budget is None and options.template_kwargs == {}
    off = MessagesRequest.model_validate({"max_tokens": 1, "messages": ASK,
                                          "thinking": {"type": "disabled"}})
    assert chat_input(off).options.template_kwargs == {"enable_thinking": False}


# ---------------------------------------------------------------------------- out


def test_text_stream_stop_sequences_and_count_tokens(api: Any) -> None:
    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        request = {"model": "lm", "messages": [{"role": "user", "content": "Tell a story"}],
                   "system": "You tell stories.", "max_tokens": 16, "seed": 5}
        whole = await create(client, request)
        assert whole["id"].startswith("msg_") and whole["model"] == "lm"
        assert whole["stop_reason"] == "max_tokens" and whole["stop_sequence"] is None
        assert whole["usage"]["output_tokens"] == 16
        [block] = whole["content"]
        text = block["text"]
        assert block["type"] == "text" and len(text) > 6, text
        streamed = await stream(client, request)
        assert comparable(streamed) == comparable(whole)
        # the same prompt as count_tokens says (cache reads counted apart, as Anthropic)
        assert prompt_of(whole) == prompt_of(streamed) == await count(client, request)
        assert streamed["usage"]["cache_read_input_tokens"] > 0  # the prefix was cached

        # a stop sequence taken from the middle of that answer: cut there, and named
        stop = text[len(text) // 2:len(text) // 2 + 2]
        cut = {**request, "stop_sequences": ["never-there", stop]}
        stopped = await create(client, cut)
        assert stopped["stop_reason"] == "stop_sequence" and stopped["stop_sequence"] == stop
        assert stopped["content"] == ([{"type": "text", "text": text[:text.find(stop)]}]
                                      if text.find(stop) else [])
        assert comparable(await stream(client, cut)) == comparable(stopped)

        # prefill: a last assistant turn is continued, greedy, as the same text would be:
        # the answer is the continuation only (the prefilled text is the client's)
        greedy = {**request, "temperature": 0}
        free = (await create(client, greedy))["content"][0]["text"]
        head, rest = free[:len(free) // 2].rstrip(), free[len(free[:len(free) // 2].rstrip()):]
        prefilled = await create(client, {**greedy, "messages": [
            *request["messages"], {"role": "assistant", "content": head}]})
        continued = prefilled["content"][0]["text"] if prefilled["content"] else ""
        assert continued and (rest.startswith(continued) or continued.startswith(rest[:4])), (
            head, rest, continued)
        assert comparable(await stream(client, {**greedy, "messages": [
            *request["messages"], {"role": "assistant", "content": head}]})) == comparable(
            prefilled)

        # output_config.format: JSON outputs, through structured output
        schema = {"type": "object", "properties": {"ok": {"type": "boolean"}},
                  "required": ["ok"], "additionalProperties": False}
        shaped = await create(client, {**request, "max_tokens": 30, "output_config": {
            "format": {"type": "json_schema", "schema": schema}}})
        jsonschema.validate(json.loads(shaped["content"][0]["text"]), schema)

    api(body)


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory, tokenizer: Tokenizer) -> str:
    """The test suite's Llama with ChatML (no tools in its template: hermes in a system
    message) and a context long enough for them."""
    directory = tmp_path_factory.mktemp("lm_long")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    build_hf_checkpoint("llama_gqa_llama3", directory, tokenizer,
                        max_position_embeddings=LONG_CONTEXT)
    return f"lm={directory}"


def test_tool_use_stream_and_tool_result_round_trip(api: Any, lm: str) -> None:
    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        request = {"messages": ASK, "tools": TOOLS, "max_tokens": 120, "seed": 4,
                   "tool_choice": {"type": "any", "disable_parallel_tool_use": True}}
        whole = await create(client, request)
        assert whole["stop_reason"] == "tool_use", whole
        [call] = [b for b in whole["content"] if b["type"] == "tool_use"]
        assert call["id"].startswith("toolu_")
        if call["name"] == "get_weather":
            jsonschema.validate(call["input"], WEATHER)
        else:
            assert (call["name"], call["input"]) == ("get_time", {})
        streamed = await stream(client, request)
        assert comparable(streamed) == comparable(whole)
        assert prompt_of(whole) == await count(client, request)

        named = await create(client, {**request, "tool_choice": {"type": "tool",
                                                                 "name": "get_time"}})
        assert [(b["name"], b["input"]) for b in named["content"]
                if b["type"] == "tool_use"] == [("get_time", {})]

        # the call and its result sent back: the next turn answers in text
        history = [*ASK, {"role": "assistant", "content": whole["content"]},
                   {"role": "user", "content": [
                       {"type": "tool_result", "tool_use_id": call["id"],
                        "content": [{"type": "text", "text": '{"temperature": 21}'}]},
                       {"type": "text", "text": "Thanks."}]}]
        again = {"messages": history, "tools": TOOLS, "max_tokens": 8, "seed": 1,
                 "tool_choice": {"type": "none"}}
        answer = await create(client, again)
        assert answer["stop_reason"] in ("end_turn", "max_tokens")
        assert all(b["type"] == "text" for b in answer["content"])
        assert prompt_of(answer) == await count(client, again)

    api(body, models=[lm])


def test_thinking_blocks_with_a_reasoning_parser(api: Any, tmp_path: Path,
                                                 tokenizer: Tokenizer) -> None:
    """DeepSeek-R1's template opens <think> in the prompt: a random model reasons until
    the budget forces </think>; the thinking block streams as the whole."""
    logging.getLogger("transformers").setLevel(logging.ERROR)
    directory = build_family_checkpoint("deepseek_r1", tokenizer, tmp_path / "r1")

    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        request = {"messages": ASK, "max_tokens": 16, "seed": 9,
                   "thinking": {"type": "enabled", "budget_tokens": 5}}
        whole = await create(client, request)
        kinds = [b["type"] for b in whole["content"]]
        assert kinds[0] == "thinking" and whole["content"][0]["thinking"], whole
        assert whole["content"][0]["signature"] == ""
        assert set(kinds[1:]) <= {"text"}
        assert comparable(await stream(client, request)) == comparable(whole)
        plain = await create(client, {**request, "thinking": {"type": "disabled"}})
        assert plain["stop_reason"] in ("end_turn", "max_tokens")

    api(body, models=[f"r1={directory}"], reasoning_parser="auto")


# ---------------------------------------------------------------------------- errors

BAD: list[tuple[dict[str, Any], str]] = [
    ({"max_tokens": None}, "max_tokens"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"temperature": 1.5}, "temperature"),
    ({"temprature": 0.5}, "did you mean 'temperature'"),
    ({"stop_sequences": [""]}, "stop_sequences"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "system", "content": "x"}]}, "messages.0.role"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
     "'image' are not supported"),
    ({"messages": [{"role": "user", "content": [{"type": "search_result"}]}]},
     "expected tags"),
    ({"messages": [*ASK, {"role": "assistant", "content": "Sure "}]}, "prefill"),
    ({"messages": [*ASK, {"role": "assistant", "content": [
        {"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]}, "prefill"),
    ({"messages": [{"role": "user", "content": [
        {"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]}, "a user turn"),
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "server tool"),
    ({"tools": [{"name": "f"}]}, "input_schema"),
    ({"tools": [{"name": "f", "input_schema": {}, "colour": 1}]}, "tools.0.colour"),
    ({"tool_choice": {"type": "any"}}, "needs `tools`"),
    ({"tools": TOOLS, "tool_choice": {"type": "tool", "name": "nope"}}, "not in `tools`"),
    ({"thinking": {"type": "enabled", "budget_tokens": 3}}, "reasoning parser"),
    ({"thinking": {"type": "enabled", "budget_tokens": 8}}, "less than max_tokens"),
    ({"output_config": {"effort": "high"}}, "thinking.budget_tokens"),
    ({"container": "c1"}, "code execution"),
    ({"max_tokens": 100_000}, "max_tokens is 100000"),
]


def test_bad_input_gets_anthropic_errors_and_queues_nothing(api: Any) -> None:
    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        engine = app.state.server.models["lm"].engine
        before = engine.stats().prefix_queries
        base = {"messages": ASK, "max_tokens": 8}
        for change, words in BAD:
            sent = {k: v for k, v in {**base, **change}.items() if v is not None}
            r = await client.post("/v1/messages", json=sent)
            assert r.status_code == 400, (change, r.text)
            error = strict(r.text)
            assert error["type"] == "error" and set(error) == {"type", "error"}, error
            assert error["error"]["type"] == "invalid_request_error", error
            assert words in error["error"]["message"], (change, error)
        for raw, content_type in ((b"{", "application/json"), (b"[]", "application/json"),
                                  (b"max_tokens=1", "application/x-www-form-urlencoded")):
            r = await client.post("/v1/messages", content=raw,
                                  headers={"content-type": content_type})
            assert r.status_code == 400 and strict(r.text)["error"]["type"] == (
                "invalid_request_error"), r.text
        for path, sent in (("/v1/messages", base), ("/v1/messages/count_tokens",
                                                    {"messages": ASK})):
            r = await client.post(path, json={**sent, "model": "claude-9"})
            assert r.status_code == 404, r.text
            assert strict(r.text)["error"]["type"] == "not_found_error"
            assert "claude-9" in strict(r.text)["error"]["message"]
        r = await client.post("/v1/messages/batches", json=base)
        assert r.status_code == 404 and strict(r.text)["error"]["type"] == "not_found_error"
        r = await client.get("/v1/messages")
        assert r.status_code == 405 and strict(r.text)["type"] == "error"
        r = await client.post("/v1/messages/count_tokens", json={"messages": ASK,
                                                                 "max_tokens": 3})
        assert r.status_code == 400 and "max_tokens" in r.text  # not a count field
        # the rest of the server keeps OpenAI's shape
        r = await client.post("/v1/chat/completions", json={"messages": ASK, "model": "x"})
        assert r.status_code == 404 and strict(r.text)["error"]["code"] == 404
        stats = engine.stats()
        assert (stats.prefix_queries, stats.running_requests, stats.waiting_requests) == (
            before, 0, 0)

    api(body)


def test_keys_limits_and_engine_failures_in_anthropic_shape(api: Any) -> None:
    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        base = {"messages": ASK, "max_tokens": 4}
        for headers in ({"x-api-key": "k2", "anthropic-version": "2023-06-01"},
                        {"authorization": "Bearer k1"}):
            r = await client.post("/v1/messages", json=base, headers=headers)
            assert r.status_code == 200, r.text
        for headers, words in (({}, "missing API key"), ({"x-api-key": "nope"}, "invalid")):
            r = await client.post("/v1/messages/count_tokens", json=base, headers=headers)
            assert r.status_code == 401 and strict(r.text)["error"] == {
                "type": "authentication_error", "message": strict(r.text)["error"]["message"]}
            assert words in r.text
        keyed = {"x-api-key": "k1"}
        r = await client.post("/v1/messages", json={**base, "system": "x" * 5000},
                              headers=keyed)
        assert r.status_code == 413 and strict(r.text)["error"]["type"] == "request_too_large"

        engine = app.state.server.models["lm"].engine

        def broken(out: Any) -> None:
            raise RuntimeError("device lost")

        engine.fault_hook = broken
        r = await client.post("/v1/messages", json=base, headers=keyed)
        assert r.status_code == 500 and strict(r.text)["error"] == {
            "type": "api_error", "message": "inference step failed: RuntimeError: device lost"}
        r = await client.post("/v1/messages", json={**base, "stream": True}, headers=keyed)
        assert r.status_code == 200  # the failure comes after the stream began
        events = sse_events(r.text)
        assert [n for n, _ in events][:2] == ["message_start", "ping"]
        name, data = events[-1]
        assert name == "error" and data["error"]["type"] == "api_error", data
        assert "device lost" in data["error"]["message"]
        for _ in range(2):
            r = await client.post("/v1/messages", json=base, headers=keyed)
        assert r.status_code == 503 and strict(r.text)["error"]["type"] == "overloaded_error"

    api(body, api_key=["k1", "k2"], max_body_bytes=4096)


def test_overload_is_a_rate_limit_error_with_retry_after(api: Any) -> None:
    import asyncio

    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        request = {"messages": ASK, "max_tokens": 30, "temperature": 0}
        results = await asyncio.gather(*(client.post("/v1/messages", json=request)
                                         for _ in range(10)))
        codes = [r.status_code for r in results]
        assert 429 in codes and 200 in codes and set(codes) <= {200, 429}, codes
        for r in results:
            if r.status_code == 429:
                assert int(r.headers["retry-after"]) >= 1
                assert strict(r.text)["error"]["type"] == "rate_limit_error"

    api(body, max_num_seqs=1, max_num_batched_tokens=8, max_waiting_requests=2)


def test_ignored_fields_are_accepted_and_listed_in_the_readme(api: Any) -> None:
    values = {"metadata": {"user_id": "u-1"}, "service_tier": "auto",
              "cache_control": {"type": "ephemeral"}, "inference_geo": "us",
              "diagnostics": {"previous_message_id": "msg_1"}, "user_profile_id": "p",
              "workspace_id": "w"}
    assert set(values) == set(IGNORED_FIELDS)
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("#### POST /v1/messages"):]
    for name in IGNORED_FIELDS:
        assert f"`{name}`" in section, name

    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        request = {"messages": ASK, "max_tokens": 3, "seed": 1}
        plain = await create(client, request)
        ignored = await create(client, {**request, **values})
        assert comparable(ignored) == comparable(plain)

    api(body)


def test_the_documented_stream_is_a_real_stream(api: Any) -> None:
    """The OpenAPI examples: the same events with the same fields as a real stream of the
    shipped default-lm, and the whole message its text adds up to (greedy)."""

    def keys(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: keys(v) for k, v in value.items()}
        return None

    documented = sse_events(examples.ANTHROPIC_MESSAGE_STREAM)
    assert assemble(documented)["content"] == examples.ANTHROPIC_MESSAGE["content"]

    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        request = {"messages": [{"role": "user", "content": "Tell me a joke"}],
                   "max_tokens": 3, "temperature": 0}
        r = await client.post("/v1/messages", json={**request, "stream": True})
        real = sse_events(r.text)
        assert [n for n, _ in real] == [n for n, _ in documented]
        assert [keys(d) for _, d in real] == [keys(d) for _, d in documented]
        whole = await create(client, request)
        assert comparable(whole) == comparable(examples.ANTHROPIC_MESSAGE)
        assert await count(client, request) == examples.ANTHROPIC_COUNT["input_tokens"]

    api(body, models=[f"default-lm={ROOT / 'models' / 'default-lm'}"])


def test_the_error_shape_is_chosen_by_route_behind_a_root_path() -> None:
    """A proxy's --root-path prefix does not hide an Anthropic route from errors.py."""
    from app.api.errors import anthropic_route, error_content, route_path

    for scope in ({"path": "/v1/messages/count_tokens"},
                  {"path": "/llm/v1/messages/count_tokens", "root_path": "/llm"}):
        assert anthropic_route(route_path(scope))
        assert error_content(route_path(scope), 422, "invalid_request_error", "bad") == (
            400, {"type": "error", "error": {"type": "invalid_request_error",
                                             "message": "bad"}})
    for path in ("/v1/messagesx", "/v1/chat/completions", "/llm/v1/messages"):
        assert not anthropic_route(path)
    assert error_content("/v1/chat/completions", 422, "invalid_request_error", "bad", "x")[
        1]["error"]["code"] == 422
