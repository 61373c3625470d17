"""/v1/responses in process (issue 24): input items and tools translated onto the chat
pipeline, output items validated by the openai SDK's own Response model, named and
numbered stream events that add up to the whole answer, the store (previous_response_id,
GET, DELETE, its bounds), reasoning items and the effort's budget, and bad input refused
in OpenAI's error shape with nothing queued."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from fastapi import FastAPI

from app.api.response_store import ResponseStore
from app.tokenizer import Tokenizer
from tests.chat.families import LONG_CONTEXT, build_family_checkpoint
from tests.helpers import build_hf_checkpoint

ROOT = Path(__file__).resolve().parents[2]
WEATHER = {"type": "object", "properties": {
    "city": {"type": "string", "maxLength": 12},
    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"], "additionalProperties": False}
TOOLS = [{"type": "function", "name": "get_weather", "description": "Weather in a city",
          "parameters": WEATHER, "strict": True}]
REQUIRED = {"input": "Weather in Paris?", "tools": TOOLS, "tool_choice": "required",
            "parallel_tool_calls": False, "max_output_tokens": 120, "seed": 4}


def valid(body: dict[str, Any]) -> dict[str, Any]:
    """The body as the openai SDK's Response model reads it (raises if it cannot)."""
    from openai.types.responses import Response

    Response.model_validate(body)
    return body


def without_ids(response: dict[str, Any]) -> list[dict[str, Any]]:
    """A response's output items without the ids made fresh for each request."""
    return [{k: v for k, v in item.items() if k not in ("id", "call_id")}
            for item in response["output"]]


