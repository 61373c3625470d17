"""Reading PEFT LoRA adapters (`adapter_config.json` + `adapter_model.safetensors`) into
our fused module layout.

PEFT keeps one LoRA pair per Hugging Face projection: A (r, in) and B (out, r), with
y = W x + (alpha / r) * B A x (alpha / sqrt(r) with rsLoRA). Our model fuses q|k|v into
one product and gate|up into another (`app.modeling.weights`), so the projections that
share an input become one LoRA on the fused module: their A's stacked along the rank
dimension, their B's placed block-diagonally (each B writes only its own rows of the
fused output; a projection without a LoRA contributes zero rows). Each projection's
scaling is folded into its B block, so the delta is just B A x.

GPT-2's Conv1D stores its weights (in, out), but PEFT's LoRA on a Conv1D still stores
A (r, in) and B (out, r) (`fan_in_fan_out` only concerns merging into the base
weight), so GPT-2 adapters need no transposition.

Which modules carry a LoRA is read from the tensors in the file (a module named by
`target_modules` but absent from the file would have PEFT's zero B: no effect);
`target_modules` is checked only for names this model does not have. `rank_pattern` and
`alpha_pattern` are honoured with PEFT's own key matching. Refused with a clear
AdapterError: `.bin` weights, a bias other than "none", DoRA, LoRA biases, adapters on
embeddings or the LM head, and `modules_to_save` other than a SEQ_CLS adapter's `score`
head (carried as `LoraAdapter.score`).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from app.modeling.config import ModelConfig
from app.modeling.lora import AdapterError, LoraAdapter, fused_sizes

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
LEGACY_WEIGHTS_FILE = "adapter_model.bin"


@dataclass(frozen=True)
class Part:
    """One Hugging Face projection as a slice of our fused module."""

    module: str  # one of MODULES
    index: int  # its place among the fused module's parts


# (family) -> (block part, projection) -> where it lands in our layout
PARTS: dict[str, dict[tuple[str, str], Part]] = {
    "llama": {
        ("self_attn", "q_proj"): Part("qkv", 0), ("self_attn", "k_proj"): Part("qkv", 1),
        ("self_attn", "v_proj"): Part("qkv", 2), ("self_attn", "o_proj"): Part("o", 0),
        ("mlp", "gate_proj"): Part("up", 0), ("mlp", "up_proj"): Part("up", 1),
        ("mlp", "down_proj"): Part("down", 0),
    },
    "gpt2": {
        ("attn", "c_attn"): Part("qkv", 0), ("attn", "c_proj"): Part("o", 0),
        ("mlp", "c_fc"): Part("up", 0), ("mlp", "c_proj"): Part("down", 0),
    },
}
# A module path ending in the layer index, its block part and the projection.
LAYER_PATTERNS: dict[str, re.Pattern[str]] = {
    "llama": re.compile(r"(?:.*\.)?layers\.(\d+)\.(self_attn|mlp)\.(\w+)"),
    "gpt2": re.compile(r"(?:.*\.)?h\.(\d+)\.(attn|mlp)\.(\w+)"),
}
TENSOR_NAME = re.compile(r"base_model\.model\.(.+)\.(lora_A|lora_B)(?:\.default)?\.weight")
SCORE_NAME = re.compile(r"base_model\.model\.score(?:\.modules_to_save\.default)?\.weight")


def _scaling(alpha: float, rank: int, rslora: bool) -> float:
    return alpha / math.sqrt(rank) if rslora else alpha / rank


def _pattern_value(patterns: dict[str, Any], key: str, default: float) -> float:
    """PEFT's `get_pattern_key`: a pattern matches a key it ends (after a dot)."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", key):
            return float(value)
    return default


