"""What a router costs a replica, measured on one machine (issue 28):

  - /metrics: time and server CPU per scrape at idle and under load, and the generation
    throughput under load with the endpoint picker's 20 scrapes a second against none
    (a ratio, same run, rounds alternated);
  - vllm-router in front of one replica: per-request latency through it against the
    replica directly (a short completion, sequential, alternated), i.e. its overhead.

    python -m bench.router_metrics [--rounds 3] [--requests 40] [--metrics-max-age 1]

Two cores cannot show replicas scaling (they share the cores), so the router's overhead
per request is what it reports instead of a 1-vs-3 replica throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from bench.machine import cpu_info, cpu_line
from tests.live import LiveServer, free_port

ROOT = Path(__file__).resolve().parents[1]
MODEL = f"default-lm={ROOT / 'models' / 'default-lm'}"
LOAD_BODY = {"model": "default-lm", "prompt": "The meaning of life is", "max_tokens": 32,
             "temperature": 0, "ignore_eos": True}


def cpu_seconds(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def scrape_cost(url: str, pid: int, scrapes: int) -> tuple[float, float]:
    """(median ms per scrape, server CPU ms per scrape)."""
    times = []
    with httpx.Client(timeout=10) as client:
        cpu = cpu_seconds(pid)
        for _ in range(scrapes):
            t = time.perf_counter()
            client.get(url + "/metrics").raise_for_status()
            times.append(time.perf_counter() - t)
        cpu = cpu_seconds(pid) - cpu
    return statistics.median(times) * 1e3, cpu / scrapes * 1e3


async def load(url: str, requests: int, concurrency: int, scrape_hz: float
               ) -> tuple[float, list[float]]:
    """(generated tokens/s, scrape latencies in ms) for `requests` greedy generations."""
    queue = list(range(requests))
    scrapes: list[float] = []
    done = asyncio.Event()
    async with httpx.AsyncClient(timeout=120) as client:
        async def worker() -> int:
            tokens = 0
            while queue:
                queue.pop()
                r = await client.post(url + "/v1/completions", json=LOAD_BODY)
                tokens += r.json()["usage"]["completion_tokens"]
            return tokens

        async def scraper() -> None:
            while scrape_hz and not done.is_set():
                t = time.perf_counter()
                (await client.get(url + "/metrics")).raise_for_status()
                scrapes.append((time.perf_counter() - t) * 1e3)
                await asyncio.sleep(max(0.0, 1 / scrape_hz - (time.perf_counter() - t)))

        task = asyncio.ensure_future(scraper())
        start = time.perf_counter()
        counts = await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - start
        done.set()
        await task
    return sum(counts) / seconds, scrapes


def request_latency(url: str, n: int) -> list[float]:
    body = {"model": "default-lm", "prompt": "Hello", "max_tokens": 1, "temperature": 0}
    out = []
    with httpx.Client(timeout=30) as client:
        for _ in range(n):
            t = time.perf_counter()
            client.post(url + "/v1/completions", json=body).raise_for_status()
            out.append((time.perf_counter() - t) * 1e3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--metrics-max-age", type=float, default=0.0,
                        help="the server's --metrics-max-age (0: every scrape formats all)")
    args = parser.parse_args()
    print(cpu_line(cpu_info()))
    with LiveServer("--model", MODEL, "--metrics-compat", "vllm", "--threads", "1",
                    "--metrics-max-age", str(args.metrics_max_age)) as live:
        print(f"server: --metrics-compat vllm --metrics-max-age {args.metrics_max_age}")
        pid = live.proc.pid
        ms, cpu_ms = scrape_cost(live.url, pid, 200)
        print(f"/metrics at idle: {ms:.2f} ms per scrape (median of 200), server CPU "
              f"{cpu_ms:.2f} ms per scrape -> {20 * cpu_ms / 10:.1f} % of one core at 20/s")
        plain, scraped, under = [], [], []
        for _ in range(args.rounds):
            rate, _ = asyncio.run(load(live.url, args.requests, 4, 0))
            plain.append(rate)
            rate, scrapes = asyncio.run(load(live.url, args.requests, 4, 20))
            scraped.append(rate)
            under.extend(scrapes)
        print(f"/metrics under load (4 concurrent generations): {statistics.median(under):.2f}"
              f" ms per scrape (median of {len(under)})")
        a, b = statistics.median(scraped), statistics.median(plain)
        print(f"tokens/s with 20 scrapes/s vs none: {a:.1f} vs {b:.1f} = {a / b:.3f}x "
              f"(medians of {args.rounds} alternated rounds)")
        router = shutil.which("vllm-router", path=str(Path(sys.executable).parent))
        if router is None:
            print("vllm-router not installed (pip install -r requirements-dev.txt): router "
                  "overhead not measured")
            return
        port = free_port()
        proc = subprocess.Popen(
            [router, "--host", "127.0.0.1", "--port", str(port), "--policy", "round_robin",
             "--worker-urls", live.url, "--prometheus-port", str(free_port()),
             "--log-level", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            via = f"http://127.0.0.1:{port}"
            for _ in range(300):
                try:
                    if httpx.get(via + "/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
            direct, routed = [], []
            for _ in range(args.rounds):
                direct += request_latency(live.url, args.requests)
                routed += request_latency(via, args.requests)
            d, r = statistics.median(direct), statistics.median(routed)
            print(f"one-token completion, sequential: direct {d:.2f} ms, through vllm-router "
                  f"{r:.2f} ms: overhead {r - d:.2f} ms per request ({r / d:.2f}x)")
        finally:
            proc.terminate()
            proc.wait(timeout=10)


if __name__ == "__main__":
    main()
