"""Structured output with the shipped default-lm at temperature 1.0: JSON Schema, regex and
choice constraints always hold; bad constraints get 400 before anything is queued."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from fastapi import FastAPI

ROOT = Path(__file__).resolve().parents[2]
MODELS = [f"default-lm={ROOT / 'models' / 'default-lm'}"]
PROMPTS = ["The best thing about computers is", "Q: What is love?\nA:", "Fortune:",
           "A man walks into a bar", "Today", "{", "My name is", "Dear diary,",
           "Error:", "Once upon a time"]
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "mood": {"enum": ["happy", "sad", "meh"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8},
                 "maxItems": 3},
        "address": {"type": "object", "properties": {"city": {"type": "string",
                                                              "maxLength": 10}},
                    "required": ["city"], "additionalProperties": False},
    },
    "required": ["name", "age", "mood", "tags", "address"],
    "additionalProperties": False,
}


def texts(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [r["text"] for r in response.json()["results"]]


def test_json_schema_outputs_always_validate(api: Any) -> None:
    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        r = await client.post("/v1/generate", json={
            "prompt": PROMPTS, "n": 5, "temperature": 1.0, "max_tokens": 200, "seed": 7,
            "structured_outputs": {"json": SCHEMA}})
        outputs = texts(r)
        assert len(outputs) == 50
        for text in outputs:
            jsonschema.validate(json.loads(text), SCHEMA)
        assert {x["finish_reason"] for x in r.json()["results"]} == {"stop"}

    api(body, models=MODELS, max_n=8)


def test_regex_and_choice_outputs_always_hold(api: Any) -> None:
    date = r"(19|20)\d\d-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])"

    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        r = await client.post("/v1/generate", json={
            "prompt": PROMPTS, "n": 5, "temperature": 1.0, "max_tokens": 20,
            "guided_regex": date})
        outputs = texts(r)
        assert len(outputs) == 50 and all(re.fullmatch(date, t) for t in outputs), outputs
        labels = ["computers", "love", "food", "science"]
        c = await client.post("/v1/generate", json={
            "prompt": PROMPTS, "n": 3, "temperature": 1.0, "max_tokens": 10,
            "structured_outputs": {"choice": labels}})
        assert all(t in labels for t in texts(c))

    api(body, models=MODELS, max_n=8)


@pytest.mark.parametrize("fields,param", [
    ({"structured_outputs": {"json": {"type": "object", "properties": 3}}},
     "structured_outputs.json"),
    ({"guided_regex": "[a-"}, "guided_regex"),
    ({"guided_grammar": "start: foo"}, "guided_grammar"),
    ({"guided_json": "{not json"}, "guided_json"),
    ({"guided_regex": "a", "guided_choice": ["b"]}, "guided_choice"),
    ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs"),
])
def test_bad_constraints_get_400_naming_the_problem(api: Any, fields: dict[str, Any],
                                                    param: str) -> None:
    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        r = await client.post("/v1/generate", json={"prompt": "x", **fields})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == param
        info = (await client.get("/v1/info")).json()["models"][0]
        assert info["running_requests"] == info["waiting_requests"] == 0

    api(body, models=MODELS)


def test_classify_generate_method_writes_one_of_the_labels(api: Any) -> None:
    labels = ["computers", "food", "love", "science"]

    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        r = await client.post("/v1/classify", json={
            "text": ["My laptop crashed again", "I ate a pizza"], "candidate_labels": labels,
            "method": "generate", "prompt_template": "{text}\n\nTopic:"})
        assert r.status_code == 200, r.text
        for result in r.json()["results"]:
            assert result["label"] in labels and 0 < result["score"] <= 1
            assert sorted(s["label"] for s in result["scores"]) == sorted(labels)
            assert [s["score"] for s in result["scores"]][1:] == [0.0] * 3
        scored = await client.post("/v1/classify", json={
            "text": "I ate a pizza", "candidate_labels": labels, "method": "score"})
        assert abs(sum(s["score"] for s in scored.json()["scores"]) - 1) < 1e-6

    api(body, models=MODELS)


def test_constraints_with_stop_strings_streaming_and_processed_logprobs(api: Any) -> None:
    date = r"(19|20)\d\d-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])"

    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        stopped = await client.post("/v1/generate", json={
            "prompt": "Born on", "max_tokens": 20, "seed": 3, "guided_regex": date,
            "stop": ["-"]})
        result = stopped.json()["results"][0]
        assert re.fullmatch(r"(19|20)\d\d", result["text"]) and result["finish_reason"] == "stop"
        whole = await client.post("/v1/generate", json={
            "prompt": "Born on", "max_tokens": 20, "seed": 3, "guided_regex": date,
            "logprobs": True, "top_logprobs": 3})
        async with client.stream("POST", "/v1/generate", json={
                "prompt": "Born on", "max_tokens": 20, "seed": 3, "guided_regex": date,
                "stream": True}) as s:
            events = [json.loads(line[6:]) async for line in s.aiter_lines()
                      if line.startswith("data: {") and '"text"' in line]
        assert "".join(e["text"] for e in events) == whole.json()["text"]
        # processed logprobs: every listed alternative is allowed by the constraint, so
        # the first token's top alternatives are all digits 1 or 2 (years 19xx / 20xx).
        first = whole.json()["results"][0]["logprobs"][0]
        listed = [t["token"] for t in first["top_logprobs"] if t["logprob"] > -1e30]
        assert listed and all(t[:1] in ("1", "2") for t in listed), listed
        raw = await client.post("/v1/generate", json={
            "prompt": "Born on", "max_tokens": 20, "seed": 3, "guided_regex": date,
            "logprobs": True, "top_logprobs": 3, "logprobs_mode": "raw"})
        assert raw.json()["text"] == whole.json()["text"]  # same draws, other report

    api(body, models=MODELS)


def test_a_constraint_too_slow_to_compile_is_refused(api: Any) -> None:
    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        r = await client.post("/v1/generate", json={"prompt": "x", "guided_regex": "[0-9]+"})
        assert r.status_code == 400
        assert "to compile (--structured-output-timeout)" in r.json()["error"]["message"]
        assert r.json()["error"]["param"] == "guided_regex"

    # A microsecond: no compile (not even a cache hit handed back by a thread) is that fast.
    api(body, models=MODELS, structured_output_timeout=1e-6)


def listed_keys_only(value: Any, schema: dict[str, Any]) -> bool:
    """Every object in `value` has only the keys its (sub)schema lists."""
    if isinstance(value, dict):
        props = schema.get("properties", {})
        return set(value) <= set(props) and all(
            listed_keys_only(v, props[k]) for k, v in value.items())
    if isinstance(value, list):
        return all(listed_keys_only(v, schema.get("items", {})) for v in value)
    return True


# Objects that list their properties and say nothing about others, at every depth.
OPEN_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "pet": {"type": "object", "properties": {"kind": {"enum": ["cat", "dog"]}},
                "required": ["kind"]},
        "toys": {"type": "array", "items": {"type": "object", "properties": {
            "size": {"type": "integer", "minimum": 0, "maximum": 9}}, "required": ["size"]},
                 "maxItems": 2},
    },
    "required": ["name", "pet", "toys"],
}


def test_strict_json_schema_admits_only_listed_properties(api: Any) -> None:
    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        for seed in (1, 2, 3):
            r = await client.post("/v1/completions", json={
                "prompt": PROMPTS[:4], "n": 2, "temperature": 1.0, "max_tokens": 120,
                "seed": seed, "response_format": {"type": "json_schema", "json_schema": {
                    "name": "pet", "schema": OPEN_SCHEMA, "strict": True}}})
            assert r.status_code == 200, r.text
            for choice in r.json()["choices"]:
                assert choice["finish_reason"] == "stop", choice
                value = json.loads(choice["text"])
                jsonschema.validate(value, OPEN_SCHEMA)
                assert listed_keys_only(value, OPEN_SCHEMA), choice["text"]

    api(body, models=MODELS, max_n=8)


def finished_json(response: httpx.Response) -> list[Any]:
    """The parsed outputs that ended on their own (a `length` one is a valid prefix);
    at least one does."""
    assert response.status_code == 200, response.text
    done = [r["text"] for r in response.json()["results"] if r["finish_reason"] == "stop"]
    assert done, response.text
    return [json.loads(text) for text in done]


def test_boolean_json_schemas(api: Any) -> None:
    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        # `true`: any JSON value, as a JSON boolean or as JSON text.
        for schema in (True, "true"):
            finished_json(await client.post("/v1/generate", json={
                "prompt": PROMPTS[:3], "temperature": 1.0, "max_tokens": 60, "seed": 5,
                "structured_outputs": {"json": schema}}))
        # An integer is not a schema (no lax int -> bool coercion).
        one = await client.post("/v1/generate", json={"prompt": "x", "guided_json": 1})
        assert one.status_code in (400, 422), one.text
        # `false`: nothing can be generated; refused before anything is queued.
        nothing = await client.post("/v1/generate", json={"prompt": "x",
                                                          "guided_json": "false"})
        assert nothing.status_code == 400, nothing.text
        assert nothing.json()["error"]["param"] == "guided_json"
        assert "`false` admits no value" in nothing.json()["error"]["message"]
        # Booleans inside a schema: `true` admits anything there, `false` the key never.
        nested = {"type": "object", "properties": {"a": {"type": "integer"}, "b": False,
                                                   "c": True},
                  "required": ["a"], "additionalProperties": False}
        r = await client.post("/v1/generate", json={
            "prompt": PROMPTS[:5], "temperature": 1.0, "max_tokens": 60, "seed": 6,
            "structured_outputs": {"json": nested}})
        assert all('"b"' not in x["text"] for x in r.json()["results"]), r.text
        for value in finished_json(r):
            assert isinstance(value["a"], int) and set(value) <= {"a", "c"}, value

    api(body, models=MODELS)


def compiles_running(checker_pid: int | None) -> list[str]:
    """Threads inside app.structured* code, and this process's children running
    app.structured_check other than the compiler's current (idle) one."""
    frames = sys._current_frames()
    busy = []
    for thread in threading.enumerate():
        frame = frames.get(thread.ident or -1)
        while frame is not None:
            if Path(frame.f_code.co_filename).name.startswith("structured"):
                busy.append(f"thread {thread.name}")
                break
            frame = frame.f_back
    busy += [f"process {pid}" for pid in checker_children() if pid != checker_pid]
    return busy


