"""PEFT LoRA adapters for tests, written by peft itself (a test-only dependency) from a
tiny transformers checkpoint: lora_B drawn at random (peft starts it at zero, which would
make an adapter that changes nothing), saved as adapter_config.json +
adapter_model.safetensors, exactly as users' adapters come."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def write_adapter(base: Path, out: Path, *, seed: int, rank: int = 4, alpha: float = 8.0,
                  targets: tuple[str, ...] = LLAMA_TARGETS, scale: float = 0.5) -> Path:
    """A random LoRA adapter of the causal LM at `base`, saved to `out`."""
    import peft
    import transformers

    logging.getLogger("transformers").setLevel(logging.ERROR)
    model = transformers.AutoModelForCausalLM.from_pretrained(base)
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets),
                             task_type="CAUSAL_LM", lora_dropout=0.0)
    torch.manual_seed(seed)
    peft_model = peft.get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, scale)
    peft_model.save_pretrained(out)
    assert (out / "adapter_model.safetensors").exists()
    return out