def events_of(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of an SSE body; every event is named and typed alike."""
    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        data = json.loads(lines["data"])
        assert lines["event"] == data["type"], block
        out.append((lines["event"], data))
    assert [d["sequence_number"] for _, d in out] == list(range(len(out)))
    return out


def assembled(events: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The output items the deltas add up to (checked against each .done event)."""
    items: dict[int, dict[str, Any]] = {}
    for name, data in events:
        if name == "response.output_item.added":
            items[data["output_index"]] = {**data["item"], "text": ""}
        elif name in ("response.output_text.delta", "response.reasoning_text.delta",
                      "response.function_call_arguments.delta"):
            items[data["output_index"]]["text"] += data["delta"]
        elif name in ("response.output_text.done", "response.reasoning_text.done"):
            assert items[data["output_index"]]["text"] == data["text"]
        elif name == "response.function_call_arguments.done":
            assert items[data["output_index"]]["text"] == data["arguments"]
        elif name == "response.output_item.done":
            item = items[data["output_index"]]
            done = data["item"]
            text = (done["arguments"] if done["type"] == "function_call"
                    else "".join(part["text"] for part in done["content"]))
            assert (item["id"], item["text"]) == (done["id"], text)
            items[data["output_index"]] = done
    return [items[i] for i in sorted(items)]


async def streamed(client: httpx.AsyncClient, body: dict[str, Any]
                   ) -> tuple[list[tuple[str, dict[str, Any]]], dict[str, Any]]:
    r = await client.post("/v1/responses", json={**body, "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = events_of(r.text)
    names = [name for name, _ in events]
    assert names[:2] == ["response.created", "response.in_progress"]
    assert names[-1] in ("response.completed", "response.incomplete")
    final = valid(events[-1][1]["response"])
    assert final["output"] == assembled(events)
    return events, final


async def idle(app: FastAPI, model: str) -> None:
    stats = app.state.server.models[model].engine.stats()
    assert (stats.running_requests, stats.waiting_requests) == (0, 0)


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory, tokenizer: Tokenizer) -> str:
    """The test suite's Llama with a ChatML template and a context long enough for tools."""
    directory = tmp_path_factory.mktemp("lm_long")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    build_hf_checkpoint("llama_gqa_llama3", directory, tokenizer,
                        max_position_embeddings=LONG_CONTEXT)
    return f"lm={directory}"


def test_text_whole_stream_store_get_delete(api: Any) -> None:
    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        ask = {"input": [{"role": "user", "content": [{"type": "input_text",
                                                        "text": "Tell me a fortune."}]}],
               "instructions": "Be brief.", "max_output_tokens": 8, "seed": 3,
               "temperature": 0.9, "metadata": {"ticket": "42"}}
        r = await client.post("/v1/responses", json=ask)
        assert r.status_code == 200, r.text
        whole = valid(r.json())
        assert whole["id"].startswith("resp_") and whole["object"] == "response"
        assert (whole["status"], whole["incomplete_details"]) == (
            "incomplete", {"reason": "max_output_tokens"})
        assert (whole["metadata"], whole["instructions"], whole["temperature"]) == (
            {"ticket": "42"}, "Be brief.", 0.9)
        [message] = whole["output"]
        assert message["type"] == "message" and message["id"].startswith("msg_")
        assert message["content"][0]["type"] == "output_text" and message["content"][0][
            "annotations"] == []
        usage = whole["usage"]
        assert usage["output_tokens"] == 8 and usage["total_tokens"] == (
            usage["input_tokens"] + 8)
        events, final = await streamed(client, ask)
        assert without_ids(final) == without_ids(whole) and final["usage"]["output_tokens"] == 8
        assert "response.output_text.delta" in [name for name, _ in events]
        # stored: GET returns it as it was answered; DELETE removes it
        got = await client.get(f"/v1/responses/{whole['id']}")
        assert got.status_code == 200 and got.json() == whole
        gone = await client.delete(f"/v1/responses/{whole['id']}")
        assert gone.json() == {"id": whole["id"], "object": "response", "deleted": True}
        for method in ("GET", "DELETE"):
            missing = await client.request(method, f"/v1/responses/{whole['id']}")
            assert missing.status_code == 404
            assert missing.json()["error"]["type"] == "not_found_error"
        # store: false keeps nothing (the stream's answer was stored, this one is not)
        unstored = (await client.post("/v1/responses", json={**ask, "store": False})).json()
        assert (await client.get(f"/v1/responses/{unstored['id']}")).status_code == 404
        assert (await client.get(f"/v1/responses/{final['id']}")).status_code == 200
        assert len(app.state.server.responses) == 1
        metrics = (await client.get("/metrics")).text
        assert "llm_responses_stored 1.0" in metrics
        assert f"llm_responses_stored_bytes {float(app.state.server.responses.bytes)}" in metrics

    api(body, models=[f"default-lm={ROOT / 'models' / 'default-lm'}"])


def test_function_call_round_trip_by_items_and_by_previous_id(api: Any, lm: str) -> None:
    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        first = valid((await client.post("/v1/responses", json=REQUIRED)).json())
        assert first["status"] == "completed"
        [call] = first["output"]
        assert call["type"] == "function_call" and call["id"].startswith("fc_")
        assert call["name"] == "get_weather" and call["status"] == "completed"
        jsonschema.validate(json.loads(call["arguments"]), WEATHER)
        _, final = await streamed(client, REQUIRED)
        assert without_ids(final) == without_ids(first)
        result = {"type": "function_call_output", "call_id": call["call_id"],
                  "output": json.dumps({"temperature": 21})}
        then = {"max_output_tokens": 6, "seed": 8, "tools": TOOLS}
        by_items = valid((await client.post("/v1/responses", json={
            **then, "input": [{"role": "user", "content": "Weather in Paris?"},
                              *first["output"], result]})).json())
        by_id = valid((await client.post("/v1/responses", json={
            **then, "input": [result], "previous_response_id": first["id"]})).json())
        # the same conversation, so the same prompt and (same seed) the same answer
        assert by_id["previous_response_id"] == first["id"]
        assert by_id["usage"]["input_tokens"] == by_items["usage"]["input_tokens"]
        assert without_ids(by_id) == without_ids(by_items)
        # and the prompt did grow by the call and its result
        alone = (await client.post("/v1/responses", json={
            **then, "input": "Weather in Paris?"})).json()
        assert by_id["usage"]["input_tokens"] > alone["usage"]["input_tokens"] + 10
        # two turns chained by id: the first turn's items come along too
        again = (await client.post("/v1/responses", json={
            **then, "input": "And tomorrow?", "previous_response_id": by_id["id"]})).json()
        assert again["usage"]["input_tokens"] > by_id["usage"]["input_tokens"]

    api(body, models=[lm])


def test_json_schema_text_format(api: Any, lm: str) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 6}},
              "required": ["answer"], "additionalProperties": False}

    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        ask = {"input": "Answer in JSON.", "max_output_tokens": 60, "seed": 2, "text": {
            "format": {"type": "json_schema", "name": "answer", "schema": schema,
                       "strict": True}}}
        whole = valid((await client.post("/v1/responses", json=ask)).json())
        assert whole["status"] == "completed", whole
        jsonschema.validate(json.loads(whole["output"][0]["content"][0]["text"]), schema)
        assert whole["text"]["format"]["name"] == "answer"
        _, final = await streamed(client, ask)
        assert without_ids(final) == without_ids(whole)
        anything = (await client.post("/v1/responses", json={
            **ask, "text": {"format": {"type": "json_object"}}})).json()
        assert isinstance(json.loads(anything["output"][0]["content"][0]["text"]), dict)

    api(body, models=[lm])


