"""/metrics moves by the right amounts after known requests; the exposition is valid."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from typing import Any

import httpx
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from app import app_version
from app.sampling_params import SamplingParams
from tests.app_helpers import running_app, settings_for
from tests.helpers import require_tool
from tests.waiting import until


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def get_metrics(client: httpx.AsyncClient) -> dict[Any, float]:
    r = await client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return scrape(r.text)


def test_counters_and_histograms_move_by_known_amounts(api: Any) -> None:
    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        before = await get_metrics(client)
        req = {"prompt": "hello world", "max_tokens": 5, "ignore_eos": True}
        results = await asyncio.gather(*(client.post("/v1/generate", json=req)
                                         for _ in range(3)))
        assert all(r.status_code == 200 for r in results)
        after = await get_metrics(client)

        def delta(name: str, **labels: str) -> float:
            return value(after, name, **labels) - value(before, name, **labels)

        assert delta("llm_generation_tokens_total", model="lm") == 15
        prompt = results[0].json()["usage"]["prompt_tokens"]
        assert delta("llm_prompt_tokens_total", model="lm") == 3 * prompt
        assert delta("llm_time_to_first_token_seconds_count", model="lm") == 3
        assert delta("llm_e2e_request_latency_seconds_count", model="lm") == 3
        # one inter-token gap per step that gave a request tokens after its first: 4
        # steps each, or fewer where multi-step decoding gave several tokens at once
        assert 3 <= delta("llm_inter_token_latency_seconds_count", model="lm") <= 3 * 4
        assert delta("llm_time_per_output_token_seconds_count", model="lm") == 3
        assert delta("llm_requests_finished_total", model="lm", finish_reason="length") == 3
        assert delta("llm_request_generation_tokens_sum", model="lm") == 15
        assert delta("llm_http_requests_total", endpoint="/v1/generate", method="POST",
                     status="200") == 3
        assert delta("llm_http_request_duration_seconds_count", endpoint="/v1/generate",
                     method="POST") == 3
        assert value(after, "llm_kv_cache_usage_ratio", model="lm") == 0
        assert value(after, "llm_kv_cache_blocks_used", model="lm") == 0
        assert value(after, "llm_kv_cache_blocks", model="lm") == 256
        assert value(after, "llm_requests_running", model="lm") == 0
        assert value(after, "llm_model_info", model="lm", architecture="LlamaForCausalLM",
                     dtype="float32", device="cpu", quantization="none",
                     version=app_version()) == 1
        # errors by type
        await client.post("/v1/generate", json={"prompt": "x", "model": "nope"})
        errors = await get_metrics(client)
        assert value(errors, "llm_errors_total", type="not_found_error") == 1

    api(body)


def test_rejections_aborts_and_vllm_names(checkpoints: dict[str, Any]) -> None:
    async def main() -> None:
        settings = settings_for(f"lm={checkpoints['lm']}", max_num_seqs=1,
                                max_num_batched_tokens=8, max_waiting_requests=1,
                                metrics_compat="vllm")
        async with running_app(settings) as (app, client):
            req = {"prompt": "hello there", "max_tokens": 20, "ignore_eos": True}
            codes = [r.status_code for r in await asyncio.gather(
                *(client.post("/v1/generate", json=req) for _ in range(6)))]
            rejected = codes.count(429)
            assert rejected >= 1
            engine = app.state.server.models["lm"].engine
            stream = engine.submit([5, 6, 7], SamplingParams(max_tokens=50, ignore_eos=True))
            iterator = stream.__aiter__()
            await iterator.__anext__()
            await iterator.aclose()  # the consumer leaves: an abort
            await until(lambda: engine.num_requests == 0, "the aborted request to end")
            m = await get_metrics(client)
            assert value(m, "llm_admission_rejections_total", model="lm") == rejected
            assert value(m, "llm_request_aborts_total", model="lm") == 1
            assert value(m, "llm_requests_finished_total", model="lm",
                         finish_reason="abort") == 1
            assert value(m, "llm_kv_cache_blocks_used", model="lm") == 0
            # vLLM-compatible series carry the same figures
            ok = codes.count(200)
            assert value(m, "vllm:generation_tokens_total", model_name="lm") == value(
                m, "llm_generation_tokens_total", model="lm")
            assert value(m, "vllm:request_success_total", model_name="lm",
                         finished_reason="length") == ok
            assert value(m, "vllm:time_to_first_token_seconds_count", model_name="lm") == ok + 1
            for name in ("vllm:num_requests_running", "vllm:num_requests_waiting",
                         "vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc",
                         "vllm:prompt_tokens_total", "vllm:inter_token_latency_seconds_count",
                         "vllm:time_per_output_token_seconds_count",
                         "vllm:e2e_request_latency_seconds_count",
                         "vllm:request_queue_time_seconds_count",
                         "vllm:num_preemptions_total", "vllm:prefix_cache_queries_total",
                         "vllm:prefix_cache_hits_total"):
                assert any(key[0] == name for key in m), name

    asyncio.run(main())


def test_promtool_accepts_the_exposition(api: Any) -> None:
    promtool = shutil.which("promtool") or ""
    require_tool("promtool", bool(promtool),
                 "`make tools` installs Debian's prometheus package (needs root and apt)")

    async def body(app: FastAPI, client: httpx.AsyncClient) -> str:
        await client.post("/v1/generate", json={"prompt": "hi", "max_tokens": 3})
        await client.post("/v1/classify", json={"text": "hi"})
        return (await client.get("/metrics")).text

    text = api(body)
    run = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    # vLLM's names contain ':' (reserved by convention for recording rules): that is the
    # only thing promtool may object to in the compatibility exposition.
    compat = api(body, metrics_compat="vllm")
    run = subprocess.run([promtool, "check", "metrics"], input=compat, capture_output=True,
                         text=True)
    problems = [line for line in (run.stdout + run.stderr).splitlines() if line.strip()]
    assert problems and all("should not contain ':'" in line for line in problems), problems
