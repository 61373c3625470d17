"""A busy port is found before torch is imported and the models load: the serve command
exits at once with a message naming host:port."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from app.listen import CannotListen, bind

ROOT = Path(__file__).resolve().parents[1]


# Runs the CLI as `python -m app` does, and on the way out (the busy-port exit included)
# writes which of the slow imports had happened by then.
_CLI_RECORDING_IMPORTS = """
import atexit, runpy, sys
def _record():
    slow = [name for name in ("torch", "app.main", "app.serve", "app.checkpoint")
            if name in sys.modules]
    sys.stderr.write("imported at exit: " + ",".join(slow) + "\\n")
atexit.register(_record)
sys.argv = ["app", *sys.argv[1:]]
runpy.run_module("app", run_name="__main__", alter_sys=True)
"""


def test_serve_on_a_busy_port_exits_before_torch_and_the_models_load() -> None:
    """Guards: `serve` importing torch (or the app, which imports it) before binding the
    socket, which made a busy port fail only after seconds of start-up work."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = subprocess.run([sys.executable, "-c", _CLI_RECORDING_IMPORTS, "serve", "--port",
                              str(port), "--model", "default-lm=models/default-lm"],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert f"cannot listen on 127.0.0.1:{port}: the port is already in use" in run.stderr
    assert "--port or LLM_PORT" in run.stderr
    recorded = [line for line in run.stderr.splitlines() if line.startswith("imported at exit:")]
    assert recorded == ["imported at exit: "], run.stderr


def test_bind_returns_the_socket_uvicorn_serves_on() -> None:
    sock = bind("127.0.0.1", 0)
    try:
        host, port = sock.getsockname()
        assert host == "127.0.0.1" and port > 0
        # Already listening: a second server started at the same moment is refused at
        # once (two merely bound SO_REUSEADDR sockets could share the port).
        with pytest.raises(CannotListen, match=f"127.0.0.1:{port}"):
            bind("127.0.0.1", port)
    finally:
        sock.close()


def test_an_address_that_is_not_ours_is_named() -> None:
    with pytest.raises(CannotListen, match=r"cannot listen on 192\.0\.2\.1:8000: .*LLM_HOST"):
        bind("192.0.2.1", 8000)  # TEST-NET-1: never a local address


def test_a_bracketed_ipv6_host_is_accepted() -> None:
    try:
        sock = bind("[::1]", 0)
    except CannotListen as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    try:
        assert sock.getsockname()[0] == "::1"
    finally:
        sock.close()
