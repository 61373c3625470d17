"""PEFT adapters for tests, written by `peft` itself (the reference), with random nonzero
A and B (PEFT starts B at zero, which would make every comparison trivially pass)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from app.engine.lora_slots import AdapterSlots
from app.modeling.lora import LoraStep
from app.modeling.transformer import Transformer

ALL_LINEAR = {
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}
QV = {"gpt2": ["c_attn"], "llama": ["q_proj", "v_proj"]}


def family(arch: str) -> str:
    return "gpt2" if arch.startswith("gpt2") else "llama"


def make_peft_adapter(base: Any, directory: Path, *, targets: list[str] | str, r: int = 4,
                      alpha: float = 8.0, rslora: bool = False, seed: int = 1,
                      **extra: Any) -> Any:
    """A PeftModel on a copy of `base` (never mutated), saved to `directory`."""
    from peft import LoraConfig, get_peft_model

    fan_in_fan_out = "GPT2" in type(base).__name__
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, use_rslora=rslora,
                        lora_dropout=0.0, fan_in_fan_out=fan_in_fan_out, **extra)
    model = get_peft_model(copy.deepcopy(base), config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
    model.save_pretrained(directory)
    return model


def forward_with(model: Transformer, slots: AdapterSlots, ids: torch.Tensor,
                 names: list[str | None]) -> torch.Tensor:
    """Logits (B, T, V) of equal-length rows, row i with adapter names[i] (None: the
    base), through the dense path."""
    B, T = ids.shape
    slot_of = slots.activate(names)
    outs = []
    for row in range(B):  # the dense reference attention takes one sequence a row
        lora: LoraStep | None = slots.step([slot_of[row]], [T])
        hidden = model(ids[row:row + 1], torch.arange(T)[None], None, lora)
        outs.append(model.logits(hidden)[0])
    return torch.stack(outs)
