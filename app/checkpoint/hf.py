"""Hugging Face layout: our parameters gathered from (fused, transposed) checkpoint
tensors, and split back into them for saving, so every checkpoint we write loads in
`transformers`."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from app.checkpoint.device import DTYPES
from app.checkpoint.files import (
    CONFIG_FILE,
    GENERATION_CONFIG_FILE,
    SAFETENSORS_FILE,
    CheckpointError,
)
from app.checkpoint.tensors import TensorIndex
from app.modeling.config import config_to_hf
from app.modeling.transformer import Transformer
from app.modeling.weights import IGNORED_SUFFIXES, Source, weight_plan

log = logging.getLogger(__name__)


def _expected_part_shape(target: tuple[int, ...], src: Source, part: int) -> tuple[int, ...]:
    size = src.sizes[part] if len(src.names) > 1 or src.sizes[part] else target[0]
    shape = (size, *target[1:])
    return tuple(reversed(shape)) if src.transpose else shape


def _gather_parameter(
    index: TensorIndex, ours: str, src: Source, target: tuple[int, ...], dtype: torch.dtype
) -> Tensor:
    parts = []
    for i, name in enumerate(src.names):
        stored = index.resolve(name)
        if stored is None:
            raise CheckpointError(
                f"tensor {name!r} is missing from the weights in {index.directory}"
            )
        want = _expected_part_shape(target, src, i)
        got = index.shape(stored)
        if got != want:
            raise CheckpointError(
                f"{index.where[stored].name}: tensor {stored!r} has shape {list(got)}, "
                f"config.json implies {list(want)}"
            )
        tensor = index.read(stored)
        parts.append(tensor.t() if src.transpose else tensor)
    merged = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
    return merged.to(dtype).contiguous()


def _used_names(index: TensorIndex, plan: dict[str, Source]) -> set[str]:
    used = set()
    for src in plan.values():
        for name in src.names:
            stored = index.resolve(name)
            if stored is not None:
                used.add(stored)
    return used


def read_hf_state(model: Transformer, directory: Path, dtype: torch.dtype
                   ) -> dict[str, Tensor]:
    """Our parameters, gathered from a Hugging Face layout checkpoint in `dtype`."""
    plan = weight_plan(model.config)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    if set(plan) != set(shapes):  # a bug in a plan, never the user's fault
        raise AssertionError(f"weight plan mismatch: {sorted(set(plan) ^ set(shapes))}")
    state: dict[str, Tensor] = {}
    with ExitStack() as stack:
        index = TensorIndex(directory, stack)
        for ours, src in plan.items():
            state[ours] = _gather_parameter(index, ours, src, shapes[ours], dtype)
        unexpected = [
            n
            for n in sorted(set(index.where) - _used_names(index, plan))
            if not n.endswith(IGNORED_SUFFIXES) and n != "lm_head.weight"
        ]
    if unexpected:
        log.warning(
            "checkpoint %s has %d tensors the model does not use, e.g. %s",
            directory, len(unexpected), unexpected[:5],
        )
    return state


def _export_tensors(model: Transformer) -> Iterator[tuple[str, Tensor]]:
    """Our parameters split and transposed back into checkpoint tensors."""
    params = dict(model.named_parameters())
    for ours, src in weight_plan(model.config).items():
        tensor = params[ours].detach()
        sizes = [s or tensor.shape[0] for s in src.sizes]
        for name, part in zip(src.names, tensor.split(sizes, dim=0), strict=True):
            yield name, (part.t() if src.transpose else part).contiguous().cpu()


def save_model(
    model: Transformer,
    directory: str | Path,
    generation_config: dict[str, Any] | None = None,
) -> None:
    """Write config.json, model.safetensors (and generation_config.json) in HF layout."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    raw = config_to_hf(cfg)
    params = next(model.parameters())
    raw["torch_dtype"] = {v: k for k, v in DTYPES.items()}.get(params.dtype, "float32")
    (out / CONFIG_FILE).write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")
    save_file(dict(_export_tensors(model)), str(out / SAFETENSORS_FILE), metadata={"format": "pt"})
    # safetensors writes 0600; a checkpoint must be readable by the (non-root) server user.
    (out / SAFETENSORS_FILE).chmod(0o644)
    if generation_config is not None:
        (out / GENERATION_CONFIG_FILE).write_text(
            json.dumps(generation_config, indent=2, sort_keys=True) + "\n"
        )
