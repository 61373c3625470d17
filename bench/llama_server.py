"""llama.cpp's own HTTP server (`llama-server`) as a process on a free loopback port, for
the benchmarks that drive it beside ours (bench.server_peer, bench.speculative_peer), and
where `make install-peers` leaves its binary (bench/build_llama_server.sh)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import httpx

from tests.live import free_port

ROOT = Path(__file__).resolve().parents[1]
# bench/build_llama_server.sh's default build folder (ignored by git).
BUILD_DIR = ROOT / ".peers" / "llama-server"
BINARY = BUILD_DIR / "src" / "vendor" / "llama.cpp" / "build" / "bin" / "llama-server"
NO_AMX_BINARY = BUILD_DIR / "src" / "vendor" / "llama.cpp" / "build-noamx" / "bin" / "llama-server"


def default_binary() -> Path | None:
    """$LLAMA_SERVER, else what the build script left (its AMX-free build when it made
    one: it is made only where the native build died), else None."""
    given = os.environ.get("LLAMA_SERVER")
    if given:
        return Path(given)
    for path in (NO_AMX_BINARY, BINARY):
        if path.is_file() and os.access(path, os.X_OK):
            return path
    return None


class LlamaServer:
    """`llama-server -m GGUF -t THREADS -np PARALLEL -c CONTEXT ARGS` until the context
    exits; ready once /health answers 200 (after its own warm-up run, unless ARGS has
    --no-warmup)."""

    def __init__(self, binary: Path | str, gguf: Path, threads: int, parallel: int,
                 context: int, *args: str, ready_timeout: float = 300) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port",
                        str(self.port), "-t", str(threads), "-np", str(parallel), "-c",
                        str(context), *args]
        self.ready_timeout = ready_timeout
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"llama-server-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:]

    def __enter__(self) -> LlamaServer:
        with self.log_path.open("wb") as log:  # a file, never a pipe nobody drains
            self.proc = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited with {self.proc.returncode}: "
                                   f"{self.log()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.__exit__()
        raise TimeoutError(f"llama-server not ready after {self.ready_timeout}s: {self.log()}")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
