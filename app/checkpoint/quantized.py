"""Checkpoints written by `python -m app quantize` (layout in
app.modeling.quantized_model): loaded as stored, never re-quantized."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from app.checkpoint.files import (
    CONFIG_FILE,
    GENERATION_CONFIG_FILE,
    SAFETENSORS_FILE,
    CheckpointError,
    read_json,
)
from app.modeling.loaded import LoadedModel
from app.modeling.quantized_model import FORMAT as QUANT_FORMAT
from app.modeling.quantized_model import FORMAT_VERSION as QUANT_FORMAT_VERSION
from app.modeling.quantized_model import quantization_config, skeleton
from app.modeling.transformer import Transformer


def cast_floats(model: Transformer, dtype: torch.dtype) -> None:
    """Parameters (norms, biases, embeddings) to `dtype`; quantized buffers keep theirs."""
    for module in model.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            setattr(module, name, torch.nn.Parameter(param.detach().to(dtype),
                                                     requires_grad=False))


def load_quantized(model: Transformer, directory: Path, stored: Any, requested: str,
                    dtype: torch.dtype) -> None:
    """A checkpoint written by `python -m app quantize`: our names, loaded as stored."""
    where = directory / CONFIG_FILE
    if not isinstance(stored, dict) or stored.get("quant_method") != QUANT_FORMAT:
        method = stored.get("quant_method") if isinstance(stored, dict) else stored
        raise CheckpointError(f"{where}: quantization_config of kind {method!r} is not "
                              f"supported (only checkpoints written by python -m app quantize)")
    if stored.get("format_version") != QUANT_FORMAT_VERSION:
        raise CheckpointError(f"{where}: quantized format version "
                              f"{stored.get('format_version')!r} is not supported")
    method, group = stored.get("method"), stored.get("group_size", 0)
    if method not in ("int8", "int4") or not isinstance(group, int):
        raise CheckpointError(f"{where}: quantization_config.method {method!r} is not "
                              "int8 or int4")
    if requested not in ("none", method):
        raise CheckpointError(f"{directory} is stored as {method}; it cannot be served as "
                              f"{requested} (quantize the original checkpoint instead)")
    skeleton(model, method, group, dtype)
    file = directory / SAFETENSORS_FILE
    try:
        state = load_file(str(file))
    except Exception as exc:
        raise CheckpointError(f"{file}: cannot read ({exc})") from exc
    if model.lm_head is not None and model.lm_head.tied:  # one table, saved once
        for suffix in ("qweight", "scale"):
            if f"embed.table.{suffix}" in state:
                state[f"lm_head.quantized.{suffix}"] = state[f"embed.table.{suffix}"]
    expected = dict(model.state_dict(keep_vars=True))
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise CheckpointError(f"{file}: does not match its config (missing {missing[:5]}, "
                              f"unexpected {extra[:5]})")
    for name, tensor in expected.items():
        got = state[name]
        if tuple(got.shape) != tuple(tensor.shape) or (
                not tensor.is_floating_point() and got.dtype != tensor.dtype):
            raise CheckpointError(f"{file}: tensor {name!r} has shape {list(got.shape)} "
                                  f"{got.dtype}, the config implies {list(tensor.shape)} "
                                  f"{tensor.dtype}")
    model.load_state_dict(state, strict=True, assign=True)
    cast_floats(model, dtype)  # parameters to the serving dtype; quantized buffers as stored


def save_quantized(loaded: LoadedModel, directory: str | Path) -> None:
    """Write a quantized model in the layout of app.modeling.quantized_model, with the
    source's generation config and tokenizer files."""
    model = loaded.model
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    raw = read_json(loaded.path / CONFIG_FILE)
    raw["quantization_config"] = quantization_config(model, loaded.dtype)
    (out / CONFIG_FILE).write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")
    state = {name: t.detach().contiguous().cpu() for name, t in model.state_dict().items()
             if not (model.lm_head is not None and model.lm_head.tied
                     and name.startswith("lm_head.quantized."))}
    save_file(state, str(out / SAFETENSORS_FILE),
              metadata={"format": "pt", "quantization": model.quantization})
    (out / SAFETENSORS_FILE).chmod(0o644)
    for source in sorted(loaded.path.iterdir()):
        if source.is_file() and (source.name == GENERATION_CONFIG_FILE
                                 or source.name.startswith(("tokenizer", "special_tokens",
                                                            "vocab", "merges", "chat_template"))):
            shutil.copyfile(source, out / source.name)
