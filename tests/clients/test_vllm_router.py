"""A stock vllm-router (the Rust router on PyPI) in front of three replicas of our server,
driven by the official openai client: every request the router re-serializes with its
own extension fields is served (no 4xx), answers equal the same request sent straight to
a replica, every replica gets traffic, and a replica killed under load costs nothing that
had not reached it. Short on purpose (make test); the router's overhead is measured by
bench/router_overhead.py."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
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
             "--health-check-interval-secs", "1", "--log-level", "warning"],
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


def test_a_killed_replica_costs_nothing_that_had_not_reached_it(
        replicas: list[LiveServer]) -> None:
    """Replica 3 dies: requests the router sends afterwards are retried on the others and
    succeed; the router's health check takes it out of rotation."""
    from openai import OpenAI

    router = Router([s.url for s in replicas], "round_robin")
    try:
        router.wait_ready()
        client = OpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0)
        expected = answers(client)
        replicas[2].proc.send_signal(signal.SIGKILL)
        replicas[2].proc.wait()
        for _ in range(4):
            assert answers(client) == expected
    finally:
        router.stop()
