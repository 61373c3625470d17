"""Against a real server process: the official OpenAI client, client disconnects that
abort work, and the SIGTERM drain."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.live import LiveServer
from tests.waiting import until, wait_until

ENGINE_FLAGS = ("--num-kv-blocks", "512", "--block-size", "4", "--max-num-seqs", "16",
                "--max-num-batched-tokens", "64")


@pytest.fixture(scope="module")
def server(hf_checkpoint: Any) -> Any:
    lm, _ = hf_checkpoint("llama_gqa_llama3")
    with LiveServer("--model", f"tiny={lm}", *ENGINE_FLAGS) as live:
        yield live


def engine_load(url: str) -> dict[str, int]:
    info = httpx.get(url + "/v1/info").json()["models"][0]
    return {k: info[k] for k in ("running_requests", "waiting_requests", "kv_blocks_used")}


def wait_idle(url: str, timeout: float = 30.0) -> None:
    idle = {"running_requests": 0, "waiting_requests": 0, "kv_blocks_used": 0}
    wait_until(lambda: engine_load(url) == idle, "the engine to be idle", timeout)


def finished_by_reason(url: str) -> dict[str, float]:
    counts: dict[str, float] = {}
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("llm_requests_finished_total{"):
            reason = line.split('finish_reason="')[1].split('"')[0]
            counts[reason] = float(line.split()[-1])
    return counts


def test_openai_client(server: LiveServer) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key="unused")
    assert [m.id for m in client.models.list().data] == ["tiny"]
    done = client.completions.create(model="tiny", prompt="Hello", max_tokens=5, temperature=0,
                                     extra_body={"ignore_eos": True})
    assert done.choices[0].finish_reason == "length" and done.usage.completion_tokens == 5
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="tiny", prompt="Hello", max_tokens=5, temperature=0, stream=True,
        extra_body={"ignore_eos": True}) if c.choices)
    assert streamed == done.choices[0].text
    chat = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=6,
        temperature=0, logprobs=True, top_logprobs=2, extra_body={"ignore_eos": True})
    assert chat.choices[0].message.role == "assistant"
    assert chat.usage.completion_tokens == 6 and len(chat.choices[0].logprobs.content) == 6
    chunks = list(client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=6,
        temperature=0, stream=True, stream_options={"include_usage": True},
        extra_body={"ignore_eos": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == chat.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
    from openai import NotFoundError

    with pytest.raises(NotFoundError):
        client.completions.create(model="nope", prompt="x", max_tokens=1)


def test_openai_client_embeddings_echo_and_token_ids(server: LiveServer) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key="unused")
    # The client asks for base64 unless told otherwise, and decodes it itself.
    packed = client.embeddings.create(model="tiny", input=["hello there", "general"])
    plain = client.embeddings.create(model="tiny", input=["hello there", "general"],
                                     encoding_format="float")
    ids = client.embeddings.create(model="tiny", input=[[5, 6, 7]])
    assert len(ids.data) == 1 and ids.usage.prompt_tokens == 3
    assert [d.index for d in packed.data] == [0, 1]
    for a, b in zip(packed.data, plain.data, strict=True):
        assert a.embedding == pytest.approx(b.embedding, abs=1e-6)
        assert sum(v * v for v in a.embedding) == pytest.approx(1.0, abs=1e-4)
    assert packed.usage.prompt_tokens == plain.usage.prompt_tokens > 2
    scored = client.completions.create(model="tiny", prompt=[[5, 17, 42, 99]], max_tokens=1,
                                       temperature=0, logprobs=1, echo=True)
    lp = scored.choices[0].logprobs
    assert lp.token_logprobs[0] is None and len(lp.token_logprobs) == 5
    assert all(isinstance(v, float) for v in lp.token_logprobs[1:])
    assert lp.text_offset[0] == 0 and scored.usage.prompt_tokens == 4
    many = client.completions.create(model="tiny", prompt=[[5, 6], [7, 8, 9]], max_tokens=2,
                                     temperature=0, extra_body={"ignore_eos": True})
    assert sorted(c.index for c in many.choices) == [0, 1]
    assert many.usage.prompt_tokens == 5 and many.usage.completion_tokens == 4


def test_an_idle_connection_outlives_a_client_keep_alive(server: LiveServer) -> None:
    """A connection a client keeps for its default 5 s (httpx, the OpenAI SDK) is still
    open when the client reuses it: uvicorn's own default (5 s) closed it just then,
    and the request failed (httpx.ReadError)."""
    with httpx.Client(base_url=server.url, limits=httpx.Limits(keepalive_expiry=30)) as c:
        first = c.get("/v1/models")
        time.sleep(6.0)
        second = c.get("/v1/models")
        assert first.status_code == second.status_code == 200
        # the same connection (the same local port), not a new one opened after the
        # server closed the first (with --keep-alive-timeout 5 this fails here)
        ports = [r.extensions["network_stream"].get_extra_info("client_addr")
                 for r in (first, second)]
        assert ports[0] == ports[1]


def test_client_disconnects_abort_their_requests(server: LiveServer) -> None:
    long_req = {"prompt": "Once upon a time", "max_tokens": 230, "ignore_eos": True,
                "temperature": 1.0}

    async def streaming_then_leave(client: httpx.AsyncClient) -> None:
        async with client.stream("POST", "/v1/generate", json={**long_req, "stream": True}
                                 ) as r:
            async for line in r.aiter_lines():
                if line.startswith("data:"):
                    break  # got a token: leave mid-stream

    async def waiting_then_leave(client: httpx.AsyncClient) -> None:
        # 230 engine steps take longer than 0.1 s on any CPU (a fast one, AMD Zen 5, ran
        # them within the 0.3 s this used to allow): the client leaves mid-generation
        with pytest.raises(httpx.ReadTimeout):
            await client.post("/v1/generate", json=long_req, timeout=0.1)

    async def main() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            await asyncio.gather(*(streaming_then_leave(client) for _ in range(12)),
                                 *(waiting_then_leave(client) for _ in range(4)))

    aborted_before = finished_by_reason(server.url).get("abort", 0.0)
    asyncio.run(main())
    # Every one of the 16 was aborted when its client left (none ran its 230 tokens for
    # nobody), and every block came back.
    wait_idle(server.url)
    assert finished_by_reason(server.url).get("abort", 0.0) - aborted_before == 16
    ok = httpx.post(server.url + "/v1/generate", json={"prompt": "hi", "max_tokens": 3},
                    timeout=30)
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] <= 3


def test_sigterm_drains_in_flight_streams(hf_checkpoint: Any, tmp_path: Path) -> None:
    lm, _ = hf_checkpoint("llama_gqa_llama3")
    # A generous drain timeout: the streams finish as soon as they can, and a slow or busy
    # machine must not cut them off (the drain ends when they do, not at the timeout).
    live = LiveServer("--model", f"tiny={lm}", *ENGINE_FLAGS, "--drain-timeout", "120")
    with live:
        async def stream_all(client: httpx.AsyncClient) -> tuple[str, int]:
            async with client.stream("POST", "/v1/generate", json={
                    "prompt": "Once", "max_tokens": 200, "ignore_eos": True,
                    "stream": True, "return_tokens": True}) as r:
                events = [line async for line in r.aiter_lines() if line.startswith("data:")]
            # tokens delivered: a reader that lags gets several in one event (the engine
            # merges a stream's pending outputs, app/engine/stream.py), so count tokens
            delivered = sum(len(json.loads(e[5:]).get("tokens") or []) for e in events[:-1])
            return events[-1], delivered

        async def main() -> list[tuple[str, int]]:
            async with httpx.AsyncClient(base_url=live.url, timeout=60) as client:
                tasks = [asyncio.ensure_future(stream_all(client)) for _ in range(8)]
                await until(lambda: engine_load(live.url)["running_requests"] == 8,
                            "8 streams to run")
                live.terminate()

                async def draining() -> bool:
                    return (await client.get("/readyz")).status_code == 503

                await until(draining, "readiness to turn 503 after SIGTERM")
                ready = await client.get("/readyz")
                assert ready.json()["phase"] == "draining"
                refused = await client.post("/v1/generate", json={"prompt": "x"})
                assert refused.status_code == 503
                return await asyncio.gather(*tasks)

        results = asyncio.run(main())
        assert live.proc.wait(timeout=180) == 0
    for last, delivered in results:
        assert last == "data: [DONE]" and delivered == 200  # every token, then [DONE]


def test_server_runs_under_python_optimize(hf_checkpoint: Any) -> None:
    """`python -O` strips asserts: nothing the server needs may happen inside one."""
    lm, _ = hf_checkpoint("llama_gqa_llama3")
    cls, _ = hf_checkpoint("gpt2_cls")
    with LiveServer("--model", f"tiny={lm}", "--model", f"cls={cls}", *ENGINE_FLAGS,
                    env={"PYTHONOPTIMIZE": "1"}) as live:
        r = httpx.post(live.url + "/v1/generate", json={
            "prompt": "hello", "max_tokens": 6, "ignore_eos": True, "n": 2}, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 12
        for path, body in (("/v1/predict", {"text": "hello"}),
                           ("/v1/classify", {"model": "cls", "text": "hello"}),
                           ("/v1/classify", {"text": "hello", "candidate_labels": ["a", "b"]})):
            assert httpx.post(live.url + path, json=body, timeout=60).status_code == 200
        wait_idle(live.url)


def test_schemathesis_finds_no_5xx_and_no_schema_violation(hf_checkpoint: Any,
                                                            tmp_path: Path) -> None:
    """Property-based fuzzing of every operation in /openapi.json (bounded for CI; the
    `make fuzz` target runs thousands of examples)."""
    import os
    import subprocess
    import sys

    lm, _ = hf_checkpoint("llama_gqa_llama3")
    cls, _ = hf_checkpoint("gpt2_cls")
    examples = os.environ.get("FUZZ_EXAMPLES", "8")
    with LiveServer("--model", f"tiny={lm}", "--model", f"cls={cls}", *ENGINE_FLAGS) as live:
        st = Path(sys.executable).with_name("schemathesis")
        run = subprocess.run(
            [str(st), "run", live.url + "/openapi.json", "--checks",
             "not_a_server_error,response_schema_conformance,status_code_conformance,"
             "content_type_conformance", "--max-examples", examples, "--seed", "7",
             "--no-shrink", "--request-timeout", "60"],
            # Its example cache (.schemathesis/) goes to a temporary directory, not the repo.
            cwd=tmp_path, capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
        assert "passed" in run.stdout
