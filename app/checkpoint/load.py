"""Loading a checkpoint directory for serving: built on the meta device, each tensor
read from a memory-mapped file, converted and assigned in place (the weights are never
held twice in memory), quantized if asked."""

from __future__ import annotations

from pathlib import Path

import torch

from app.checkpoint.device import estimated_parameters, resolve_device, resolve_dtype
from app.checkpoint.files import (
    CONFIG_FILE,
    GENERATION_CONFIG_FILE,
    CheckpointError,
    load_config,
    read_json,
)
from app.checkpoint.hf import read_hf_state
from app.checkpoint.quantized import cast_floats, load_quantized
from app.modeling.config import ConfigError
from app.modeling.loaded import LoadedModel
from app.modeling.quantize import METHODS as QUANTIZATION_METHODS
from app.modeling.quantized_model import DEFAULT_INT4_GROUP_SIZE, quantize_model
from app.modeling.transformer import Transformer


def load_model(path: str | Path, dtype: str = "auto", device: str = "auto",
               quantization: str = "none",
               group_size: int = DEFAULT_INT4_GROUP_SIZE) -> LoadedModel:
    """Load a checkpoint directory onto `device` in `dtype`, quantized per `quantization`
    (none | int8 | int4; see app.modeling.quantized_model); CheckpointError on any problem.
    A checkpoint saved quantized (`python -m app quantize`) loads as stored."""
    directory = Path(path)
    cfg = load_config(directory)
    target_device = resolve_device(device)
    target_dtype = resolve_dtype(dtype, target_device, estimated_parameters(cfg))
    if quantization not in QUANTIZATION_METHODS:
        raise CheckpointError(f"quantization must be one of {QUANTIZATION_METHODS}, "
                              f"not {quantization!r}")
    stored = read_json(directory / CONFIG_FILE).get("quantization_config")
    try:
        with torch.device("meta"):
            model = Transformer(cfg)
    except ConfigError as exc:
        raise CheckpointError(f"{directory / CONFIG_FILE}: {exc}") from exc
    if stored is not None:
        load_quantized(model, directory, stored, quantization, target_dtype)
    else:
        # Quantize from the checkpoint's own precision, not from a bf16 copy of it.
        read_dtype = torch.float32 if quantization != "none" else target_dtype
        model.load_state_dict(read_hf_state(model, directory, read_dtype), strict=True,
                              assign=True)
        if quantization != "none":
            try:
                quantize_model(model, quantization, group_size, target_dtype)
            except ValueError as exc:
                raise CheckpointError(f"{directory}: {exc}") from exc
            cast_floats(model, target_dtype)
    model.to(target_device)
    model.requires_grad_(False).eval()
    model.init_rope(target_device)
    generation = directory / GENERATION_CONFIG_FILE
    return LoadedModel(
        path=directory,
        config=cfg,
        model=model,
        dtype=target_dtype,
        device=target_device,
        generation_config=read_json(generation) if generation.exists() else {},
    )
