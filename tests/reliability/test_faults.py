"""Faults: a failing engine step fails only its requests with a clear 500 and the engine
keeps serving; repeated failures kill the engine and the process exits 1 (so the
orchestrator restarts it); a model that cannot load exits 1 with the reason."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.live import ROOT, LiveServer, free_port
from tests.waiting import wait_until


def test_dead_engine_exits_non_zero(hf_checkpoint: Any, tmp_path: Path) -> None:
    lm, _ = hf_checkpoint("llama_gqa_llama3")
    port = free_port()
    log = tmp_path / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.reliability.fault_server", "--model", f"lm={lm}",
             "--port", str(port), "--log-format", "text", "--num-kv-blocks", "128",
             "--block-size", "4"],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "FAULT_AFTER_STEPS": "3"})
        url = f"http://127.0.0.1:{port}"
        try:
            def ready() -> bool:
                try:
                    return httpx.get(url + "/readyz", timeout=1).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_until(ready, "the fault server to be ready", timeout=60, poll=0.1)
            ok = httpx.post(url + "/v1/generate", json={"prompt": "hi", "max_tokens": 2},
                            timeout=30)
            assert ok.status_code == 200  # steps 1-3 work
            failed = httpx.post(url + "/v1/generate", json={"prompt": "hi", "max_tokens": 2},
                                timeout=30)
            assert failed.status_code == 500
            assert "injected device fault" in failed.json()["error"]["message"]
            for _ in range(3):  # more failing steps: the engine is declared dead
                try:
                    httpx.post(url + "/v1/generate", json={"prompt": "x"}, timeout=30)
                except httpx.HTTPError:
                    break
            assert proc.wait(timeout=30) == 1
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
    text = log.read_text()
    assert "consecutive inference steps failed" in text and "exiting with status 1" in text


def test_model_that_fails_to_load_exits_non_zero_with_reason(tmp_path: Path) -> None:
    bad = tmp_path / "broken"
    bad.mkdir()
    (bad / "config.json").write_text('{"architectures": ["FalconForCausalLM"]}')
    live = LiveServer("--model", f"bad={bad}")
    code = live.proc.wait(timeout=60)
    log = live.log()
    live.stop()
    assert code == 1
    assert "FalconForCausalLM" in log and "not supported" in log
