"""A stock vllm-router (the Rust router on PyPI) in front of three replicas of our server,
driven by the official openai client: every request the router re-serializes with its
own extension fields is served (no 4xx), answers equal the same request sent straight to
a replica, every replica gets traffic, and a replica killed under load costs nothing that
had not reached it. Short on purpose (make test); the router's overhead is measured by
bench/router_metrics.py."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import require_tool
from tests.live import LiveServer, free_port

ROOT = Path(__file__).resolve().parents[2]
MODEL = f"default-lm={ROOT / 'models' / 'default-lm'}"
# (the router is a dev dependency: requirements-dev.txt installs its binary next to python)
ROUTER = shutil.which("vllm-router", path=str(Path(sys.executable).parent)) or shutil.which(
    "vllm-router")
PROMPT = "The meaning of life is"
CHAT = [{"role": "user", "content": "Tell me a joke"}]


class Router:
    """`vllm-router --worker-urls ... --policy POLICY` on a free loopback port."""

    def __init__(self, workers: list[str], policy: str) -> None:
        assert ROUTER is not None
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path("/tmp") / f"vllm-router-{self.port}.log"
        # its Prometheus exporter needs a port of its own (the default clashes between
        # two routers)
        self.proc = subprocess.Popen(
            [ROUTER, "--host", "127.0.0.1", "--port", str(self.port), "--policy", policy,
             "--worker-urls", *workers, "--prometheus-port", str(free_port()),
             # quick recovery for the kill-and-restart test: health checked every second,
             # a worker back after one good check, its circuit retried after 2 s
             "--health-check-interval-secs", "1", "--health-success-threshold", "1",
             "--cb-timeout-duration-secs", "2", "--log-level", "warning"],
            stdout=self.log_path.open("w"), stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vllm-router exited: {self.log()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"vllm-router not ready: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text()[-4000:]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def replicas() -> Iterator[list[LiveServer]]:
    require_tool("vllm-router", ROUTER is not None,
                 "pip install -r requirements-dev.txt (vllm-router)")
    servers = [LiveServer("--model", MODEL, "--threads", "1") for _ in range(3)]
    try:
        for server in servers:
            server.wait_ready(120)
        yield servers
    finally:
        for server in servers:
            server.stop()


def served_requests(server: LiveServer) -> float:
    """Inference requests a replica has answered (its own Prometheus counter)."""
    text = httpx.get(server.url + "/metrics", timeout=10).text
    return sum(float(m) for m in re.findall(
        r'^llm_http_requests_total\{[^}]*endpoint="/v1/(?:chat/)?completions"[^}]*\} (\S+)$',
        text, re.MULTILINE))


def answers(client: Any) -> tuple[str, str, str]:
    """A completion, a chat answer and a streamed chat answer, greedy."""
    completion = client.completions.create(model="default-lm", prompt=PROMPT, max_tokens=12,
                                           temperature=0)
    chat = client.chat.completions.create(model="default-lm", messages=CHAT, max_tokens=12,
                                          temperature=0)
    stream = client.chat.completions.create(model="default-lm", messages=CHAT,
                                            max_tokens=12, temperature=0, stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    return (completion.choices[0].text, chat.choices[0].message.content or "", streamed)


@pytest.mark.parametrize("policy", ["round_robin", "cache_aware"])
def test_router_serves_what_a_replica_serves(replicas: list[LiveServer], policy: str
                                             ) -> None:
    from openai import OpenAI

    router = Router([s.url for s in replicas], policy)
    try:
        router.wait_ready()
        direct = answers(OpenAI(base_url=replicas[0].url + "/v1", api_key="unused"))
        assert direct[1] == direct[2]  # streamed chat equals whole
        before = [served_requests(s) for s in replicas]
        through = OpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0)
        for _ in range(3):  # 9 requests: round robin gives every replica 3
            assert answers(through) == direct
        gained = [served_requests(s) - b for s, b in zip(replicas, before, strict=True)]
        assert sum(gained) == 9, gained
        if policy == "round_robin":
            assert all(g > 0 for g in gained), gained
    finally:
        router.stop()


def test_a_replica_killed_mid_load_and_restarted(replicas: list[LiveServer]) -> None:
    """Replica 3 is killed while requests are in flight: only requests it was already
    serving may fail, every request sent after the kill succeeds (the router retries on the
    others and its health check takes the replica out), and once restarted on its port it
    gets traffic again. LLM_ROUTER_TEST_REQUESTS sets the load (make test-router: 400)."""
    from openai import OpenAI

    total = int(os.environ.get("LLM_ROUTER_TEST_REQUESTS", "36"))
    router = Router([s.url for s in replicas], "round_robin")
    try:
        router.wait_ready()
        client = OpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0)
        killed_at: list[float] = []
        outcomes: list[tuple[float, bool]] = []  # (sent at, succeeded)

        def one(i: int) -> None:
            sent = time.monotonic()
            try:
                client.completions.create(model="default-lm", prompt=f"{PROMPT} {i}",
                                          max_tokens=16, temperature=0)
                outcomes.append((sent, True))
            except Exception:
                outcomes.append((sent, False))

        with ThreadPoolExecutor(max_workers=6) as pool:
            futures = [pool.submit(one, i) for i in range(total)]
            while sum(f.done() for f in futures) < total // 3:
                time.sleep(0.01)
            replicas[2].proc.send_signal(signal.SIGKILL)
            killed_at.append(time.monotonic())
            replicas[2].proc.wait()
            for future in futures:
                future.result()
        after = [ok for sent, ok in outcomes if sent > killed_at[0]]
        failed = [sent for sent, ok in outcomes if not ok]
        assert after and all(after), f"{after.count(False)} requests sent after the kill failed"
        assert len(failed) <= 6, failed  # at most the ones in flight (6 clients)
        # back on its port: the router's health check brings it back into rotation
        port = replicas[2].port
        replicas[2] = LiveServer("--model", MODEL, "--threads", "1", port=port)
        replicas[2].wait_ready(120)
        deadline = time.monotonic() + 60
        while served_requests(replicas[2]) == 0:
            assert time.monotonic() < deadline, "the restarted replica never got traffic"
            answers(client)
    finally:
        router.stop()
