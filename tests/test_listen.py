"""A busy port is found before torch is imported and the models load: the serve command
exits at once with a message naming host:port."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.listen import CannotListen, bind

ROOT = Path(__file__).resolve().parents[1]


def test_serve_on_a_busy_port_exits_at_once_naming_it() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        start = time.monotonic()
        run = subprocess.run([sys.executable, "-m", "app", "serve", "--port", str(port),
                              "--model", "default-lm=models/default-lm"],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
        elapsed = time.monotonic() - start
    assert run.returncode == 2, run.stderr
    assert f"cannot listen on 127.0.0.1:{port}: the port is already in use" in run.stderr
    assert "--port or LLM_PORT" in run.stderr
    # Before torch and the models: no loading was logged, and it took no start-up time.
    assert "loading model" not in run.stderr and "torch" not in run.stderr
    assert elapsed < 10, elapsed


def test_bind_returns_the_socket_uvicorn_serves_on() -> None:
    sock = bind("127.0.0.1", 0)
    try:
        host, port = sock.getsockname()
        assert host == "127.0.0.1" and port > 0
        with pytest.raises(CannotListen, match=f"127.0.0.1:{port}"):
            sock.listen()
            bind("127.0.0.1", port)
    finally:
        sock.close()


def test_an_address_that_is_not_ours_is_named() -> None:
    with pytest.raises(CannotListen, match=r"cannot listen on 192\.0\.2\.1:8000: .*LLM_HOST"):
        bind("192.0.2.1", 8000)  # TEST-NET-1: never a local address