def _read_config(path: Path) -> dict[str, Any]:
    file = path / CONFIG_FILE
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise AdapterError(f"{CONFIG_FILE} not found in {path}: not a PEFT adapter "
                           "directory") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterError(f"{file}: not valid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise AdapterError(f"{file}: expected a JSON object")
    return raw


def _check_config(raw: dict[str, Any], config: ModelConfig, file: Path) -> None:
    peft_type = str(raw.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise AdapterError(f"{file}: peft_type {peft_type!r}: only LORA adapters are served")
    refusals = [
        (raw.get("bias", "none") != "none",
         f"bias {raw.get('bias')!r} (trained biases change the base model's own biases): "
         "only bias \"none\" is supported"),
        (bool(raw.get("use_dora")), "use_dora: DoRA adapters are not supported"),
        (bool(raw.get("lora_bias")), "lora_bias: LoRA B biases are not supported"),
        (bool(raw.get("target_parameters")), "target_parameters are not supported"),
        (bool(raw.get("use_qalora")), "use_qalora is not supported"),
    ]
    for refused, why in refusals:
        if refused:
            raise AdapterError(f"{file}: {why}")
    saved = raw.get("modules_to_save") or []
    if isinstance(saved, str):
        saved = [saved]
    # PEFT adds "classifier" and "score" for SEQ_CLS; only `score` exists in our models.
    extra = [m for m in saved if m not in ("score", "classifier")]
    if extra or (saved and raw.get("task_type") != "SEQ_CLS"):
        raise AdapterError(
            f"{file}: modules_to_save {saved!r}: only the classification head `score` of a "
            "SEQ_CLS adapter is supported (fully trained copies of other modules are not)")
    targets = raw.get("target_modules")
    if isinstance(targets, list):
        known = {name for _, name in PARTS[config.family]}
        unknown = sorted(set(map(str, targets)) - known)
        if unknown:
            raise AdapterError(
                f"{file}: target_modules {unknown} are not projections of a "
                f"{config.model_type} model (supported: {', '.join(sorted(known))})")


def _open_weights(path: Path) -> dict[str, Tensor]:
    file = path / WEIGHTS_FILE
    if not file.exists():
        if (path / LEGACY_WEIGHTS_FILE).exists():
            raise AdapterError(
                f"{path / LEGACY_WEIGHTS_FILE}: pickled .bin adapters are not loaded (they can "
                f"run code); save it as {WEIGHTS_FILE} (peft: "
                "save_pretrained(..., safe_serialization=True))")
        raise AdapterError(f"{WEIGHTS_FILE} not found in {path}")
    try:
        with safe_open(str(file), framework="pt") as handle:
            return {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as exc:
        raise AdapterError(f"{file}: unreadable safetensors file ({exc})") from exc


def read_peft_adapter(path: Path, config: ModelConfig, *, name: str, max_rank: int
                      ) -> LoraAdapter:
    """The adapter at `path` for a model of `config`, in our fused layout (float32)."""
    if not path.is_dir():
        raise AdapterError(f"adapter directory {path} does not exist")
    raw = _read_config(path)
    file = path / CONFIG_FILE
    _check_config(raw, config, file)
    try:
        rank, alpha = int(raw["r"]), float(raw.get("lora_alpha", raw["r"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise AdapterError(f"{file}: needs an integer `r` and a number `lora_alpha`") from exc
    rslora = bool(raw.get("use_rslora", False))
    rank_pattern = raw.get("rank_pattern") or {}
    alpha_pattern = raw.get("alpha_pattern") or {}
    tensors = _open_weights(path)
    pairs: dict[str, dict[str, Tensor]] = {}
    score: Tensor | None = None
    for tensor_name, tensor in tensors.items():
        if SCORE_NAME.fullmatch(tensor_name):
            score = tensor.float()
            continue
        m = TENSOR_NAME.fullmatch(tensor_name)
        if m is None:
            raise AdapterError(
                f"{path / WEIGHTS_FILE}: tensor {tensor_name!r} is not a LoRA A/B weight of a "
                "supported projection (adapters on embeddings, the LM head or other modules "
                "are not supported)")
        pairs.setdefault(m.group(1), {})[m.group(2)] = tensor.float()
    if score is not None and config.hidden_size != score.shape[-1]:
        raise AdapterError(f"{path}: its score head expects hidden size {score.shape[-1]}, "
                           f"this model has {config.hidden_size}")

    sizes = fused_sizes(config)
    parts: list[dict[str, dict[int, tuple[Tensor, Tensor]]]] = [
        {} for _ in range(config.num_layers)]
    targets: set[str] = set()
    max_part_rank = 0
    pattern, table = LAYER_PATTERNS[config.family], PARTS[config.family]
    for module_key, pair in sorted(pairs.items()):
        m = pattern.fullmatch(module_key)
        part = table.get((m.group(2), m.group(3))) if m else None
        if m is None or part is None:
            raise AdapterError(f"{path}: module {module_key!r} is not a projection of a "
                               f"{config.model_type} model this server can adapt")
        layer = int(m.group(1))
        if layer >= config.num_layers:
            raise AdapterError(f"{path}: module {module_key!r} is past this model's "
                               f"{config.num_layers} layers (another base model?)")
        if set(pair) != {"lora_A", "lora_B"}:
            raise AdapterError(f"{path}: module {module_key!r} lacks its "
                               f"{({'lora_A', 'lora_B'} - set(pair)).pop()} weight")
        a, b = pair["lora_A"], pair["lora_B"]
        outs, fan_in = sizes[part.module]
        out = outs[part.index]
        r = a.shape[0]
        if a.dim() != 2 or b.dim() != 2 or a.shape[1] != fan_in or b.shape != (out, r):
            # the side of the product that is the hidden size names the likely cause
            theirs = a.shape[-1] if part.module in ("qkv", "up") else b.shape[0]
            hint = (f"hidden size {theirs} vs {config.hidden_size} here"
                    if theirs != config.hidden_size else "other projection sizes")
            raise AdapterError(
                f"{path}: {module_key} has A {tuple(a.shape)} and B {tuple(b.shape)}, this "
                f"model needs A (r, {fan_in}) and B ({out}, r): the adapter was made for "
                f"another base model ({hint})")
        if r > max_rank:
            raise AdapterError(f"{path}: {module_key} has rank {r}, above the server's "
                               f"--max-lora-rank {max_rank}")
        expected_r = _pattern_value(rank_pattern, module_key, rank)
        if r != int(expected_r):
            raise AdapterError(f"{path}: {module_key} has rank {r} but the config says "
                               f"{int(expected_r)}")
        scale = _scaling(_pattern_value(alpha_pattern, module_key, alpha), r, rslora)
        parts[layer].setdefault(part.module, {})[part.index] = (a, b * scale)
        targets.add(m.group(3))
        max_part_rank = max(max_part_rank, r)
    if not targets:
        raise AdapterError(f"{path / WEIGHTS_FILE}: holds no LoRA weights")
    weights = [{module: _fuse(by_index, *sizes[module]) for module, by_index in layer.items()}
               for layer in parts]
    part_ranks = [{module: tuple(by_index[i][0].shape[0] if i in by_index else 0
                                 for i in range(len(sizes[module][0])))
                   for module, by_index in layer.items()} for layer in parts]
    return LoraAdapter(name=name, path=path, rank=rank, alpha=alpha, use_rslora=rslora,
                       scaling=_scaling(alpha, rank, rslora), weights=weights,
                       part_ranks=part_ranks, target_modules=tuple(sorted(targets)),
                       score=score,
                       base_model=raw.get("base_model_name_or_path"),
                       max_part_rank=max_part_rank)


def _fuse(by_index: dict[int, tuple[Tensor, Tensor]], outs: tuple[int, ...], fan_in: int
          ) -> tuple[Tensor, Tensor]:
    """Stack the parts' A's along the rank dimension; place their B's block-diagonally
    (rows: the part's slice of the fused output; columns: its slice of the ranks)."""
    present = sorted(by_index)
    a = torch.cat([by_index[i][0] for i in present]).reshape(-1, fan_in)
    b = torch.zeros(sum(outs), a.shape[0])
    col = 0
    for i in present:
        part_b = by_index[i][1]
        row = sum(outs[:i])
        b[row:row + outs[i], col:col + part_b.shape[1]] = part_b
        col += part_b.shape[1]
    return a, b
