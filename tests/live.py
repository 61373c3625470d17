"""A real `python -m app serve` process on a loopback port, for tests that need real
sockets: client disconnects, signals, the official OpenAI client."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    def __init__(self, *args: str, env: dict[str, str] | None = None,
                 python: str = sys.executable, args_override: list[str] | None = None,
                 ready_timeout: float = 60, port: int | None = None) -> None:
        """`python -m app serve ARGS` on a free loopback port; with `args_override`, the
        command is exactly `python -m app ARGS_OVERRIDE` (the port set through env)."""
        self.ready_timeout = ready_timeout
        self.port = port or free_port()  # a given port: a restart where it was
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"live-{self.port}.log"
        self._log = self.log_path.open("w")
        if args_override is None:
            command = [python, "-m", "app", "serve", "--host", "127.0.0.1", "--port",
                       str(self.port), "--log-format", "text", *args]
            # Eager unless a test asks otherwise (LLM_COMPILE=auto): see app_helpers.
            full_env = {**os.environ, "LLM_COMPILE": "off", "LLM_PREPACK": "off", **(env or {})}
        else:
            command = [python, "-m", "app", *args_override]
            full_env = {**(env or {}), "LLM_PORT": str(self.port)}
        self.proc = subprocess.Popen(command, cwd=ROOT if args_override is None else "/",
                                     stdout=self._log, stderr=subprocess.STDOUT, env=full_env)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready after {timeout}s: {self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()[-4000:]

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return int(self.proc.returncode)

    def __enter__(self) -> LiveServer:
        self.wait_ready(self.ready_timeout)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
