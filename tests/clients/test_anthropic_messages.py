"""The official `anthropic` client against a real server of the shipped default-lm,
started with an API key (the client sends it as `x-api-key`): messages.create,
messages.stream (its assembled final message equals create for the same seed, sent
through extra_body: Anthropic has no seed), a tool_use -> tool_result round trip,
stop sequences, count_tokens, and bad input as the SDK's own exception classes with
nothing queued. The default-lm's context is 256 tokens: tools and max_tokens are sized
to it."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from tests.live import LiveServer

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-ant-test"
MODEL = "default-lm"
WEATHER = {"type": "object", "properties": {
    "city": {"type": "string", "maxLength": 8}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"]}
TOOLS: Any = [{"name": "get_weather", "description": "Weather now", "input_schema": WEATHER}]
ASK: Any = [{"role": "user", "content": "Weather in Paris?"}]


@pytest.fixture(scope="module")
def live() -> Any:
    with LiveServer("--model", f"{MODEL}={ROOT / 'models' / 'default-lm'}",
                    "--api-key", KEY) as server:
        yield server


@pytest.fixture(scope="module")
def client(live: LiveServer) -> Any:
    from anthropic import Anthropic

    # no retries: a 429 or 5xx must show, not be retried away
    return Anthropic(base_url=live.url, api_key=KEY, max_retries=0)


def same(streamed: Any, created: Any) -> None:
    """The stream's final message equals the created one, but for what differs per
    request (ids; how much of the prompt the prefix cache served)."""

    def comparable(message: Any) -> dict[str, Any]:
        data = message.model_dump(exclude_none=True)
        usage = data.pop("usage")
        data.pop("id")
        for block in data["content"]:
            block.pop("id", None)
        return {**data, "output_tokens": usage["output_tokens"],
                "prompt": usage["input_tokens"] + usage["cache_read_input_tokens"]}

    assert comparable(streamed) == comparable(created)


def prompt_tokens(message: Any) -> int:
    return int(message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0))


def test_create_and_stream_give_the_same_message(client: Any) -> None:
    from anthropic.types import Message

    kwargs: Any = dict(model=MODEL, max_tokens=12, system="You tell jokes.",
                       messages=[{"role": "user", "content": "Tell me a joke"}],
                       # this SDK release no longer names temperature / top_p / top_k
                       extra_body={"seed": 7, "temperature": 1.0, "top_k": 50})
    created = client.messages.create(**kwargs)
    assert isinstance(created, Message) and created.id.startswith("msg_")
    assert created.model == MODEL and created.role == "assistant"
    assert created.stop_reason in ("end_turn", "max_tokens")
    assert created.content and created.content[0].type == "text"
    assert created.usage.output_tokens <= 12
    with client.messages.stream(**kwargs) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == created.content[0].text
    same(final, created)
    counted = client.messages.count_tokens(model=MODEL, system=kwargs["system"],
                                           messages=kwargs["messages"])
    assert counted.input_tokens == prompt_tokens(created) == prompt_tokens(final)


def test_stop_sequences_are_named(client: Any) -> None:
    kwargs: Any = dict(model=MODEL, max_tokens=16, messages=[
        {"role": "user", "content": "Once upon a time"}], extra_body={"seed": 3})
    text = client.messages.create(**kwargs).content[0].text
    assert len(text) > 6, text
    stop = text[len(text) // 2:len(text) // 2 + 2]
    stopped = client.messages.create(stop_sequences=["never-there", stop], **kwargs)
    assert (stopped.stop_reason, stopped.stop_sequence) == ("stop_sequence", stop)
    assert "".join(b.text for b in stopped.content) == text[:text.find(stop)]
    with client.messages.stream(stop_sequences=["never-there", stop], **kwargs) as stream:
        same(stream.get_final_message(), stopped)


def test_tool_use_and_tool_result_round_trip(client: Any) -> None:
    kwargs: Any = dict(model=MODEL, max_tokens=60, messages=ASK, tools=TOOLS,
                       tool_choice={"type": "any", "disable_parallel_tool_use": True},
                       extra_body={"seed": 11})
    created = client.messages.create(**kwargs)
    assert created.stop_reason == "tool_use"
    [call] = [b for b in created.content if b.type == "tool_use"]
    assert call.id.startswith("toolu_") and call.name == "get_weather"
    jsonschema.validate(call.input, WEATHER)
    with client.messages.stream(**kwargs) as stream:
        final = stream.get_final_message()
    same(final, created)
    counted = client.messages.count_tokens(model=MODEL, messages=ASK, tools=TOOLS,
                                           tool_choice=kwargs["tool_choice"])
    assert counted.input_tokens == prompt_tokens(created)

    # the result goes back; tool_choice none keeps the tools out of the 256-token context
    answer = client.messages.create(
        model=MODEL, max_tokens=8, tools=TOOLS, tool_choice={"type": "none"},
        messages=[*ASK, {"role": "assistant", "content": created.content},
                  {"role": "user", "content": [
                      {"type": "tool_result", "tool_use_id": call.id,
                       "content": '{"temperature": 21}'}]}])
    assert answer.stop_reason in ("end_turn", "max_tokens")
    assert all(block.type == "text" for block in answer.content)


def _engine_counters(live: LiveServer) -> tuple[str, ...]:
    metrics = httpx.get(live.url + "/metrics", headers={"x-api-key": KEY}).text
    names = ("llm_prefix_cache_queries_tokens_total", "llm_requests_running",
             "llm_requests_waiting")
    return tuple(re.search(rf"^{name}\{{[^}}]*\}} (\S+)$", metrics, re.M).group(1)  # type: ignore[union-attr]
                 for name in names)


def test_bad_input_raises_the_sdk_exceptions_and_queues_nothing(client: Any,
                                                                live: LiveServer) -> None:
    import anthropic

    before = _engine_counters(live)
    base: Any = dict(model=MODEL, max_tokens=8, messages=ASK)
    cases: list[tuple[type[Exception], dict[str, Any], str]] = [
        (anthropic.BadRequestError, {"extra_body": {"temperature": 1.5}},
         "invalid_request_error"),
        (anthropic.BadRequestError, {"max_tokens": 0}, "invalid_request_error"),
        (anthropic.BadRequestError, {"messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "url", "url": "http://x/y.png"}}]}]},
         "invalid_request_error"),
        (anthropic.BadRequestError, {"tools": [{"type": "web_search_20250305",
                                                "name": "web_search"}]},
         "invalid_request_error"),
        (anthropic.BadRequestError, {"max_tokens": 4000}, "invalid_request_error"),
        (anthropic.NotFoundError, {"model": "claude-9"}, "not_found_error"),
    ]
    for error, change, type_ in cases:
        with pytest.raises(error) as raised:
            client.messages.create(**{**base, **change})
        body = raised.value.body  # type: ignore[attr-defined]
        assert body["type"] == "error" and body["error"]["type"] == type_, body
    from anthropic import Anthropic

    wrong = Anthropic(base_url=live.url, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        wrong.messages.create(**base)
    with pytest.raises(anthropic.AuthenticationError):
        wrong.messages.count_tokens(model=MODEL, messages=ASK)
    with pytest.raises(anthropic.BadRequestError):
        client.messages.count_tokens(model=MODEL, messages=ASK, extra_body={"stream": True})
    assert _engine_counters(live) == before


def _aborted(live: LiveServer) -> float:
    metrics = httpx.get(live.url + "/metrics", headers={"x-api-key": KEY}).text
    found = re.search(r'^llm_requests_finished_total\{[^}]*finish_reason="abort"[^}]*\} (\S+)$',
                      metrics, re.M)
    return float(found.group(1)) if found else 0.0


def test_clients_that_leave_abort_their_requests(client: Any, live: LiveServer) -> None:
    """A stream closed after its first event and a create that times out: both requests
    are aborted on the server (the one pipeline's cancellation), and the engine is idle.
    A required call whose string cannot end within max_tokens keeps each one generating
    meanwhile (100 tokens: about 0.3 s here, three times the timeout)."""
    import anthropic

    long_call: Any = [{"name": "log", "input_schema": {"type": "object", "properties": {
        "line": {"type": "string", "minLength": 1000}}, "required": ["line"]}}]
    kwargs: Any = dict(model=MODEL, max_tokens=100, messages=[
        {"role": "user", "content": "Log it"}], tools=long_call,
        tool_choice={"type": "any"}, extra_body={"seed": 2})
    before = _aborted(live)
    with client.messages.stream(**kwargs) as stream:
        first = next(iter(stream))
        assert first.type == "message_start"
    with pytest.raises(anthropic.APITimeoutError):
        client.with_options(timeout=0.1).messages.create(**kwargs)
    deadline = time.monotonic() + 30
    while _aborted(live) - before < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _aborted(live) - before == 2
    assert _engine_counters(live)[1:] == ("0.0", "0.0")
