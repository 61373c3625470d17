"""Structured output with the shipped default-lm at temperature 1.0: JSON Schema, regex and
choice constraints always hold; bad constraints get 400 before anything is queued."""

from __future__ import annotations

import json
import re
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