def test_reasoning_item_and_effort_budget(api: Any, tokenizer: Tokenizer,
                                          tmp_path_factory: pytest.TempPathFactory) -> None:
    """DeepSeek-R1's template opens <think> in the prompt: the random model's reasoning is
    a reasoning item; effort "none" (a budget of 1 token) closes it at once."""
    logging.getLogger("transformers").setLevel(logging.ERROR)
    directory = build_family_checkpoint("deepseek_r1", tokenizer, tmp_path_factory.mktemp("r1"))

    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        ask = {"input": "Weather in Paris?", "max_output_tokens": 24, "seed": 9,
               "reasoning": {"effort": "low"}}
        whole = valid((await client.post("/v1/responses", json=ask)).json())
        reasoning = whole["output"][0]
        assert reasoning["type"] == "reasoning" and reasoning["id"].startswith("rs_")
        assert reasoning["summary"] == [] and reasoning["content"][0]["text"]
        assert whole["usage"]["output_tokens_details"]["reasoning_tokens"] > 0
        assert whole["reasoning"]["effort"] == "low"
        events, final = await streamed(client, ask)
        assert without_ids(final) == without_ids(whole)
        assert "response.reasoning_text.delta" in [name for name, _ in events]
        short = valid((await client.post("/v1/responses", json={
            **ask, "reasoning": {"effort": "none"}})).json())
        # one token of reasoning (the test vocabulary's pieces are a few characters)
        cut = short["output"][0]["content"][0]["text"]
        assert 0 < len(cut) <= 4 < len(reasoning["content"][0]["text"]), short["output"]

    api(body, models=[f"r1={directory}"], reasoning_parser="auto")


BAD: list[tuple[dict[str, Any], int, str | None, str]] = [
    ({"input": "hi", "temprature": 1}, 400, "temprature", "temprature"),
    ({"input": "hi", "tools": [{"type": "web_search"}]}, 400, "tools[0]", "built-in tool"),
    ({"input": "hi", "tools": [{"type": "function", "name": "a b"}]}, 400, "tools[0].name",
     "letters"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
     400, "input[0].content[0]", "text only"),
    ({"input": [{"type": "file_search_call"}]}, 400, "input[0]", "not supported"),
    ({"input": [{"role": "robot", "content": "hi"}]}, 400, "input[0].role", "one of"),
    ({"input": [{"type": "function_call_output", "output": "1"}]}, 400, "input[0].call_id",
     "non-empty"),
    ({"input": []}, 400, "input", "empty"),
    ({"input": "hi", "tool_choice": {"type": "web_search_preview"}}, 400, "tool_choice",
     "built-in"),
    ({"input": "hi", "tools": TOOLS, "tool_choice": {"type": "function", "name": "nope"}},
     400, "tool_choice", "not in `tools`"),
    ({"input": "hi", "text": {"format": {"type": "json_schema", "name": "x"}}}, 400,
     "text.format", "needs a name and a schema"),
    ({"input": "hi", "tools": TOOLS, "tool_choice": "required",
      "text": {"format": {"type": "json_object"}}}, 400, "text.format", "send one of them"),
    ({"input": "hi", "background": True}, 400, "background", "not supported"),
    ({"input": "hi", "text": {"verbosity": "low"}}, 400, "text.verbosity", "not supported"),
    ({"input": "hi", "conversation": "conv_1"}, 400, "conversation", "previous_response_id"),
    ({"input": "hi", "truncation": "auto"}, 400, "truncation", "never truncated"),
    ({"input": "hi", "include": ["message.output_text.logprobs"]}, 400, "include",
     "not supported"),
    ({"input": "hi", "max_output_tokens": 100000}, 400, "max_output_tokens", "at most"),
    ({"input": "word " * 300}, 400, "input", "too long"),
    ({"input": "hi", "previous_response_id": "resp_nope"}, 404, "previous_response_id",
     "not found"),
    ({"input": "hi", "reasoning": {"effort": "huge"}}, 422, "reasoning.effort", "effort"),
]


