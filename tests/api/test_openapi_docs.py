"""/docs and /redoc work offline (every asset served here, no external URL), and the
OpenAPI schema documents what each route really does: a 200 example that validates
against its schema (a streamed one that matches the real stream), only the statuses it
can return, and the bearer scheme when the server has API keys."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import jsonschema
from fastapi import FastAPI

from tests.api.test_request_contracts import strict, strict_events

ROOT = Path(__file__).resolve().parents[2]
MODELS = [f"default-lm={ROOT / 'models' / 'default-lm'}"]
KEY = "sk-docs-test"
INFERENCE = {"400", "404", "413", "422", "429", "500", "503"}
TOKENIZER = {"400", "404", "413", "422", "503"}
# The statuses each operation may document besides 200 (and 401 when keyed).
EXPECTED: dict[tuple[str, str], set[str]] = {
    **{("post", p): INFERENCE for p in (
        "/v1/predict", "/v1/generate", "/v1/classify", "/v1/completions",
        "/v1/chat/completions", "/v1/embeddings", "/v1/perplexity", "/v1/responses")},
    **{(m, "/v1/responses/{response_id}"): {"404"} for m in ("get", "delete")},
    **{("post", p): TOKENIZER for p in ("/v1/tokenize", "/v1/detokenize", "/tokenize",
                                         "/detokenize")},
    ("get", "/tokenizer_info"): {"404", "503"},
    ("get", "/v1/models"): set(), ("get", "/v1/info"): set(),
    ("get", "/livez"): set(), ("get", "/metrics"): set(),
    # Anthropic's routes answer a body that fails the schema with 400, not 422
    ("post", "/v1/messages"): INFERENCE - {"422"},
    ("post", "/v1/messages/count_tokens"): TOKENIZER - {"422"},
    **{("get", p): {"503"} for p in ("/startupz", "/readyz", "/health")},
    ("get", "/get_load"): set(),
    # vLLM's runtime LoRA endpoints (404 also when runtime loading is off)
    **{("post", p): {"400", "404", "413", "422", "503"} for p in (
        "/v1/load_lora_adapter", "/v1/unload_lora_adapter")},
    **{("get", p): {"503"} for p in ("/get_model_info", "/server_info", "/get_server_info")},
}
PUBLIC = {"/livez", "/startupz", "/readyz", "/health", "/metrics"}
# The requests that made the examples (app/api/examples.py).
STREAMED = {"/v1/generate": {"prompt": "Love is", "max_tokens": 4},
            "/v1/completions": {"prompt": "Once upon a time", "max_tokens": 3,
                                "stream_options": {"include_usage": True}},
            "/v1/chat/completions": {"messages": [{"role": "user", "content": "Tell me a joke"}],
                                     "max_tokens": 3, "stream_options": {"include_usage": True}}}


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method, path, op) for path, item in spec["paths"].items()
            for method, op in item.items()]


def examples_of(doc: dict[str, Any]) -> list[Any]:
    """A media type's examples: its one `example`, or each named one's value."""
    if "example" in doc:
        return [doc["example"]]
    return [named["value"] for named in doc["examples"].values()]


def validate(spec: dict[str, Any], schema: dict[str, Any], instance: Any) -> None:
    """Against a schema of the spec, its $refs resolved within the spec."""
    jsonschema.validate(instance, {**schema, "components": spec["components"]})


def test_docs_pages_load_every_asset_from_this_server(api: Any) -> None:
    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        for page in ("/docs", "/redoc"):
            r = await client.get(page)
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
            assert not re.search(r"https?://", r.text), re.findall(r"https?://\S+", r.text)
            assets = re.findall(r'(?:src|href)="([^"]+)"', r.text)
            assert any(a.endswith(".js") for a in assets), assets
            for asset in assets:
                assert asset.startswith("/static-docs/"), asset
                got = await client.get(asset)
                assert got.status_code == 200, asset
                assert len(got.content) > 1000, asset
                kind = {".js": "javascript", ".css": "text/css", ".png": "image/png"}[
                    Path(asset).suffix]
                assert kind in got.headers["content-type"], (asset, got.headers)
            assert "/openapi.json" in r.text
        swagger = (await client.get("/docs")).text
        # The key typed into Authorize is not kept in localStorage after the tab closes.
        assert '"persistAuthorization": false' in swagger
        assert '"validatorUrl": null' in swagger  # no call to the online validator
        assert (await client.get("/openapi.json")).status_code == 200

    api(body, models=MODELS)


def test_every_operation_has_a_200_example_that_fits_its_schema(api: Any) -> None:
    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        spec = strict((await client.get("/openapi.json")).text)
        ops = operations(spec)
        assert {(m, p) for m, p, _ in ops} == set(EXPECTED)
        for method, path, op in ops:
            content = op["responses"]["200"]["content"]
            for media, doc in content.items():
                assert ("example" in doc) != ("examples" in doc), (method, path, media)
                assert all(e.get("summary") for e in doc.get("examples", {}).values())
            if "application/json" in content:
                ok = content["application/json"]
                for example in examples_of(ok):
                    validate(spec, ok["schema"], example)
            for code, response in op["responses"].items():
                if code != "200":
                    error = response["content"]["application/json"]
                    validate(spec, error["schema"], error["example"])
                    if "code" in error["example"].get("error", {}):
                        assert error["example"]["error"]["code"] == int(code)
                    elif path.startswith("/v1/messages"):  # Anthropic's shape
                        assert error["example"]["type"] == "error", (path, code)
        metrics = spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
        real = (await client.get("/metrics")).text
        for line in metrics["text/plain"]["example"].splitlines():
            assert line.split("{")[0] in real, line

    api(body, models=MODELS)


def test_streamed_examples_are_what_the_routes_stream(api: Any) -> None:
    """The SSE examples of generate, completions and chat are real streams: strict JSON
    events ending with [DONE], with the same fields in the same order as a stream the
    route sends now."""

    def shape(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: shape(v) for k, v in value.items()}
        if isinstance(value, list):
            return [shape(v) for v in value[:1]]
        return type(value).__name__ if value is not None else None

    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        spec = strict((await client.get("/openapi.json")).text)
        for path, req in STREAMED.items():
            example = examples_of(spec["paths"][path]["post"]["responses"]["200"]["content"][
                "text/event-stream"])[0]
            documented = strict_events(example)
            assert example.endswith("data: [DONE]\n\n") and len(documented) >= 3
            r = await client.post(path, json={**req, "temperature": 0, "ignore_eos": True,
                                              "stream": True})
            assert r.status_code == 200 and r.headers["content-type"].startswith(
                "text/event-stream")
            real = strict_events(r.text)
            assert [list(e) for e in documented] == [list(e) for e in real], path
            assert [shape(e) for e in documented[1:]] == [shape(e) for e in real[1:]], path
        # And the text is the shipped model's own (greedy: the same today).
        generated = [e["text"] for e in strict_events(examples_of(spec["paths"][
            "/v1/generate"]["post"]["responses"]["200"]["content"]["text/event-stream"])[0])
                     if "text" in e]
        r = await client.post("/v1/generate", json={**STREAMED["/v1/generate"],
                                                    "temperature": 0, "stream": True})
        assert generated == [e["text"] for e in strict_events(r.text) if "text" in e]

    api(body, models=MODELS)


def test_only_statuses_a_route_can_return_and_the_bearer_scheme_with_keys(api: Any) -> None:
    async def keyed(app: FastAPI, client: httpx.AsyncClient) -> None:
        spec = strict((await client.get("/openapi.json")).text)
        scheme = spec["components"]["securitySchemes"]["bearerAuth"]
        assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
        for method, path, op in operations(spec):
            statuses = set(op["responses"]) - {"200"}
            if path in PUBLIC:
                assert "security" not in op and statuses == EXPECTED[(method, path)], path
            else:
                assert op["security"] == [{"bearerAuth": []}], path
                assert statuses == EXPECTED[(method, path)] | {"401"}, (path, statuses)
        # "Try it out" after "Authorize" sends exactly this header.
        denied = await client.get("/v1/models")
        assert denied.status_code == 401
        allowed = await client.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"})
        assert allowed.status_code == 200, allowed.text

    api(keyed, models=MODELS, api_key=[KEY])

    async def open_server(app: FastAPI, client: httpx.AsyncClient) -> None:
        spec = strict((await client.get("/openapi.json")).text)
        assert "securitySchemes" not in spec.get("components", {})
        for method, path, op in operations(spec):
            assert "security" not in op and "401" not in op["responses"], path
            assert set(op["responses"]) - {"200"} == EXPECTED[(method, path)], path
        assert "HTTPValidationError" not in json.dumps(spec)

    api(open_server, models=MODELS)


def test_chat_tool_call_examples_are_the_shipped_models_answers(api: Any) -> None:
    """The tool-call examples of chat are what default-lm answers the request example with
    tools (seed 5), whole and streamed: the same call, and the same events."""
    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        spec = strict((await client.get("/openapi.json")).text)
        op = spec["paths"]["/v1/chat/completions"]["post"]
        asked = spec["components"]["schemas"]["ChatCompletionRequest"]["examples"][1]
        assert asked["tool_choice"] == "required"
        request = {**asked, "seed": 5}
        content = op["responses"]["200"]["content"]
        whole = content["application/json"]["examples"]["tool_calls"]["value"]
        r = await client.post("/v1/chat/completions", json=request)
        assert r.status_code == 200, r.text
        real = r.json()["choices"][0]
        documented = whole["choices"][0]
        assert real["finish_reason"] == documented["finish_reason"] == "tool_calls"
        assert [c["function"] for c in real["message"]["tool_calls"]] == [
            c["function"] for c in documented["message"]["tool_calls"]]
        events = strict_events(content["text/event-stream"]["examples"]["tool_calls"]["value"])
        r = await client.post("/v1/chat/completions", json={
            **request, "stream": True, "stream_options": {"include_usage": True}})
        streamed = strict_events(r.text)
        assert [list(e) for e in events] == [list(e) for e in streamed]
        assert [[c["delta"] for c in e["choices"]] for e in events][2:] == [
            [c["delta"] for c in e["choices"]] for e in streamed][2:]

    api(body, models=MODELS)
