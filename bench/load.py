"""Bounded load generator for a running server (loopback only).

    python -m bench.load --url http://127.0.0.1:8000 --requests 300 --concurrency 16

A fixed number of requests (and a time limit), a mix of endpoints (streaming and plain
generate, predict, classify, chat), varied prompt lengths and max_tokens, and a share of
clients that disconnect early. Reports requests/s, tokens/s, TTFT and end-to-end
percentiles, and counts by status; then checks through /metrics that the server is back
to zero running and waiting requests and zero used KV blocks. Exit status 1 if not.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import httpx
from prometheus_client.parser import text_string_to_metric_families

WORDS = ("the quick brown fox jumps over a lazy dog while computers hum and people "
         "write programs about science politics love food and the stars").split()
MIX = (("generate_stream", 0.3), ("generate", 0.2), ("predict", 0.15), ("classify", 0.15),
       ("chat", 0.2))


@dataclass
class Result:
    kind: str
    status: int
    seconds: float
    ttft: float | None = None
    tokens: int = 0
    disconnected: bool = False


@dataclass
class Report:
    results: list[Result] = field(default_factory=list)
    wall: float = 0.0
    idle_after: dict[str, float] = field(default_factory=dict)
    idle_ok: bool = False

    def percentiles(self, values: list[float]) -> dict[str, float]:
        if not values:
            return {}
        ordered = sorted(values)

        def pick(q: float) -> float:
            return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

        return {"p50": pick(0.5), "p95": pick(0.95), "p99": pick(0.99)}

    def summary(self) -> dict[str, Any]:
        done = [r for r in self.results if not r.disconnected]
        return {
            "requests": len(self.results),
            "wall_s": round(self.wall, 2),
            "requests_per_s": round(len(self.results) / self.wall, 2) if self.wall else 0,
            "tokens_per_s": round(sum(r.tokens for r in done) / self.wall, 1)
            if self.wall else 0,
            "status": dict(Counter(str(r.status) for r in self.results)),
            "disconnected": sum(r.disconnected for r in self.results),
            "ttft_s": self.percentiles([r.ttft for r in done if r.ttft is not None]),
            "e2e_s": self.percentiles([r.seconds for r in done if r.status == 200]),
            "server_idle_after": self.idle_after,
            "server_idle_ok": self.idle_ok,
        }


def require_loopback(url: str) -> None:
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise SystemExit(f"refusing to send load to {host!r}: loopback addresses only")


def text(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


async def one(client: httpx.AsyncClient, kind: str, rng: random.Random,
              disconnect: bool, max_words: int = 120) -> Result:
    prompt = text(rng, rng.choice([n for n in (3, 10, 40, 120) if n <= max_words] or [3]))
    max_tokens = rng.randint(4, 48)
    start = time.perf_counter()
    try:
        if kind in ("generate_stream", "chat"):
            body: dict[str, Any] = (
                {"prompt": prompt, "max_tokens": max_tokens, "stream": True}
                if kind == "generate_stream" else
                {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
                 "stream": True, "stream_options": {"include_usage": True}})
            path = "/v1/generate" if kind == "generate_stream" else "/v1/chat/completions"
            ttft, tokens, leave_after = None, 0, rng.randint(1, 4)
            async with client.stream("POST", path, json=body) as r:
                if r.status_code != 200:
                    await r.aread()
                    return Result(kind, r.status_code, time.perf_counter() - start)
                events = 0
                async for line in r.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    events += 1
                    if ttft is None:
                        ttft = time.perf_counter() - start
                    try:
                        payload = json.loads(line[6:])
                    except json.JSONDecodeError:  # a malformed event: a protocol error
                        return Result(kind, -2, time.perf_counter() - start, ttft)
                    tokens = payload.get("usage", {}).get("completion_tokens", tokens)
                    if disconnect and events >= leave_after:
                        return Result(kind, 200, time.perf_counter() - start, ttft,
                                      disconnected=True)
            return Result(kind, 200, time.perf_counter() - start, ttft, tokens)
        if kind == "generate":
            r = await client.post("/v1/generate", json={"prompt": prompt,
                                                        "max_tokens": max_tokens},
                                  timeout=0.2 if disconnect else None)
            tokens = r.json().get("usage", {}).get("completion_tokens", 0) if r.is_success else 0
        elif kind == "predict":
            r = await client.post("/v1/predict", json={"text": prompt, "top_k": 5})
            tokens = 0
        else:
            r = await client.post("/v1/classify", json={"text": prompt})
            tokens = 0
        return Result(kind, r.status_code, time.perf_counter() - start, tokens=tokens)
    except httpx.TimeoutException:
        return Result(kind, 0, time.perf_counter() - start, disconnected=True)
    except httpx.HTTPError:
        return Result(kind, -1, time.perf_counter() - start)


def engine_load(metrics_text: str) -> dict[str, float]:
    load: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name in ("llm_requests_running", "llm_requests_waiting",
                           "llm_kv_cache_blocks_used"):
            load[family.name] = sum(s.value for s in family.samples)
    return load


async def run_load(url: str, requests: int, concurrency: int, duration: float,
                   disconnect_fraction: float, seed: int, api_key: str | None = None,
                   max_words: int = 120) -> Report:
    require_loopback(url)
    rng = random.Random(seed)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    kinds = [k for k, _ in MIX]
    weights = [w for _, w in MIX]
    plan = [(rng.choices(kinds, weights)[0], rng.random() < disconnect_fraction)
            for _ in range(requests)]
    report = Report()
    deadline = time.perf_counter() + duration
    queue: asyncio.Queue[tuple[str, bool]] = asyncio.Queue()
    for item in plan:
        queue.put_nowait(item)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as client:

        async def worker(worker_seed: int) -> None:
            local = random.Random(worker_seed)
            while not queue.empty() and time.perf_counter() < deadline:
                kind, disconnect = queue.get_nowait()
                report.results.append(await one(client, kind, local, disconnect, max_words))

        start = time.perf_counter()
        await asyncio.gather(*(worker(seed * 1000 + i) for i in range(concurrency)))
        report.wall = time.perf_counter() - start
        # The server must come back to zero work and zero used blocks.
        for _ in range(100):
            load = engine_load((await client.get("/metrics")).text)
            report.idle_after = load
            if load and all(v == 0 for v in load.values()):
                report.idle_ok = True
                break
            await asyncio.sleep(0.1)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=300, help="time limit, seconds")
    parser.add_argument("--disconnect-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--api-key")
    parser.add_argument("--max-prompt-words", type=int, default=120,
                        help="longest prompt (prompts are 3, 10, 40 or 120 words)")
    args = parser.parse_args()
    report = asyncio.run(run_load(args.url, args.requests, args.concurrency, args.duration,
                                  args.disconnect_fraction, args.seed, args.api_key,
                                  args.max_prompt_words))
    summary = report.summary()
    print(json.dumps(summary, indent=2))
    errors = sum(n for status, n in summary["status"].items() if status.startswith("5"))
    sys.exit(0 if report.idle_ok and errors == 0 else 1)


if __name__ == "__main__":
    main()