def test_bad_input_is_refused_in_openai_shape_with_nothing_queued(api: Any) -> None:
    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        engine = app.state.server.models["default-lm"].engine
        before = engine.stats().prefix_queries
        for request, status, param, words in BAD:
            for stream in (False, True):
                r = await client.post("/v1/responses", json={**request, "stream": stream})
                assert r.status_code == status, (request, r.text)
                assert r.headers["content-type"] == "application/json"
                error = r.json()["error"]
                assert (error["param"], error["code"]) == (param, status), (request, error)
                assert words in error["message"], (request, error)
        assert engine.stats().prefix_queries == before  # nothing was ever admitted
        await idle(app, "default-lm")

    api(body, models=[f"default-lm={ROOT / 'models' / 'default-lm'}"])


def test_store_bounds_entries_bytes_and_ttl() -> None:
    now = [0.0]
    store = ResponseStore(max_entries=2, max_bytes=400, ttl_s=10, clock=lambda: now[0])

    def response(key: str, pad: int = 0) -> dict[str, Any]:
        return {"id": key, "output": ["x" * pad]}

    assert store.put(response("a"), []) and store.put(response("b"), [])
    assert store.get("a") is not None  # a use: now "b" is the least recently used
    assert store.put(response("c"), [{"role": "user"}])
    assert store.get("b") is None and store.get("a") is not None and len(store) == 2
    assert not store.put(response("huge", pad=500), [])  # over the byte cap alone
    assert len(store) == 2 and store.get("huge") is None
    assert store.put(response("d", pad=360), [])  # both caps: "c" then "a" go
    assert store.bytes <= 400 and store.get("d") is not None and len(store) == 1
    now[0] = 10.5
    assert store.get("d") is None and len(store) == 0 and store.bytes == 0
    roomy = ResponseStore(max_entries=10, max_bytes=10_000, ttl_s=10, clock=lambda: now[0])
    assert roomy.put(response("e"), [])
    now[0] = 15.0
    assert roomy.put(response("f"), [])
    now[0] = 21.0  # "e" expired at 20.5: keeping "g" drops it, unasked
    assert roomy.put(response("g"), []) and len(roomy) == 2
    assert roomy.get("f") is not None and roomy.get("g") is not None
    assert not store.delete("d")
    off = ResponseStore(max_entries=0, max_bytes=400, ttl_s=10)
    assert not off.put(response("a"), []) and len(off) == 0


def test_documented_stream_is_what_the_route_streams(api: Any) -> None:
    """The OpenAPI SSE example (app/api/examples.py) has the events, in order and with
    the fields, that the route sends for the request that made it."""
    from app.api import examples

    def keys(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: keys(v) for k, v in value.items()}
        if isinstance(value, list):
            return [keys(v) for v in value[:1]]
        return None

    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        documented = events_of(examples.RESPONSE_STREAM)
        real, _ = await streamed(client, {"input": "Tell me a fortune.", "seed": 17,
                                          "max_output_tokens": 2})
        assert [n for n, _ in documented] == [n for n, _ in real]
        assert [keys(d) for _, d in documented] == [keys(d) for _, d in real]
        valid(examples.RESPONSE)

    api(body, models=[f"default-lm={ROOT / 'models' / 'default-lm'}"])


def test_a_failure_mid_stream_is_an_error_event_then_response_failed(api: Any) -> None:
    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        engine = app.state.server.models["default-lm"].engine
        steps = {"n": 0}

        def fail_third(out: Any) -> None:
            steps["n"] += 1
            if steps["n"] == 3:
                raise RuntimeError("injected fault")

        engine.fault_hook = fail_third
        r = await client.post("/v1/responses", json={
            "input": "Tell me a fortune.", "max_output_tokens": 20, "seed": 1, "stream": True})
        assert r.status_code == 200  # the stream had begun
        events = events_of(r.text)
        names = [name for name, _ in events]
        assert "response.output_text.delta" in names
        assert names[-2:] == ["error", "response.failed"], names
        error, failed = events[-2][1], valid(events[-1][1]["response"])
        assert error["code"] == "inference_error" and "injected fault" in error["message"]
        assert failed["status"] == "failed" and failed["error"]["code"] == "server_error"
        assert (await client.get(f"/v1/responses/{failed['id']}")).status_code == 404
        await idle(app, "default-lm")

    api(body, models=[f"default-lm={ROOT / 'models' / 'default-lm'}"])
