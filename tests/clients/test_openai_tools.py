"""The official openai client's tool calling against a real server of the shipped
default-lm (its template knows no tools: they reach it in a system message, and the
hermes parser reads its answers): required and named tool_choice make even this small
model produce valid calls; streamed calls equal the whole answer; a two-turn loop sends a
tool result back. Then reasoning against a tiny checkpoint with DeepSeek-R1's template.
The default-lm's context is 256 tokens: the tools and max_tokens here are sized to it."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from app.tokenizer import Tokenizer
from tests.chat.families import build_family_checkpoint
from tests.live import LiveServer

ROOT = Path(__file__).resolve().parents[2]
# Small schemas: the default-lm's context is 256 tokens, tools and call included.
WEATHER = {"type": "object", "properties": {
    "city": {"type": "string", "maxLength": 8}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"]}
TOOLS: Any = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER,
                                      "strict": True}},
    {"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {}}}},
]
ASK: Any = [{"role": "user", "content": "Weather in Paris?"}]


@pytest.fixture(scope="module")
def client() -> Any:
    from openai import OpenAI

    with LiveServer("--model", f"default-lm={ROOT / 'models' / 'default-lm'}") as live:
        yield OpenAI(base_url=live.url + "/v1", api_key="unused")


def _calls(message: Any) -> list[tuple[str, Any]]:
    return [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls]


def test_required_tool_choice_gives_valid_calls(client: Any) -> None:
    done = client.chat.completions.create(
        model="default-lm", messages=ASK, tools=TOOLS[:1], tool_choice="required",
        parallel_tool_calls=False, max_tokens=80, temperature=1.0, seed=11)
    choice = done.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    calls = _calls(choice.message)
    assert calls and choice.message.content is None
    for (name, arguments), call in zip(calls, choice.message.tool_calls, strict=True):
        assert call.id.startswith("call_") and call.type == "function"
        if name == "get_weather":
            jsonschema.validate(arguments, WEATHER)
        else:
            assert name == "get_time" and arguments == {}


def test_named_tool_choice_and_one_call(client: Any) -> None:
    done = client.chat.completions.create(
        model="default-lm", messages=ASK, tools=TOOLS, max_tokens=50, seed=5,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        parallel_tool_calls=False)
    assert _calls(done.choices[0].message) == [("get_time", {})]
    assert done.choices[0].finish_reason == "tool_calls"


def test_stream_adds_up_to_the_whole_answer(client: Any) -> None:
    kwargs: Any = dict(model="default-lm", messages=ASK, tools=TOOLS[:1],
                       tool_choice="required", parallel_tool_calls=False, max_tokens=80,
                       temperature=1.0, seed=23)
    whole = client.chat.completions.create(**kwargs).choices[0]
    calls: dict[int, dict[str, Any]] = {}
    finish = None
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            assert not choice.delta.content
            for piece in choice.delta.tool_calls or []:
                if piece.index not in calls:  # id and name come once, first
                    assert piece.id and piece.function.name
                    calls[piece.index] = {"name": piece.function.name, "arguments": ""}
                else:
                    assert piece.id is None and not piece.function.name
                calls[piece.index]["arguments"] += piece.function.arguments or ""
    assert finish == whole.finish_reason == "tool_calls"
    assert [(c["name"], json.loads(c["arguments"])) for _, c in sorted(calls.items())] == (
        _calls(whole.message))


def test_two_turn_loop_sends_the_result_back(client: Any) -> None:
    tools = TOOLS[:1]
    first = client.chat.completions.create(
        model="default-lm", messages=ASK, tools=tools, max_tokens=80, seed=3,
        parallel_tool_calls=False,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    message = first.choices[0].message
    call = message.tool_calls[0]
    history = [*ASK, message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id,
                "content": json.dumps({"temperature": 21, "unit": "celsius"})}]
    second = client.chat.completions.create(model="default-lm", messages=history,
                                            tools=tools, tool_choice="none", max_tokens=10)
    answer = second.choices[0]
    assert answer.message.tool_calls is None and isinstance(answer.message.content, str)
    assert answer.finish_reason in ("stop", "length")


@pytest.fixture(scope="module")
def thinker(tmp_path_factory: pytest.TempPathFactory, tokenizer: Tokenizer) -> Any:
    from openai import OpenAI

    logging.getLogger("transformers").setLevel(logging.ERROR)
    directory = build_family_checkpoint("deepseek_r1", tokenizer,
                                        tmp_path_factory.mktemp("deepseek_r1"))
    with LiveServer("--model", f"thinker={directory}", "--reasoning-parser", "auto") as live:
        yield OpenAI(base_url=live.url + "/v1", api_key="unused")


def test_reasoning_budget_and_stream(thinker: Any) -> None:
    """DeepSeek-R1's template opens <think> in the prompt: a random tiny model reasons
    until the budget forces </think>; the stream's reasoning and content add up to the
    whole answer's (vLLM's reasoning_content, an extra field for the openai client)."""
    budget = 6
    kwargs: Any = dict(model="thinker", messages=ASK, max_tokens=30, temperature=1.0,
                       seed=7, logprobs=True, extra_body={"thinking_budget": budget})
    whole = thinker.chat.completions.create(**kwargs).choices[0]
    tokens = [entry.token for entry in whole.logprobs.content]
    assert "</think>" in tokens and tokens.index("</think>") <= budget, tokens
    reasoning = (whole.message.model_extra or {}).get("reasoning_content") or ""
    assert reasoning
    streamed = {"reasoning_content": "", "content": ""}
    for chunk in thinker.chat.completions.create(stream=True, **kwargs):
        for choice in chunk.choices:
            streamed["content"] += choice.delta.content or ""
            streamed["reasoning_content"] += (choice.delta.model_extra or {}).get(
                "reasoning_content") or ""
    assert streamed == {"reasoning_content": reasoning, "content": whole.message.content or ""}
