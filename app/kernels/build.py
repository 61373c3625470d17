"""Building the C++ kernels (`quant_linear.cpp`, the widening kernels, `int_dot.cpp`, the
integer dot-product kernels, and `paged_attention.cpp`, decode attention over the paged
KV cache) for the CPU at hand, once, on first use.

The sources ship in the package and are compiled into one extension with torch's
extension builder (a C++ compiler and ninja, as `--compile` needs) with the vector ISA
this CPU has: AVX-512 with AVX512-BF16 (adds the bf16 dot-product path for decode
batches), AVX-512, AVX2 + FMA, or the compiler's baseline; plus AVX512-VNNI or AVX-VNNI
where the CPU has them (`vpdpbusd` for the integer kernels; without either they use
AVX2's `vpmaddubsw`). The ISA is part of the build's name, so a
cache directory shared between machines of different kinds (an image built on one,
run on another) never hands one CPU the other's binary. The build takes 20-60 s on 2
cores; the result is cached under `LLM_KERNEL_CACHE` (default
`~/.cache/llm-inference/kernels`), so later starts load it in well under a second.
`LLM_KERNEL_ISA` builds a narrower ISA than the CPU's (see `NARROWER`; for tests). A
build found under `<venv>/share/llm-inference/kernels` (`python -m app.kernels.build
--prebuilt`, which the Docker image runs) is loaded as is, without a compiler or a
writable directory; a CPU of another kind builds its own into the cache.

Nothing here is required: when the build fails (no compiler, a read-only cache), the
reason is returned and the caller falls back to pure PyTorch kernels.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import sys
import threading
from functools import cache
from pathlib import Path
from types import ModuleType

import torch

log = logging.getLogger(__name__)

SOURCES = tuple(Path(__file__).with_name(name)
                for name in ("quant_linear.cpp", "int_dot.cpp", "paged_attention.cpp"))
HEADERS = tuple(Path(__file__).with_name(name)
                for name in ("block_products.h", "bf16_widening.h", "int_dot_activations.h"))
_LOCK = threading.Lock()


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux reports them (empty where /proc/cpuinfo is not)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def _vector_isa() -> tuple[str, list[str]]:
    avx512 = ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma",
              "-mf16c"]
    if torch.cpu._is_avx512_bf16_supported():
        return "avx512bf16", [*avx512, "-mavx512bf16"]
    if torch.cpu._is_avx512_supported():
        return "avx512", avx512
    if torch.cpu._is_avx2_supported():
        return "avx2", ["-mavx2", "-mfma", "-mf16c"]
    return "baseline", []


# Narrower builds `LLM_KERNEL_ISA` may ask for (the other vector paths of the kernels, on
# a CPU that also has them: how the tests check the AVX2, AVX-VNNI and scalar paths on a
# CPU with AVX-512).
NARROWER = {"baseline": [], "avx2": ["-mavx2", "-mfma", "-mf16c"],
            "avx2_avxvnni": ["-mavx2", "-mfma", "-mf16c", "-mavxvnni"]}


def cpu_isa() -> tuple[str, list[str]]:
    """(name, compiler flags) of the widest vector ISA torch's cpuinfo reports here, with
    the integer dot-product extensions /proc/cpuinfo reports: AVX512-VNNI (only with
    AVX-512 itself) and AVX-VNNI (the 256-bit form, on CPUs with or without AVX-512).
    `LLM_KERNEL_ISA` (baseline, avx2, avx2_avxvnni) builds a narrower one instead."""
    asked = os.environ.get("LLM_KERNEL_ISA", "")
    if asked:
        if asked not in NARROWER:
            raise ValueError(f"LLM_KERNEL_ISA={asked!r}: one of {', '.join(NARROWER)}")
        return asked, NARROWER[asked]
    name, flags = _vector_isa()
    features = cpu_flags()
    if name.startswith("avx512") and "avx512_vnni" in features:
        name, flags = f"{name}_vnni", [*flags, "-mavx512vnni"]
    if name != "baseline" and "avx_vnni" in features:
        name, flags = f"{name}_avxvnni", [*flags, "-mavxvnni"]
    return name, flags


def cache_root() -> Path:
    configured = os.environ.get("LLM_KERNEL_CACHE")
    if configured:
        return Path(configured)
    return Path.home() / ".cache" / "llm-inference" / "kernels"


def prebuilt_root() -> Path:
    return Path(sys.prefix) / "share" / "llm-inference" / "kernels"


def build_name() -> tuple[str, str]:
    """(the build's name: ISA and a digest of the source, its folder under a root)."""
    isa, _ = cpu_isa()
    digest = hashlib.sha256(b"".join(source.read_bytes()
                                     for source in SOURCES + HEADERS)).hexdigest()[:12]
    version = torch.__version__.replace("+", "_").replace(".", "_")
    name = f"llm_quant_{isa}_{digest}"
    return name, f"torch_{version}/{name}"


def _import_built(name: str, library: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, library)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {library}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ninja_on_path() -> None:
    """torch's builder runs `ninja` from PATH; the pip package's binary is not on it when
    the venv is used without activating it."""
    try:
        import ninja
    except ImportError:  # a system ninja may still be there
        return
    directory = str(ninja.BIN_DIR)
    if directory not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = os.pathsep.join([directory, os.environ.get("PATH", "")])


def _build(root: Path) -> ModuleType:
    from torch.utils import cpp_extension

    _ninja_on_path()

    name, folder = build_name()
    _, flags = cpu_isa()
    directory = root / folder
    directory.mkdir(parents=True, exist_ok=True)
    return cpp_extension.load(
        name=name, sources=[str(source) for source in SOURCES], build_directory=str(directory),
        extra_cflags=["-O3", "-ffast-math", "-fopenmp", *flags],
        extra_ldflags=["-fopenmp"], verbose=False)


@cache
def quant_extension() -> tuple[ModuleType | None, str]:
    """(module, how it was obtained) or (None, why not)."""
    with _LOCK:
        isa, _ = cpu_isa()
        name, folder = build_name()
        prebuilt = prebuilt_root() / folder / f"{name}.so"
        try:
            if prebuilt.exists():
                return _import_built(name, prebuilt), f"C++ kernels for {isa} (prebuilt)"
            return _build(cache_root()), f"C++ kernels for {isa}"
        except Exception as exc:  # no compiler or ninja, headers missing, cache read-only
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            return None, f"C++ kernels unavailable ({type(exc).__name__}: {first})"


def main() -> int:
    """`python -m app.kernels.build [--prebuilt]`: build for this CPU now (into the
    cache, or with --prebuilt beside the installed package) and say where."""
    root = prebuilt_root() if "--prebuilt" in sys.argv[1:] else cache_root()
    module = _build(root)
    sys.stdout.write(f"built {module.__file__} for {cpu_isa()[0]}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
