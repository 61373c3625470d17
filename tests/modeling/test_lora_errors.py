"""Adapters that cannot be served are refused with an AdapterError that says why; LoRA on
quantized (int8) products adds the same delta as on float ones."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from app.checkpoint import load_model
from app.checkpoint.lora import read_peft_adapter
from app.engine.lora_slots import AdapterSlots
from app.modeling.lora import AdapterError
from app.modeling.quantized_model import quantize_model
from tests.lora_helpers import ALL_LINEAR, QV, forward_with, make_peft_adapter

ARCH = "llama_gqa_llama3"


@pytest.fixture(scope="module")
def adapter_dir(hf_checkpoint: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    _, ref = hf_checkpoint(ARCH)
    directory = tmp_path_factory.mktemp("adapter")
    make_peft_adapter(ref, directory, targets=ALL_LINEAR["llama"], r=4, alpha=8.0)
    return directory


def edited(adapter_dir: Path, tmp_path: Path, **changes: Any) -> Path:
    """A copy of the adapter with these adapter_config.json keys changed."""
    copy = tmp_path / "edited"
    shutil.copytree(adapter_dir, copy)
    raw = json.loads((copy / "adapter_config.json").read_text())
    (copy / "adapter_config.json").write_text(json.dumps({**raw, **changes}))
    return copy


def test_refusals_say_why(hf_checkpoint: Any, adapter_dir: Path, tmp_path: Path) -> None:
    directory, _ = hf_checkpoint(ARCH)
    cfg = load_model(directory, dtype="float32", device="cpu").config

    def refused(path: Path, match: str, config: Any = cfg, max_rank: int = 8) -> None:
        with pytest.raises(AdapterError, match=match):
            read_peft_adapter(path, config, name="x", max_rank=max_rank)

    refused(adapter_dir, r"rank 4, above the server's --max-lora-rank 2", max_rank=2)
    refused(adapter_dir, r"hidden size 64 vs 128",
            config=replace(cfg, hidden_size=128))
    refused(adapter_dir, r"past this model's 1 layers", config=replace(cfg, num_layers=1))
    refused(tmp_path / "nowhere", "does not exist")
    (tmp_path / "empty").mkdir()
    refused(tmp_path / "empty", "adapter_config.json not found")
    refused(edited(adapter_dir, tmp_path / "1", bias="all"), 'only bias "none"')
    refused(edited(adapter_dir, tmp_path / "2", use_dora=True), "DoRA")
    refused(edited(adapter_dir, tmp_path / "3", peft_type="IA3"), "only LORA adapters")
    refused(edited(adapter_dir, tmp_path / "4", modules_to_save=["lm_head"]),
            "modules_to_save")
    refused(edited(adapter_dir, tmp_path / "5", target_modules=["q_proj", "c_attn"]),
            r"\['c_attn'\] are not projections of a llama model")
    refused(edited(adapter_dir, tmp_path / "6", rank_pattern={"q_proj": 2}),
            "has rank 4 but the config says 2")
    # .bin: refused, safetensors only
    pickled = tmp_path / "pickled"
    shutil.copytree(adapter_dir, pickled)
    tensors = load_file(pickled / "adapter_model.safetensors")
    torch.save(tensors, pickled / "adapter_model.bin")
    (pickled / "adapter_model.safetensors").unlink()
    refused(pickled, r"adapter_model.bin: pickled .bin adapters are not loaded.*safetensors")
    (pickled / "adapter_model.bin").unlink()
    refused(pickled, "adapter_model.safetensors not found")
    # an embedding LoRA (or anything but the projections) is named and refused
    emb = tmp_path / "emb"
    shutil.copytree(adapter_dir, emb)
    save_file({**tensors, "base_model.model.model.embed_tokens.lora_embedding_A":
               torch.zeros(4, 10)}, emb / "adapter_model.safetensors")
    refused(emb, "embed_tokens.lora_embedding_A' is not a LoRA A/B weight")
    # half a pair
    half = tmp_path / "half"
    shutil.copytree(adapter_dir, half)
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
    save_file({k: v for k, v in tensors.items() if k != key},
              half / "adapter_model.safetensors")
    refused(half, "lacks its lora_B weight")
    # the other family's names: a GPT-2 adapter on a Llama model
    _, gpt2 = hf_checkpoint("gpt2")
    make_peft_adapter(gpt2, tmp_path / "gpt2", targets=QV["gpt2"])
    refused(tmp_path / "gpt2", r"\[.c_attn.\] are not projections of a llama model")


def test_slots_refuse_what_they_cannot_hold(hf_checkpoint: Any, adapter_dir: Path) -> None:
    directory, _ = hf_checkpoint(ARCH)
    loaded = load_model(directory, dtype="float32", device="cpu")
    adapter = read_peft_adapter(adapter_dir, loaded.config, name="a", max_rank=8)
    with pytest.raises(AdapterError, match="--max-loras 0"):
        AdapterSlots(loaded.model, 0, 8).register(adapter)
    with pytest.raises(AdapterError, match="above --max-lora-rank 2"):
        AdapterSlots(loaded.model, 1, 2).register(adapter)


def test_adapter_on_int8_products_adds_the_dense_delta(hf_checkpoint: Any,
                                                       adapter_dir: Path) -> None:
    """Quantized base + our slots' LoRA == quantized base + B A x added by hooks."""
    directory, _ = hf_checkpoint(ARCH)
    loaded = load_model(directory, dtype="float32", device="cpu")
    model = loaded.model
    quantize_model(model, "int8")
    adapter = read_peft_adapter(adapter_dir, loaded.config, name="a", max_rank=8)
    slots = AdapterSlots(model, 2, 8)
    slots.register(adapter)
    ids = torch.randint(0, loaded.config.vocab_size, (2, 12),
                        generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = forward_with(model, slots, ids, ["a", None])
        base = forward_with(model, slots, ids, [None, None])
        handles = []
        for block, weights in zip(model.blocks(), adapter.weights, strict=True):
            modules = {"qkv": block.attn.qkv, "o": block.attn.o, "up": block.mlp.up,
                       "down": block.mlp.down}
            for name, (a, b) in weights.items():
                def hook(_: Any, inputs: Any, out: torch.Tensor,
                         a: torch.Tensor = a, b: torch.Tensor = b) -> torch.Tensor:
                    return out + inputs[0] @ a.t() @ b.t()
                handles.append(modules[name].register_forward_hook(hook))
        try:
            expected = forward_with(model, slots, ids, [None, None])
        finally:
            for h in handles:
                h.remove()
    assert type(model.blocks()[0].attn.qkv).__name__ == "QuantizedLinear"
    assert (got[0] - expected[0]).abs().max().item() <= 1e-4
    assert (got[1] - base[1]).abs().max().item() == 0.0  # the base row beside it
    assert (got[0] - base[0]).abs().max().item() > 0.05
