"""Building the C++ kernels (`quant_linear.cpp`) for the CPU at hand, once, on first use.

The source ships in the package and is compiled with torch's extension builder (a C++
compiler and ninja, as `--compile` needs) with the vector ISA this CPU has: AVX-512,
else AVX2 + FMA, else the compiler's baseline. The ISA is part of the build's name, so a
cache directory shared between machines of different kinds (an image built on one,
run on another) never hands one CPU the other's binary. The build takes 20-60 s on 2
cores; the result is cached under `LLM_KERNEL_CACHE` (default
`~/.cache/llm-inference/kernels`), so later starts load it in well under a second. The
Docker image builds it at image build time.

Nothing here is required: when the build fails (no compiler, a read-only cache), the
reason is returned and the caller falls back to pure PyTorch kernels.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from functools import cache
from pathlib import Path
from types import ModuleType

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("quant_linear.cpp")
_LOCK = threading.Lock()


def cpu_isa() -> tuple[str, list[str]]:
    """(name, compiler flags) of the widest vector ISA torch's cpuinfo reports here."""
    if torch.cpu._is_avx512_supported():
        return "avx512", ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2",
                          "-mfma", "-mf16c"]
    if torch.cpu._is_avx2_supported():
        return "avx2", ["-mavx2", "-mfma", "-mf16c"]
    return "baseline", []


def cache_root() -> Path:
    configured = os.environ.get("LLM_KERNEL_CACHE")
    if configured:
        return Path(configured)
    return Path.home() / ".cache" / "llm-inference" / "kernels"


@cache
def quant_extension() -> tuple[ModuleType | None, str]:
    """(module, how it was obtained) or (None, why not)."""
    with _LOCK:
        isa, flags = cpu_isa()
        digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
        version = torch.__version__.replace("+", "_").replace(".", "_")
        name = f"llm_quant_{isa}_{digest}"
        directory = cache_root() / f"torch_{version}" / name
        try:
            from torch.utils import cpp_extension

            directory.mkdir(parents=True, exist_ok=True)
            module = cpp_extension.load(
                name=name, sources=[str(SOURCE)], build_directory=str(directory),
                extra_cflags=["-O3", "-ffast-math", "-fopenmp", *flags],
                extra_ldflags=["-fopenmp"], verbose=False)
        except Exception as exc:  # no compiler or ninja, headers missing, cache read-only
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            return None, f"C++ kernels unavailable ({type(exc).__name__}: {first})"
        return module, f"C++ kernels for {isa}"
