"""Write a LoRA adapter in PEFT's format, so an adapter trained here loads in `peft`
(`PeftModel.from_pretrained`) and in every server that reads PEFT adapters.

The layout is what peft 0.21.2 writes (checked against `get_peft_model_state_dict`):

  adapter_config.json        peft_type LORA, r, lora_alpha, use_rslora, target_modules, ...
  adapter_model.safetensors  base_model.model.<module>.lora_A.weight   (r, in)
                             base_model.model.<module>.lora_B.weight   (out, r)
                             base_model.model.<tensor>                 modules_to_save, e.g.
                                                                       score.weight

`<module>` is the Hugging Face module name (`model.layers.0.self_attn.q_proj`,
`transformer.h.0.attn.c_attn`): the names the base checkpoint's tensors carry, without
`.weight`. The caller gives unfused, unscaled A and B per module: PEFT multiplies by the
scaling (alpha / r, or alpha / sqrt(r) with rsLoRA) at run time.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

from app.modeling.config import ModelConfig, Task

ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."

TASK_TYPES: dict[Task, str] = {
    Task.CAUSAL_LM: "CAUSAL_LM",
    Task.SEQUENCE_CLASSIFICATION: "SEQ_CLS",
}

# GPT-2's projections are Conv1D modules storing (in, out) weights; peft records that with
# fan_in_fan_out (it sets it itself, with a warning, when a config omits it).
FAN_IN_FAN_OUT: dict[str, bool] = {"gpt2": True, "llama": False}


def _check_pair(module: str, a: Tensor, b: Tensor, rank: int) -> None:
    if a.dim() != 2 or b.dim() != 2 or a.shape[0] != rank or b.shape[1] != rank:
        raise ValueError(
            f"LoRA of {module}: A must be (r={rank}, in) and B (out, r={rank}), "
            f"got A {list(a.shape)} and B {list(b.shape)}")


def peft_config(
    config: ModelConfig,
    *,
    base_model_name_or_path: str,
    rank: int,
    alpha: float,
    use_rslora: bool,
    dropout: float,
    target_modules: list[str],
    modules_to_save: list[str] | None,
) -> dict[str, object]:
    """adapter_config.json's content: the fields peft's LoraConfig reads, at the values
    that mean "plain LoRA" for everything we do not use (no DoRA, no bias, no patterns)."""
    return {
        "peft_type": "LORA",
        "task_type": TASK_TYPES[config.task],
        "base_model_name_or_path": base_model_name_or_path,
        "revision": None,
        "inference_mode": True,
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
        "use_rslora": use_rslora,
        "use_dora": False,
        "bias": "none",
        "fan_in_fan_out": FAN_IN_FAN_OUT[config.family],
        "target_modules": sorted(target_modules),
        "modules_to_save": modules_to_save,
        "init_lora_weights": True,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }


def save_peft_adapter(
    directory: str | Path,
    config: ModelConfig,
    lora: Mapping[str, tuple[Tensor, Tensor]],
    *,
    base_model_name_or_path: str,
    rank: int,
    alpha: float,
    use_rslora: bool = False,
    dropout: float = 0.0,
    modules_to_save: Mapping[str, Tensor] | None = None,
) -> Path:
    """Write `lora` ({HF module name: (A (r, in), B (out, r))}) and `modules_to_save`
    ({HF tensor name, e.g. "score.weight": tensor}) as a PEFT adapter in `directory`.

    `config` is the base model's (its family names fan_in_fan_out, its task the
    task_type). Returns the directory."""
    if config.family not in FAN_IN_FAN_OUT:
        raise ValueError(f"no PEFT naming for model family {config.family!r}")
    if not lora:
        raise ValueError("a LoRA adapter needs at least one module")
    tensors: dict[str, Tensor] = {}
    for module, (a, b) in lora.items():
        _check_pair(module, a, b, rank)
        tensors[f"{PEFT_PREFIX}{module}.lora_A.weight"] = a
        tensors[f"{PEFT_PREFIX}{module}.lora_B.weight"] = b
    saved = dict(modules_to_save or {})
    for name, tensor in saved.items():
        tensors[PEFT_PREFIX + name] = tensor
    targets = sorted({module.rsplit(".", 1)[-1] for module in lora})
    # peft's modules_to_save names modules, not tensors: "score", not "score.weight".
    saved_modules = sorted({name.rsplit(".", 1)[0] for name in saved}) or None
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    raw = peft_config(config, base_model_name_or_path=base_model_name_or_path, rank=rank,
                      alpha=alpha, use_rslora=use_rslora, dropout=dropout,
                      target_modules=targets, modules_to_save=saved_modules)
    (out / ADAPTER_CONFIG_FILE).write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")
    weights = out / ADAPTER_WEIGHTS_FILE
    save_file({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()},
              str(weights), metadata={"format": "pt"})
    weights.chmod(0o644)  # safetensors writes 0600; the (non-root) server must read it
    return out
