"""What routers and the Gateway API Inference Extension's endpoint picker read from a
replica: SGLang's /get_load, /get_model_info, /get_server_info, vLLM's /server_info, and
vLLM's info series vllm:cache_config_info and vllm:lora_requests_info."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from app.sampling_params import SamplingParams
from tests.api.test_metrics import get_metrics, value
from tests.app_helpers import running_app, settings_for
from tests.waiting import until


def test_load_and_server_info_follow_the_engine(checkpoints: dict[str, Any]) -> None:
    async def main() -> None:
        settings = settings_for(f"lm={checkpoints['lm']}", f"cls={checkpoints['cls']}",
                                metrics_compat="vllm", api_key=["k-secret-1"])
        async with running_app(settings) as (app, client):
            assert (await client.get("/get_load")).status_code == 401  # keyed like the API
            client.headers["authorization"] = "Bearer k-secret-1"
            idle = (await client.get("/get_load")).json()
            assert idle == [{"dp_rank": 0, "num_reqs": 0, "num_waiting_reqs": 0,
                             "num_tokens": 0}]
            engine = app.state.server.models["lm"].engine
            stream = engine.submit(list(range(5, 25)), SamplingParams(max_tokens=200,
                                                                      ignore_eos=True))
            iterator = stream.__aiter__()
            await iterator.__anext__()  # running, holding KV blocks
            busy = (await client.get("/get_load")).json()[0]
            assert busy["num_reqs"] == 1 and busy["num_tokens"] >= 16, busy
            await iterator.aclose()
            await until(lambda: engine.num_requests == 0, "the request to end")

            info = (await client.get("/server_info", params={"config_format": "json"})).json()
            config = info["vllm_config"]
            assert config["model_config"]["model"] == "lm"
            assert config["cache_config"]["block_size"] == settings.block_size
            assert config["cache_config"]["num_gpu_blocks"] == engine.stats().kv_blocks_total
            assert "k-secret-1" not in str(info) and "api_key" not in info["server_args"]
            assert (await client.get("/get_server_info")).json()["vllm_config"] == config
            model = (await client.get("/get_model_info")).json()
            assert model["is_generation"] and model["model_path"] == str(checkpoints["lm"])

            before = time.time()
            m = await get_metrics(client)
            assert value(m, "vllm:cache_config_info", model_name="lm",
                         block_size=str(settings.block_size),
                         num_gpu_blocks=str(engine.stats().kv_blocks_total),
                         enable_prefix_caching="True", cache_dtype="float32") == 1
            # no adapters; the value is the time of the reading (the picker keeps the newest)
            stamp = value(m, "vllm:lora_requests_info", model_name="lm", max_lora="0",
                          running_lora_adapters="", waiting_lora_adapters="")
            assert before - 5 <= stamp <= time.time() + 5

    asyncio.run(main())


def test_metrics_max_age_reuses_counters_never_gauges(checkpoints: dict[str, Any]) -> None:
    """--metrics-max-age: within it a scrape reuses the formatted counters and histograms,
    but the engine's gauges (what routers balance on) are read at every scrape."""

    async def main() -> None:
        settings = settings_for(f"lm={checkpoints['lm']}", metrics_compat="vllm",
                                metrics_max_age=30)
        async with running_app(settings) as (app, client):
            first = await get_metrics(client)
            engine = app.state.server.models["lm"].engine
            stream = engine.submit(list(range(5, 25)), SamplingParams(max_tokens=200,
                                                                      ignore_eos=True))
            iterator = stream.__aiter__()
            await iterator.__anext__()  # running now
            during = await get_metrics(client)
            assert value(during, "vllm:num_requests_running", model_name="lm") == 1
            assert value(during, "llm_requests_running", model="lm") == 1
            # the counter of /metrics requests is the one formatted 30 s ago (max age)
            assert value(during, "llm_http_requests_total", endpoint="/metrics", method="GET",
                         status="200") == value(first, "llm_http_requests_total",
                                                endpoint="/metrics", method="GET",
                                                status="200")
            await iterator.aclose()
            await until(lambda: engine.num_requests == 0, "the request to end")
            app.state.metrics._cached = None  # as if max_age had passed
            after = await get_metrics(client)
            assert value(after, "llm_http_requests_total", endpoint="/metrics", method="GET",
                         status="200") >= 2
            assert value(after, "llm_requests_running", model="lm") == 0

    asyncio.run(main())
