"""Soak: mixed load with early disconnects against a real server. The short version runs
in `make test` and checks behaviour (no 5xx, no protocol error, no leaked block);
`make soak` runs it for ~10 minutes (SOAK_SECONDS) and also holds RSS growth to a bound
(a memory threshold: too noisy for a 20-second run on a shared machine)."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import psutil

from bench.load import run_load
from tests.live import LiveServer

ROOT = Path(__file__).resolve().parents[2]


def test_soak_mixed_load_with_disconnects(hf_checkpoint: Any) -> None:
    seconds = float(os.environ.get("SOAK_SECONDS", "20"))
    lm, _ = hf_checkpoint("llama_gqa_llama3")
    cls, _ = hf_checkpoint("gpt2_cls")
    with LiveServer("--model", f"lm={lm}", "--model", f"cls={cls}", "--num-kv-blocks", "2048",
                    "--block-size", "4", "--max-num-seqs", "16",
                    "--max-num-batched-tokens", "128") as live:
        proc = psutil.Process(live.proc.pid)
        # Warm up (allocator pools, lazy imports) before the RSS baseline.
        # The tiny test model has a 256-token context: prompts of at most 40 words.
        asyncio.run(run_load(live.url, 40, 8, 60, 0.1, seed=1, max_words=40))
        rss_before = proc.memory_info().rss
        started = time.monotonic()
        rounds, reports = 0, []
        while time.monotonic() - started < seconds:
            report = asyncio.run(run_load(live.url, 200, 16, seconds, 0.15, seed=rounds + 2,
                                          max_words=40))
            reports.append(report.summary())
            rounds += 1
            assert report.idle_ok, report.idle_after  # zero leaked blocks after each round
        rss_after = proc.memory_info().rss
    statuses: dict[str, int] = {}
    for summary in reports:
        for status, n in summary["status"].items():
            statuses[status] = statuses.get(status, 0) + n
    assert not any(s.startswith("5") for s in statuses), statuses
    assert "-2" not in statuses and "-1" not in statuses, statuses  # protocol errors
    growth = rss_after - rss_before
    if "SOAK_SECONDS" in os.environ:
        assert growth < 100 * 2**20, f"RSS grew by {growth / 2**20:.0f} MiB"
    out = os.environ.get("SOAK_REPORT")
    if out:
        Path(out).write_text(json.dumps({
            "seconds": time.monotonic() - started, "rounds": rounds, "statuses": statuses,
            "rss_before_mib": rss_before / 2**20, "rss_after_mib": rss_after / 2**20,
            "last_round": reports[-1]}, indent=2))
