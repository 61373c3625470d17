"""The official openai client's Responses API (`client.responses`) against a real server
of the shipped default-lm: create, the SDK's stream helper assembling the same Response
as the whole call (same seed), a function call answered with function_call_output both by
sending the items back and by previous_response_id, text.format json_schema (also through
`responses.parse`), retrieve and delete, and bad input refused in OpenAI's error shape
with nothing queued. The default-lm's context is 256 tokens: tools and limits are sized
to it."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from pydantic import BaseModel, Field

from app.tokenizer import Tokenizer
from tests.chat.families import build_family_checkpoint
from tests.live import LiveServer
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8}},
           "required": ["city"]}
TOOLS: Any = [{"type": "function", "name": "get_weather", "parameters": WEATHER,
               "strict": True}]
# seed 17: an answer that ends by itself (status completed) within 40 tokens
FORTUNE: Any = dict(model="default-lm", input="Tell me a fortune.", max_output_tokens=40,
                    extra_body={"seed": 17})


@pytest.fixture(scope="module")
def live() -> Any:
    with LiveServer("--model", f"default-lm={ROOT / 'models' / 'default-lm'}") as server:
        yield server


@pytest.fixture(scope="module")
def client(live: LiveServer) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0)


def items(response: Any) -> list[dict[str, Any]]:
    """Output items without the ids each request makes fresh."""
    return [item.model_dump(exclude={"id", "call_id", "parsed_arguments"}, exclude_none=True)
            for item in response.output]


def test_create_stream_retrieve_delete(client: Any) -> None:
    import openai

    whole = client.responses.create(**FORTUNE)
    assert whole.status == "completed" and whole.output_text
    assert whole.output[0].type == "message" and whole.usage.output_tokens > 0
    with client.responses.stream(**FORTUNE) as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == whole.output_text
    assert items(final) == items(whole)
    assert (final.usage.input_tokens, final.usage.output_tokens) == (
        whole.usage.input_tokens, whole.usage.output_tokens)
    assert client.responses.retrieve(whole.id).output_text == whole.output_text
    client.responses.delete(whole.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(whole.id)


def test_function_call_output_by_items_and_by_previous_response_id(client: Any) -> None:
    first = client.responses.create(
        model="default-lm", input="Weather in Paris?", tools=TOOLS, tool_choice="required",
        parallel_tool_calls=False, max_output_tokens=80, extra_body={"seed": 3})
    [call] = first.output
    assert call.type == "function_call" and call.name == "get_weather"
    jsonschema.validate(json.loads(call.arguments), WEATHER)
    with client.responses.stream(
            model="default-lm", input="Weather in Paris?", tools=TOOLS,
            tool_choice="required", parallel_tool_calls=False, max_output_tokens=80,
            extra_body={"seed": 3}) as stream:
        streamed = stream.get_final_response()
    assert items(streamed) == items(first)
    # strict tools: the SDK's helper parsed the arguments it assembled
    assert streamed.output[0].parsed_arguments == json.loads(call.arguments)
    result = {"type": "function_call_output", "call_id": call.call_id,
              "output": "21 C"}
    then: Any = dict(model="default-lm", tools=TOOLS, max_output_tokens=6,
                     extra_body={"seed": 8})
    by_items = client.responses.create(
        input=[{"role": "user", "content": "Weather in Paris?"},
               *[item.model_dump(exclude_none=True, exclude={"parsed_arguments"})
                 for item in first.output], result], **then)
    by_id = client.responses.create(input=[result], previous_response_id=first.id, **then)
    assert by_id.usage.input_tokens == by_items.usage.input_tokens
    assert items(by_id) == items(by_items)
    assert by_id.previous_response_id == first.id


class Answer(BaseModel):
    answer: str = Field(max_length=6)


def test_json_schema_text_format(client: Any) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 6}},
              "required": ["answer"], "additionalProperties": False}
    done = client.responses.create(
        model="default-lm", input="Answer in JSON.", max_output_tokens=40,
        text={"format": {"type": "json_schema", "name": "answer", "schema": schema,
                         "strict": True}}, extra_body={"seed": 2})
    assert done.status == "completed"
    jsonschema.validate(json.loads(done.output_text), schema)
    parsed = client.responses.parse(model="default-lm", input="Answer in JSON.",
                                    max_output_tokens=40, text_format=Answer,
                                    extra_body={"seed": 2})
    assert isinstance(parsed.output_parsed, Answer)


def _queried(live: LiveServer) -> float:
    """Prompt tokens the engine has ever looked up for admission (a counter)."""
    text = httpx.get(live.url + "/metrics").text
    found = re.search(r'^llm_prefix_cache_queries_tokens_total\{model="default-lm"\} (\S+)$',
                      text, re.M)
    assert found, text[:500]
    return float(found.group(1))


def test_bad_input_is_a_clear_4xx_and_nothing_is_queued(client: Any, live: LiveServer) -> None:
    import openai

    before = _queried(live)
    bad: list[tuple[dict[str, Any], type[openai.APIStatusError], str]] = [
        ({"extra_body": {"temprature": 0.5}}, openai.BadRequestError, "temprature"),
        ({"tools": [{"type": "web_search"}]}, openai.BadRequestError, "tools[0]"),
        ({"previous_response_id": "resp_unknown"}, openai.NotFoundError,
         "previous_response_id"),
        ({"input": [{"role": "user", "content": [
            {"type": "input_image", "image_url": "https://example.com/a.png"}]}]},
         openai.BadRequestError, "input[0].content[0]"),
    ]
    for extra, error, param in bad:
        for stream in (False, True):
            kwargs: Any = {"model": "default-lm", "input": "hi", **extra}
            with pytest.raises(error) as caught:
                client.responses.create(stream=stream, **kwargs)
            body = caught.value.response.json()
            assert body["error"]["param"] == param, body
            assert body["error"]["code"] == caught.value.status_code
    info = httpx.get(live.url + "/v1/info").json()["models"][0]
    assert (info["running_requests"], info["waiting_requests"]) == (0, 0)
    assert _queried(live) == before


@pytest.fixture(scope="module")
def thinker(tmp_path_factory: pytest.TempPathFactory, tokenizer: Tokenizer) -> Any:
    from openai import OpenAI

    logging.getLogger("transformers").setLevel(logging.ERROR)
    directory = build_family_checkpoint("deepseek_r1", tokenizer,
                                        tmp_path_factory.mktemp("deepseek_r1"))
    with LiveServer("--model", f"thinker={directory}", "--reasoning-parser", "auto") as live:
        yield OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0)


def test_reasoning_item_streams_as_the_whole(thinker: Any) -> None:
    """DeepSeek-R1's template opens <think> in the prompt: a random tiny model reasons
    until effort "minimal"'s budget (64 tokens) closes it, then answers; the SDK's stream
    helper assembles the reasoning item and the message the whole call returns."""
    kwargs: Any = dict(model="thinker", input="Weather in Paris?", max_output_tokens=100,
                       reasoning={"effort": "minimal"}, extra_body={"seed": 7})
    whole = thinker.responses.create(**kwargs)
    assert [item.type for item in whole.output] == ["reasoning", "message"]
    assert whole.output[0].content[0].text and whole.output[1].content[0].text
    assert whole.usage.output_tokens_details.reasoning_tokens > 0
    with thinker.responses.stream(**kwargs) as stream:
        events = list(stream)
    reasoning = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    assert reasoning == whole.output[0].content[0].text
    # the last event (response.completed, or response.incomplete when max_output_tokens
    # cut the answer) carries the Response as the helper assembled it
    assert events[-1].type == f"response.{whole.status}"
    assert items(events[-1].response) == items(whole)


def _aborted(live: LiveServer) -> float:
    found = re.search(r'^llm_requests_finished_total\{finish_reason="abort",model="default-lm"'
                      r'\} (\S+)$', httpx.get(live.url + "/metrics").text, re.M)
    return float(found.group(1)) if found else 0.0


def _idle(live: LiveServer) -> bool:
    info = httpx.get(live.url + "/v1/info").json()["models"][0]
    return (info["running_requests"], info["waiting_requests"], info["kv_blocks_used"]) == (
        0, 0, 0)


def test_leaving_a_stream_aborts_its_request(live: LiveServer) -> None:
    aborted = _aborted(live)
    body = {"input": "Tell me a fortune.", "max_output_tokens": 200, "ignore_eos": True,
            "stream": True}
    with httpx.stream("POST", live.url + "/v1/responses", json=body, timeout=30) as r:
        for line in r.iter_lines():
            if line == "event: response.output_text.delta":
                break  # a token came: leave with 199 to go
    wait_until(lambda: _idle(live), "the engine to be idle")
    assert _aborted(live) == aborted + 1