def checker_children() -> list[int]:
    """This process's child processes running app.structured_check."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[2])
            if ppid == os.getpid() and b"app.structured_check" in (
                    proc / "cmdline").read_bytes():
                found.append(int(proc.name))
    return found


def checker_pid(app: FastAPI) -> int | None:
    compiler = app.state.server.models["default-lm"].compiler
    return None if compiler is None else compiler.checker_pid


def test_a_pathological_schema_is_stopped_at_the_time_limit(api: Any) -> None:
    # Thousands of optional properties: llguidance's compile time grows with the square
    # of their number (10,000 compile, without error, in about 20 s on one core here;
    # none of its work limits, LLParserLimits, stops them).
    schema = {"type": "object",
              "properties": {f"p{i}": {"type": "integer"} for i in range(10000)}}

    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        # The first new constraint starts the compile check's child process.
        warm = await client.post("/v1/generate", json={"prompt": "x", "max_tokens": 2,
                                                       "guided_regex": "[ab]+"})
        assert warm.status_code == 200, warm.text
        killed = checker_pid(app)
        start = time.monotonic()
        r = await client.post("/v1/generate", json={"prompt": "x", "guided_json": schema})
        elapsed = time.monotonic() - start
        assert r.status_code == 400, r.text
        assert "to compile (--structured-output-timeout)" in r.json()["error"]["message"]
        assert elapsed < 1.0 + 2.0, elapsed  # the limit, and slack for a loaded machine
        # Nothing compiles on after the 400: its child is gone, a fresh one waits.
        fresh = checker_pid(app)
        assert fresh not in (None, killed) and killed not in checker_children()
        assert compiles_running(fresh) == []
        # ... and compiles the next new constraint.
        after = await client.post("/v1/generate", json={
            "prompt": "x", "max_tokens": 2, "guided_json": {"type": "integer"}})
        assert after.status_code == 200, after.text
        assert checker_pid(app) == fresh

    api(body, models=MODELS, structured_output_timeout=1.0)


def test_concurrent_new_constraints_share_one_child_stopped_with_the_server(
        api: Any) -> None:
    async def body(app: FastAPI, client: httpx.AsyncClient) -> int | None:
        first = await client.post("/v1/generate", json={"prompt": "x", "max_tokens": 2,
                                                        "guided_regex": "[ab]+"})
        assert first.status_code == 200, first.text
        pid = checker_pid(app)
        rs = await asyncio.gather(*(client.post("/v1/generate", json={
            "prompt": "x", "max_tokens": 3, "structured_outputs": {"json": {
                "type": "object", "properties": {f"k{i}": {"type": "integer"}}}}})
            for i in range(8)))
        assert [r.status_code for r in rs] == [200] * 8, [r.text for r in rs]
        assert pid is not None and checker_pid(app) == pid  # one child, reused
        return pid

    pid = api(body, models=MODELS)
    assert checker_children() == []  # the app stopped: so did its child (and was reaped)
    assert not Path(f"/proc/{pid}").exists()
