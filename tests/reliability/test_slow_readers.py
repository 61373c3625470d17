"""Streaming back-pressure against a real server: clients that stop reading (a tiny
socket receive buffer, nothing read) must not stall the engine or make the server queue
their events without bound; when they read again, every token is there."""

from __future__ import annotations

import json
import socket
from typing import Any

import httpx
import psutil
import pytest

from tests.live import LiveServer
from tests.waiting import wait_until

REQUEST = {"prompt": "Once upon a time", "max_tokens": 200, "temperature": 0,
           "ignore_eos": True, "logprobs": True, "top_logprobs": 20, "stream": True}


def open_paused_stream(port: int, body: dict[str, Any]) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills after a few events
    sock.connect(("127.0.0.1", port))
    data = json.dumps(body).encode()
    sock.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: test\r\nConnection: close\r\n"
                 b"Content-Type: application/json\r\nContent-Length: "
                 + str(len(data)).encode() + b"\r\n\r\n" + data)
    return sock


def read_sse(sock: socket.socket) -> list[Any]:
    """Read the whole (chunked) response and return its events, strictly parsed."""
    sock.settimeout(60)
    raw = b""
    while chunk := sock.recv(65536):
        raw += chunk
    sock.close()
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    body = b""
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        body, rest = body + rest[:size], rest[size + 2:]

    def refuse(name: str) -> None:
        raise ValueError(name)

    lines = [line[6:] for line in body.decode().split("\n") if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line, parse_constant=refuse) for line in lines[:-1]]


def engine_idle(url: str) -> bool:
    info = httpx.get(url + "/v1/info", timeout=10).json()["models"][0]
    return info["running_requests"] == info["waiting_requests"] == info["kv_blocks_used"] == 0


def paused_readers(lm: Any, clients: int) -> tuple[int, int]:
    """-> (server RSS growth while `clients` readers pause, bytes), after checking that
    the engine finished their requests unread and that each stream is then complete."""
    with LiveServer("--model", f"lm={lm}", "--num-kv-blocks", "2048", "--block-size", "4",
                    "--max-num-seqs", "32", "--max-num-batched-tokens", "256") as live:
        port = int(live.url.rsplit(":", 1)[1])
        whole = httpx.post(live.url + "/v1/generate", json={**REQUEST, "stream": False},
                           timeout=120).json()
        proc = psutil.Process(live.proc.pid)
        rss_before = proc.memory_info().rss
        socks = [open_paused_stream(port, REQUEST) for _ in range(clients)]
        # The engine is not held back by readers that do not read: it finishes them all.
        wait_until(lambda: engine_idle(live.url), "the engine to finish unread streams",
                   timeout=120, poll=0.1)
        growth = proc.memory_info().rss - rss_before
        for sock in socks:
            events = read_sse(sock)
            tokens = [e for e in events if "text" in e]
            assert "".join(e["text"] for e in tokens) == whole["text"]
            assert sum(len(e["logprobs"]) for e in tokens) == 200
            assert events[-1]["usage"]["completion_tokens"] == 200
    return growth, clients


def test_paused_readers_do_not_stall_the_engine_and_lose_nothing(hf_checkpoint: Any) -> None:
    paused_readers(hf_checkpoint("llama_gqa_llama3")[0], clients=8)


@pytest.mark.slow
def test_paused_readers_memory_stays_bounded(hf_checkpoint: Any) -> None:
    """Memory threshold (`make test-slow`): 32 paused streams of 200 tokens with 20
    alternatives each hold at most their own merged output (~1 MB of JSON in all)."""
    growth, _ = paused_readers(hf_checkpoint("llama_gqa_llama3")[0], clients=32)
    assert growth < 64 * 2**20, f"RSS grew by {growth / 2**20:.0f} MiB"
