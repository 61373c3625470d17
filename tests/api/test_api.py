"""Every endpoint through the ASGI app: results against the reference model, streaming,
and every error status."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import torch
from fastapi import FastAPI

from tests.app_helpers import running_app, settings_for


def sse_events(text: str) -> list[Any]:
    events = [line[len("data: "):] for line in text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_predict_equals_softmax_of_reference(api: Any, hf_checkpoint: Any, tokenizer: Any
                                             ) -> None:
    _, ref = hf_checkpoint("llama_gqa_llama3")
    text = "The quick brown fox"

    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        r = await client.post("/v1/predict", json={"text": text, "top_k": 5})
        assert r.status_code == 200, r.text
        data = r.json()
        with torch.no_grad():
            probs = torch.softmax(ref(torch.tensor([tokenizer.encode(text)])).logits[0, -1], -1)
        values, ids = torch.topk(probs, 5)
        got = data["predictions"]
        assert [p["token_id"] for p in got] == ids.tolist()
        assert max(abs(p["prob"] - v) for p, v in zip(got, values.tolist(), strict=True)) < 1e-5
        assert data["argmax"]["token_id"] == int(probs.argmax())
        assert data["model"] == "lm" and data["usage"]["prompt_tokens"] == len(
            tokenizer.encode(text))
        full = (await client.post("/v1/predict", json={
            "text": [text, "hello"], "full_distribution": True, "top_k": 2})).json()
        assert len(full["results"]) == 2
        dist = full["results"][0]["distribution"]
        assert len(dist) == tokenizer.vocab_size and abs(sum(dist) - 1) < 1e-4
        assert max(abs(a - b) for a, b in zip(dist, probs.tolist(), strict=True)) < 1e-5

    api(body)


def test_generate_whole_and_streamed_agree(api: Any) -> None:
    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        req = {"prompt": "def add(a, b):", "max_tokens": 12, "temperature": 0,
               "ignore_eos": True, "return_tokens": True}
        whole = (await client.post("/v1/generate", json=req)).json()
        assert whole["finish_reason"] == "length" and len(whole["results"][0]["tokens"]) == 12
        assert whole["usage"]["completion_tokens"] == 12
        r = await client.post("/v1/generate", json={**req, "stream": True})
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r.text)
        text = "".join(e.get("text", "") for e in events if "text" in e)
        assert text == whole["text"]
        assert events[-1]["usage"]["completion_tokens"] == 12
        assert [e["finish_reason"] for e in events if "text" in e][-1] == "length"
        # several prompts, n > 1, logprobs
        many = (await client.post("/v1/generate", json={
            "prompt": ["a", "b"], "n": 2, "max_tokens": 3, "seed": 3, "logprobs": True,
            "top_logprobs": 2, "ignore_eos": True})).json()
        assert [(x["prompt_index"], x["index"]) for x in many["results"]] == [
            (0, 0), (0, 1), (1, 0), (1, 1)]
        assert all(len(x["logprobs"]) == 3 and len(x["logprobs"][0]["top_logprobs"]) == 2
                   for x in many["results"])
        assert many["usage"]["completion_tokens"] == 12

    api(body)


def test_classify_head_and_zero_shot(api: Any, hf_checkpoint: Any, tokenizer: Any) -> None:
    _, ref = hf_checkpoint("gpt2_cls")

    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        r = await client.post("/v1/classify", json={"text": ["good day", "bad"], "top_k": 2})
        data = r.json()
        assert r.status_code == 200 and data["model"] == "cls"
        with torch.no_grad():
            probs = torch.softmax(ref(torch.tensor([tokenizer.encode("good day")])).logits[0], -1)
        labels = ["negative", "neutral", "positive"]
        assert data["label"] == labels[int(probs.argmax())]
        assert abs(data["score"] - float(probs.max())) < 1e-5
        assert len(data["scores"]) == 2 and len(data["results"]) == 2
        zs = (await client.post("/v1/classify", json={
            "text": "I ate pizza", "candidate_labels": ["food", "sports", "law"]})).json()
        assert zs["model"] == "lm" and {s["label"] for s in zs["scores"]} == {
            "food", "sports", "law"}
        assert abs(sum(s["score"] for s in zs["scores"]) - 1) < 1e-6
        multi = (await client.post("/v1/classify", json={
            "text": "x", "candidate_labels": ["a", "b"], "multi_label": True})).json()
        assert all(0 < s["score"] < 1 for s in multi["scores"])
        bad = await client.post("/v1/classify", json={"text": "x", "model": "lm"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "candidate_labels"

    api(body)


def test_tokenize_detokenize_info_models_health(api: Any, tokenizer: Any) -> None:
    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        tok = (await client.post("/v1/tokenize", json={"text": "Hello 🦊"})).json()
        assert tok["tokens"] == tokenizer.encode("Hello 🦊") and tok["count"] == len(tok["tokens"])
        detok = (await client.post("/v1/detokenize", json={"tokens": tok["tokens"]})).json()
        assert detok["text"] == "Hello 🦊"
        chat = (await client.post("/v1/tokenize", json={
            "messages": [{"role": "user", "content": "hi"}]})).json()
        assert chat["count"] > 3
        info = (await client.get("/v1/info")).json()
        assert [m["name"] for m in info["models"]] == ["lm", "cls"]
        assert info["models"][1]["labels"] == ["negative", "neutral", "positive"]
        assert info["limits"]["max_tokens_limit"] == 2048 and info["phase"] == "ready"
        models = (await client.get("/v1/models")).json()
        assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["lm", "cls"]
        for path in ("/livez", "/readyz", "/startupz", "/health"):
            r = await client.get(path)
            assert r.status_code == 200 and r.json()["status"] == "ok", path
        r = await client.get("/readyz", headers={"X-Request-ID": "abc-123"})
        assert r.headers["x-request-id"] == "abc-123"
        assert len((await client.get("/livez")).headers["x-request-id"]) == 32

    api(body)


def error_of(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == status
    assert "Traceback" not in error["message"]
    return dict(error)


def test_every_error_status(api: Any) -> None:
    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        e = error_of(await client.post("/v1/generate", json={"prompt": "hi", "max_tokens": 500}),
                     400)
        assert "leaves room for at most" in e["message"] and e["param"] == "max_tokens"
        e = error_of(await client.post("/v1/generate", json={"prompt": "hi", "model": "gpt-9"}),
                     404)
        assert e["param"] == "model" and "lm, cls" in e["message"]
        error_of(await client.get("/v1/does-not-exist"), 404)
        e = error_of(await client.post("/v1/generate", json={"prompt": "hi", "top_p": 7}), 422)
        assert e["param"] == "top_p"
        e = error_of(await client.post("/v1/generate", json={"prompt": "hi", "bogus": 1}), 400)
        assert e["param"] == "bogus" and e["message"] == "unknown field 'bogus'"
        error_of(await client.post("/v1/generate", content=b"{nope",
                                   headers={"content-type": "application/json"}), 400)
        error_of(await client.post("/v1/generate", content=b"x" * 5000,
                                   headers={"content-type": "application/json"}), 413)
        error_of(await client.post("/v1/generate", json={"prompt": "hi", "n": 99}), 400)

    api(body, max_body_bytes=4096)


def test_auth(api: Any) -> None:
    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        e = error_of(await client.post("/v1/predict", json={"text": "x"}), 401)
        assert "missing API key" in e["message"]
        error_of(await client.post("/v1/predict", json={"text": "x"},
                                   headers={"Authorization": "Bearer wrong"}), 401)
        for key in ("k1", "k2"):
            r = await client.post("/v1/predict", json={"text": "x"},
                                  headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200
        assert (await client.get("/readyz")).status_code == 200  # probes stay open
        error_of(await client.get("/v1/models"), 401)

    api(body, api_key=["k1", "k2"])


def test_overload_gets_429_with_retry_after(checkpoints: dict[str, Any]) -> None:
    async def main() -> None:
        settings = settings_for(f"lm={checkpoints['lm']}", max_num_seqs=1,
                                max_num_batched_tokens=8, max_waiting_requests=2)
        async with running_app(settings) as (app, client):
            req = {"prompt": "hello there", "max_tokens": 40, "ignore_eos": True}
            results = await asyncio.gather(*(client.post("/v1/generate", json=req)
                                             for _ in range(12)))
            codes = [r.status_code for r in results]
            assert 429 in codes and 200 in codes and set(codes) <= {200, 429}
            for r in results:
                if r.status_code == 429:
                    assert int(r.headers["retry-after"]) >= 1
                    assert r.json()["error"]["type"] == "rate_limit_error"
                else:
                    assert r.json()["usage"]["completion_tokens"] == 40
            state = app.state.server
            assert state.models["lm"].engine.blocks.num_used == 0

    asyncio.run(main())


def test_not_ready_draining_and_dead_engine_get_503(api: Any) -> None:
    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        state = app.state.server
        engine = state.models["lm"].engine

        def broken(out: Any) -> None:
            raise RuntimeError("device lost")

        engine.fault_hook = broken
        e = error_of(await client.post("/v1/generate", json={"prompt": "x"}), 500)
        assert "device lost" in e["message"] and e["type"] == "inference_error"
        for _ in range(2):
            await client.post("/v1/generate", json={"prompt": "x"})
        assert engine.dead_reason is not None
        r = await client.get("/readyz")
        assert r.status_code == 503 and "device lost" in r.json()["reason"]
        e = error_of(await client.post("/v1/generate", json={"prompt": "x"}), 503)
        assert e["type"] == "engine_dead"
        # the other model still serves
        assert (await client.post("/v1/classify", json={"text": "x"})).status_code == 200
        from app.api.state import Phase

        state.phase = Phase.DRAINING
        error_of(await client.post("/v1/classify", json={"text": "x"}), 503)
        assert (await client.get("/readyz")).status_code == 503

    api(body)


def test_model_that_fails_to_load_is_reported(tmp_path: Any) -> None:
    async def main() -> None:
        async with running_app(settings_for(str(tmp_path / "missing"))) as (_app, client):
            for path in ("/startupz", "/readyz"):
                r = await client.get(path)
                assert r.status_code == 503 and "does not exist" in r.json()["reason"]
            assert (await client.get("/livez")).status_code == 200
            error_of(await client.post("/v1/generate", json={"prompt": "x"}), 503)

    asyncio.run(main())


def test_sse_event_is_one_line_for_every_line_reader() -> None:
    from app.api.serving import sse

    event = sse({"text": "a\u2028b\x85c\nd\x0be"})
    assert event.endswith("\n\n") and len(event.rstrip("\n").splitlines()) == 1
    assert json.loads(event[len("data: "):])["text"] == "a\u2028b\x85c\nd\x0be"
