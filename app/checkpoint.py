"""Load and save Hugging Face layout checkpoints.

A checkpoint is a directory: config.json, weights (model.safetensors, a sharded
model.safetensors.index.json, or a legacy pytorch_model.bin), and optionally
generation_config.json and the tokenizer files (see app.tokenizer).

The model is built on the meta device and each tensor is read from a memory-mapped file,
converted and assigned in place, so the weights are never held twice in memory. Every
failure becomes a CheckpointError that names the file and, where it applies, the tensor.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from app.modeling.config import ConfigError, ModelConfig, config_from_hf, config_to_hf
from app.modeling.quantize import METHODS as QUANTIZATION_METHODS
from app.modeling.quantized_model import (
    DEFAULT_INT4_GROUP_SIZE,
    quantization_config,
    quantize_model,
    skeleton,
)
from app.modeling.quantized_model import FORMAT as QUANT_FORMAT
from app.modeling.quantized_model import FORMAT_VERSION as QUANT_FORMAT_VERSION
from app.modeling.transformer import Transformer
from app.modeling.weights import BODY_PREFIXES, IGNORED_SUFFIXES, Source, weight_plan

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_BIN_FILE = "pytorch_model.bin"
GENERATION_CONFIG_FILE = "generation_config.json"

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class CheckpointError(Exception):
    """A checkpoint that cannot be loaded; the message names the file and tensor."""


@dataclass
class LoadedModel:
    path: Path
    config: ModelConfig
    model: Transformer
    dtype: torch.dtype
    device: torch.device
    generation_config: dict[str, Any] = field(default_factory=dict)

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """End-of-sequence ids from config.json and generation_config.json together:
        chat models often list their end-of-turn token only in the latter."""
        ids = list(self.config.eos_token_ids)
        value = self.generation_config.get("eos_token_id")
        for token in value if isinstance(value, list) else [value]:
            if isinstance(token, int) and not isinstance(token, bool) and token not in ids:
                ids.append(token)
        return tuple(ids)


# ---------------------------------------------------------------------------- device, dtype


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


# ---------------------------------------------------------------------------- reading


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path.name} not found in {path.parent}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def estimated_parameters(cfg: ModelConfig) -> int:
    """Parameter count implied by a config (for choosing a dtype before loading)."""
    h, layers = cfg.hidden_size, cfg.num_layers
    attention = h * (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim + \
        cfg.num_heads * cfg.head_dim * h
    mlp = (2 if cfg.family == "gpt2" else 3) * h * cfg.intermediate_size
    embeddings = cfg.vocab_size * h * (1 if cfg.tie_word_embeddings else 2)
    return layers * (attention + mlp) + embeddings


def load_config(path: Path) -> ModelConfig:
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    raw = read_json(path / CONFIG_FILE)
    try:
        return config_from_hf(raw)
    except ConfigError as exc:
        raise CheckpointError(f"{path / CONFIG_FILE}: {exc}") from exc


class TensorIndex:
    """Which file holds each tensor, with lazy memory-mapped reads."""

    def __init__(self, directory: Path, stack: ExitStack) -> None:
        self.directory = directory
        self.where: dict[str, Path] = {}
        self._handles: dict[Path, Any] = {}
        self._torch_state: dict[str, Tensor] = {}
        index = directory / SAFETENSORS_INDEX
        single = directory / SAFETENSORS_FILE
        legacy = directory / TORCH_BIN_FILE
        if single.exists():
            self._open_safetensors(single, stack)
        elif index.exists():
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"{index}: has no 'weight_map' object")
            for shard in sorted(set(weight_map.values())):
                self._open_safetensors(directory / shard, stack)
        elif legacy.exists():
            try:
                state = torch.load(legacy, map_location="cpu", weights_only=True, mmap=True)
            except Exception as exc:
                raise CheckpointError(f"{legacy}: unreadable PyTorch weights file ({exc})") from exc
            if not isinstance(state, dict):
                raise CheckpointError(f"{legacy}: expected a state dict")
            self._torch_state = state
            self.where = {name: legacy for name in state}
        else:
            raise CheckpointError(
                f"no weights in {directory}: expected {SAFETENSORS_FILE}, {SAFETENSORS_INDEX} "
                f"or {TORCH_BIN_FILE}"
            )

    def _open_safetensors(self, file: Path, stack: ExitStack) -> None:
        if not file.exists():
            raise CheckpointError(f"weights shard {file.name} not found in {file.parent}")
        try:
            handle = stack.enter_context(safe_open(str(file), framework="pt", device="cpu"))
        except Exception as exc:
            raise CheckpointError(
                f"{file}: not a readable safetensors file (truncated or corrupt?): {exc}"
            ) from exc
        self._handles[file] = handle
        for name in handle.keys():  # noqa: SIM118 (safe_open is not iterable)
            self.where[name] = file

    def resolve(self, name: str) -> str | None:
        """The stored name of `name`, allowing a bare-body export without the prefix."""
        if name in self.where:
            return name
        for prefix in BODY_PREFIXES:
            if name.startswith(prefix) and name[len(prefix):] in self.where:
                return name[len(prefix):]
        return None

    def shape(self, stored: str) -> tuple[int, ...]:
        file = self.where[stored]
        if file in self._handles:
            return tuple(self._handles[file].get_slice(stored).get_shape())
        return tuple(self._torch_state[stored].shape)

    def read(self, stored: str) -> Tensor:
        file = self.where[stored]
        try:
            if file in self._handles:
                return self._handles[file].get_tensor(stored)
            return self._torch_state[stored]
        except Exception as exc:
            raise CheckpointError(f"{file}: cannot read tensor {stored!r} ({exc})") from exc


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
        _load_quantized(model, directory, stored, quantization, target_dtype)
    else:
        # Quantize from the checkpoint's own precision, not from a bf16 copy of it.
        read_dtype = torch.float32 if quantization != "none" else target_dtype
        model.load_state_dict(_read_hf_state(model, directory, read_dtype), strict=True,
                              assign=True)
        if quantization != "none":
            try:
                quantize_model(model, quantization, group_size, target_dtype)
            except ValueError as exc:
                raise CheckpointError(f"{directory}: {exc}") from exc
            _cast_floats(model, target_dtype)
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


def _read_hf_state(model: Transformer, directory: Path, dtype: torch.dtype
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


def _cast_floats(model: Transformer, dtype: torch.dtype) -> None:
    """Parameters (norms, biases, embeddings) to `dtype`; quantized buffers keep theirs."""
    for module in model.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            setattr(module, name, torch.nn.Parameter(param.detach().to(dtype),
                                                     requires_grad=False))


def _load_quantized(model: Transformer, directory: Path, stored: Any, requested: str,
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
    _cast_floats(model, dtype)  # parameters to the serving dtype; quantized buffers as stored


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


# ---------------------------------------------------------------------------- writing


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


def build_model(cfg: ModelConfig, seed: int | None = None) -> Transformer:
    """A freshly initialised model for training (float32, CPU)."""
    model = Transformer(cfg)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    model.init_weights(generator)
    model.init_rope(torch.device("cpu"))
    return model
