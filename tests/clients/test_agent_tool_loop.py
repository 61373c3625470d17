"""An agent framework's tool loop against a real server: the OpenAI Agents SDK
(`openai-agents`) with its chat-completions model, pointed at `python -m app serve` with
the shipped default-lm. tool_choice "required" makes even this small model call the
function with valid arguments (constrained decoding); the SDK runs the tool, sends the
result back, and (its default reset_tool_choice) asks again with tool_choice unset, so
the second turn may answer in text and the run ends. Whole and streamed runs.

Every request and response body is recorded as the server saw them (an httpx hook on
the SDK's client) and printed (`pytest -s`); TRANSCRIPT_ENV names a file to save it to.
The default-lm's context is 256 tokens: no instructions, a compact tool schema, and
max_tokens unset so each turn may use the room its prompt leaves.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.live import LiveServer

ROOT = Path(__file__).resolve().parents[2]
MODEL = "default-lm"
TRANSCRIPT_ENV = "AGENT_TRANSCRIPT"
REPORT = "21 C, sunny"
CITY = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8}},
        "required": ["city"], "additionalProperties": False}


class Transcript:
    """The loop's HTTP exchanges, in order: request bodies, JSON responses, and each
    streamed response's SSE data lines (read by the SDK, copied here as they pass)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.requests: list[dict[str, Any]] = []

    async def on_request(self, request: Any) -> None:  # an httpx2.Request (openai's)
        body = json.loads(request.content or b"{}")
        self.requests.append(body)
        self.lines.append(f">>> {request.method} {request.url.path}\n"
                          f"{json.dumps(body, indent=1, ensure_ascii=False)}")

    async def on_response(self, response: Any) -> None:
        kind = response.headers.get("content-type", "")
        if kind.startswith("application/json"):
            await response.aread()
            self.lines.append(f"<<< {response.status_code}\n"
                              f"{json.dumps(response.json(), indent=1, ensure_ascii=False)}")
        else:  # a stream: its events are recorded as the SDK reads them
            self.lines.append(f"<<< {response.status_code} {kind}")
            original = response.aiter_bytes

            async def recorded(*args: Any, **kwargs: Any) -> AsyncIterator[bytes]:
                pending = b""
                async for chunk in original(*args, **kwargs):
                    pending += chunk
                    *whole, pending = pending.split(b"\n")
                    self.lines.extend(f"  {line.decode()}" for line in whole if line)
                    yield chunk

            response.aiter_bytes = recorded

    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    with LiveServer("--model", f"{MODEL}={ROOT / 'models' / 'default-lm'}") as live:
        yield live


def _agent(server: LiveServer, transcript: Transcript, calls: list[str], seed: int
           ) -> Any:
    from agents import (
        Agent,
        FunctionTool,
        ModelSettings,
        OpenAIChatCompletionsModel,
        set_tracing_disabled,
    )
    from openai import AsyncOpenAI, DefaultAsyncHttpxClient

    set_tracing_disabled(True)  # no traces sent to OpenAI's platform

    async def get_weather(_: Any, arguments: str) -> str:
        calls.append(json.loads(arguments)["city"])
        return REPORT

    # The SDK's FunctionTool with a schema written out: @function_tool's pydantic schema
    # adds titles the 256-token context has no room for.
    tool = FunctionTool(name="get_weather", description="", params_json_schema=CITY,
                        on_invoke_tool=get_weather, strict_json_schema=True)
    client = AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", http_client=(
        DefaultAsyncHttpxClient(event_hooks={"request": [transcript.on_request],
                                             "response": [transcript.on_response]})))
    return Agent(
        name="weather", tools=[tool],
        model=OpenAIChatCompletionsModel(model=MODEL, openai_client=client),
        # No max_tokens: the SDK sends one value for every turn, and the second turn's
        # prompt (the call and its result added) leaves less room than the first needs;
        # unset, each reply may run to the end of the context (OpenAI's semantics).
        # A seed (a create() argument the SDK passes through) makes the run repeatable.
        model_settings=ModelSettings(tool_choice="required", temperature=1.0,
                                     parallel_tool_calls=False, extra_args={"seed": seed}))


def _check_loop(items: list[Any], calls: list[str], sent: list[dict[str, Any]]) -> None:
    """The SDK saw a call with valid arguments, ran it (our function got them), sent its
    output back with the call's id, and ended on a text message."""
    from agents import MessageOutputItem, ToolCallItem, ToolCallOutputItem

    kinds = [type(item).__name__ for item in items]
    called: list[Any] = [item.raw_item for item in items if isinstance(item, ToolCallItem)]
    outputs = [item for item in items if isinstance(item, ToolCallOutputItem)]
    assert called and len(outputs) == len(called) == len(calls), kinds
    for raw, city in zip(called, calls, strict=True):
        assert raw.name == "get_weather" and raw.call_id.startswith("call_")
        arguments = json.loads(raw.arguments)
        jsonschema.validate(arguments, CITY)
        assert arguments["city"] == city
    assert [o.output for o in outputs] == [REPORT] * len(calls)
    assert isinstance(items[-1], MessageOutputItem), kinds  # the run ended on text
    # a request per turn: the first forced a call, the last carried its result back with
    # tool_choice reset (the SDK's default), so the model could answer in text
    assert len(sent) == len(calls) + 1
    assert sent[0]["tool_choice"] == "required" and "tool_choice" not in sent[-1]
    results = [m for m in sent[-1]["messages"] if m["role"] == "tool"]
    assert [(m["tool_call_id"], m["content"]) for m in results] == [
        (raw.call_id, REPORT) for raw in called]


def _report(transcript: Transcript, title: str) -> None:
    text = f"=== {title}\n{transcript.text()}\n"
    print(text)  # the transcript is this test's record (pytest -s)
    if os.environ.get(TRANSCRIPT_ENV):
        with open(os.environ[TRANSCRIPT_ENV], "a", encoding="utf-8") as out:
            out.write(text)


def test_agent_runs_the_tool_loop(server: LiveServer) -> None:
    from agents import Runner

    transcript, calls = Transcript(), list[str]()
    agent = _agent(server, transcript, calls, seed=1)
    try:
        result = Runner.run_sync(agent, "Weather in Paris?", max_turns=4)
    finally:
        _report(transcript, "Runner.run")
    _check_loop(result.new_items, calls, transcript.requests)
    assert isinstance(result.final_output, str)


def test_agent_streams_the_tool_loop(server: LiveServer) -> None:
    from agents import Runner

    transcript, calls = Transcript(), list[str]()
    agent = _agent(server, transcript, calls, seed=2)

    async def run() -> tuple[Any, list[Any]]:
        result = Runner.run_streamed(agent, "Weather in Rome?", max_turns=4)
        names = [event.name async for event in result.stream_events()
                 if event.type == "run_item_stream_event"]
        return result, names

    try:
        result, names = asyncio.run(run())
    finally:
        _report(transcript, "Runner.run_streamed")
    _check_loop(result.new_items, calls, transcript.requests)
    assert all(body.get("stream") for body in transcript.requests)
    assert any('"tool_calls": [{"index": 0, "id": "call_' in line
               for line in transcript.lines)  # the call came as streamed delta.tool_calls
    assert "tool_called" in names and "tool_output" in names, names
    assert names[-1] == "message_output_created", names
    assert isinstance(result.final_output, str)
