"""What a benchmark must record about the machine it ran on, measured in the same run:
the CPU (model and ISA flags), torch and its threads, memory bandwidth and GEMM rate;
and a guard that waits for the machine to be idle before each timed block."""

from __future__ import annotations

import logging
import platform
import time
from pathlib import Path
from typing import Any

import psutil
import torch
import torch.nn.functional as F

# One timing helper for the server's start-up measurements and the benchmarks.
from app.modeling.timing import median_seconds

log = logging.getLogger("bench")

ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16",
             "amx_int8", "avx_vnni")


def cpu_info() -> dict[str, Any]:
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    flags = set(fields.get("flags", "").split())
    return {"model": fields.get("model name", platform.processor() or "unknown"),
            "family": fields.get("cpu family"), "model_number": fields.get("model"),
            "isa": [f for f in ISA_FLAGS if f in flags], "cpus": psutil.cpu_count(),
            "native_bf16": bool(flags & {"avx512_bf16", "amx_bf16"})}


def cpu_line(cpu: dict[str, Any]) -> str:
    """The CPU a benchmark ran on, as its output's first line names it."""
    return (f"CPU: {cpu['model']} (family {cpu.get('family')} model {cpu.get('model_number')}),"
            f" ISA {', '.join(cpu['isa'])}")


def kind(cpu: dict[str, Any]) -> str:
    """A short name for the machine kind: vendor, and the widest vector/matrix ISA."""
    vendor = "Intel Xeon" if "Intel" in cpu["model"] else (
        "AMD EPYC" if "AMD" in cpu["model"] else cpu["model"])
    isa = cpu["isa"]
    if "amx_bf16" in isa:
        widest = "AVX-512 + AMX-BF16"
    elif "avx512_bf16" in isa:
        widest = "AVX-512 + AVX512-BF16"
    elif "avx512f" in isa:
        widest = "AVX-512"
    else:
        widest = "AVX2 only" if "avx2" in isa else "no AVX2"
    return f"{vendor}, {widest}"


def slug(machine_kind: str) -> str:
    """A machine kind as a file name's part: amd-epyc-avx-512-avx512-bf16."""
    return machine_kind.lower().replace(",", "").replace(" ", "-").replace("+", "")


def wait_idle(threshold: float = 12.0, timeout: float = 180.0) -> float:
    """Wait until other processes use less than `threshold` % of the CPUs; return it."""
    me = psutil.Process()
    deadline = time.monotonic() + timeout
    busy = 100.0
    while time.monotonic() < deadline:
        mine_before = sum(me.cpu_times()[:2])
        total = psutil.cpu_percent(interval=1.0)
        mine = (sum(me.cpu_times()[:2]) - mine_before) * 100 / (psutil.cpu_count() or 1)
        busy = max(0.0, total - mine)
        if busy < threshold:
            return busy
    log.warning("machine still busy (%.0f%% by others) after %.0fs; measuring anyway",
                busy, timeout)
    return busy


class OthersBusy:
    """The share of the CPUs that processes other than this one and `pid` (the server
    being measured) used between start() and stop(), in %: the contention a timed block
    met, which wait_idle() can only check before it starts."""

    def __init__(self, pid: int | None = None) -> None:
        self.procs = [psutil.Process()] + ([psutil.Process(pid)] if pid else [])
        self.begin = (0.0, 0.0, 0.0)

    def _now(self) -> tuple[float, float, float]:
        t = psutil.cpu_times()
        busy = sum(t) - t.idle - getattr(t, "iowait", 0.0)
        ours = sum(sum(p.cpu_times()[:2]) for p in self.procs)
        return time.monotonic(), busy, ours

    def start(self) -> None:
        self.begin = self._now()

    def stop(self) -> float:
        wall, busy, ours = (b - a for a, b in zip(self.begin, self._now(), strict=True))
        cpus = psutil.cpu_count() or 1
        return max(0.0, 100 * (busy - ours) / (wall * cpus)) if wall > 0 else 0.0


def ceilings(native_bf16: bool) -> dict[str, float]:
    """Memory bandwidth (sum over 1 GiB) and GEMM rates, on the calling thread's cores."""
    wait_idle()
    ones = torch.ones(256 * 2**20)
    out = {"bandwidth_gb_s": ones.nbytes / median_seconds(lambda: ones.sum(), 7) / 1e9}
    dtypes = [torch.float32] + ([torch.bfloat16] if native_bf16 else [])
    for dtype in dtypes:
        name = "fp32" if dtype == torch.float32 else "bf16"
        for rows in (32, 512):
            a = torch.randn(rows, 768, dtype=dtype)
            w = torch.randn(3072, 768, dtype=dtype)
            n = max(4, 2048 // rows)
            seconds = median_seconds(lambda: [F.linear(a, w) for _ in range(n)], 5)  # noqa: B023
            out[f"gemm_{name}_m{rows}_gflop_s"] = n * 2 * rows * 768 * 3072 / seconds / 1e9
    return out


def environment() -> dict[str, Any]:
    return {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version()}
