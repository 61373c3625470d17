"""Where and in which dtype a model runs: `auto` resolved for the machine at hand."""

from __future__ import annotations

import torch

from app.checkpoint.files import CheckpointError
from app.modeling.config import ModelConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> the first CUDA device if there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise CheckpointError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CheckpointError(f"device {name!r} requested but CUDA is not available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CheckpointError(
                f"device {name!r} requested but only {torch.cuda.device_count()} CUDA devices exist"
            )
    elif device.type != "cpu":
        raise CheckpointError(f"unsupported device {name!r} (use auto, cpu, cuda or cuda:N)")
    return device


# On CPUs with native bf16 (AVX512-BF16 / AMX), bf16 pays off above this size; below it
# per-op overhead dominates and bf16 conversions make small models slower
# (bench/dtype.py: 124M GPT-2 1.5x faster batch-1 and 1.36x at batch 32; 6.5M model 0.8x).
CPU_BF16_MIN_PARAMETERS = 50_000_000


def cpu_has_bf16() -> bool:
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def resolve_dtype(name: str, device: torch.device, parameters: int = 0) -> torch.dtype:
    """'auto' -> bfloat16 on GPUs that have it (else float16); on CPU, bfloat16 for models
    of at least CPU_BF16_MIN_PARAMETERS when the CPU computes bf16 natively, else float32
    (measured in docs/PERFORMANCE.md)."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if parameters >= CPU_BF16_MIN_PARAMETERS and cpu_has_bf16():
            return torch.bfloat16
        return torch.float32
    if name not in DTYPES:
        raise CheckpointError(f"unknown dtype {name!r} (use auto, {', '.join(DTYPES)})")
    return DTYPES[name]


def estimated_parameters(cfg: ModelConfig) -> int:
    """Parameter count implied by a config (for choosing a dtype before loading)."""
    h, layers = cfg.hidden_size, cfg.num_layers
    attention = h * (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim + \
        cfg.num_heads * cfg.head_dim * h
    mlp = (2 if cfg.family == "gpt2" else 3) * h * cfg.intermediate_size
    embeddings = cfg.vocab_size * h * (1 if cfg.tie_word_embeddings else 2)
    return layers * (attention + mlp) + embeddings
