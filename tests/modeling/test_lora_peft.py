"""LoRA adapters against `transformers` + `peft` (the reference) on tiny random models:
logits within 1e-4 in float32, for every family, with and without rsLoRA, on subsets of
the projections and on all of them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from app.checkpoint import load_model
from app.checkpoint.lora import read_peft_adapter
from app.engine.lora_slots import AdapterSlots
from tests.lora_helpers import ALL_LINEAR, QV, family, forward_with, make_peft_adapter


def ids_for(vocab: int, rows: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (rows, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("arch", "targets", "rslora"), [
    ("llama_gqa_llama3", "all", False), ("llama_gqa_llama3", "qv", True),
    ("qwen2", "all", True), ("qwen2", "qv", False),
    ("mistral", "all", False), ("mistral", "all", True),
    ("gpt2", "all", False), ("gpt2", "all", True), ("gpt2", "qv", False),
])
def test_adapter_logits_match_peft(arch: str, targets: str, rslora: bool, hf_checkpoint,
                                   tmp_path: Path) -> None:
    directory, ref = hf_checkpoint(arch)
    fam = family(arch)
    modules = ALL_LINEAR[fam] if targets == "all" else QV[fam]
    peft_model = make_peft_adapter(ref, tmp_path, targets=modules, r=4, alpha=8.0,
                                   rslora=rslora)
    ours = load_model(directory, dtype="float32", device="cpu")
    adapter = read_peft_adapter(tmp_path, ours.config, name="a", max_rank=8)
    assert adapter.rank == 4 and adapter.use_rslora is rslora
    assert adapter.scaling == pytest.approx(8.0 / 2.0 if rslora else 8.0 / 4.0)
    assert set(adapter.target_modules) == set(modules)
    slots = AdapterSlots(ours.model, max_loras=2, max_rank=8)
    slots.register(adapter)
    ids = ids_for(ours.config.vocab_size, 2, 24)
    with torch.no_grad():
        expected = peft_model(ids).logits
        base = ref(ids).logits
        got = forward_with(ours.model, slots, ids, ["a", "a"])
    # the adapter changes the logits for real, and we follow it
    assert (expected - base).abs().max().item() > 0.05
    assert (got - expected).abs().max().item() <= 1e-4


def test_rank_and_alpha_patterns_match_peft(hf_checkpoint, tmp_path: Path) -> None:
    directory, ref = hf_checkpoint("llama_gqa_llama3")
    peft_model = make_peft_adapter(
        ref, tmp_path, targets=ALL_LINEAR["llama"], r=4, alpha=8.0,
        rank_pattern={"v_proj": 2, "layers.1.mlp.down_proj": 6}, alpha_pattern={"q_proj": 3.0})
    ours = load_model(directory, dtype="float32", device="cpu")
    adapter = read_peft_adapter(tmp_path, ours.config, name="p", max_rank=8)
    assert adapter.max_part_rank == 6
    slots = AdapterSlots(ours.model, max_loras=1, max_rank=8)
    slots.register(adapter)
    ids = ids_for(ours.config.vocab_size, 1, 20)
    with torch.no_grad():
        expected = peft_model(ids).logits
        got = forward_with(ours.model, slots, ids, ["p"])
    assert (got - expected).abs().max().item() <= 1e-4


def test_regex_target_modules_match_peft(hf_checkpoint, tmp_path: Path) -> None:
    directory, ref = hf_checkpoint("qwen2")
    peft_model = make_peft_adapter(ref, tmp_path, targets=r".*\.layers\.1\..*(k_proj|up_proj)",
                                   r=3, alpha=5.0)
    ours = load_model(directory, dtype="float32", device="cpu")
    adapter = read_peft_adapter(tmp_path, ours.config, name="re", max_rank=4)
    assert adapter.target_modules == ("k_proj", "up_proj")
    assert adapter.weights[0] == {}
    slots = AdapterSlots(ours.model, max_loras=1, max_rank=4)
    slots.register(adapter)
    ids = ids_for(ours.config.vocab_size, 1, 16)
    with torch.no_grad():
        expected = peft_model(ids).logits
        got = forward_with(ours.model, slots, ids, ["re"])
    assert (got - expected).abs().max().item() <= 1e-4
