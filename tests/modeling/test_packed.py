"""Prepacked (oneDNN) products are module replacements held by the model they belong to:
packing one model swaps its linears for `PackedLinear` / `PackedLMHead` with the same
results, leaves another model alone, and unpacking puts plain modules back."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from app.checkpoint import load_model
from app.modeling.packed import PackedLinear, PackedLMHead, pack_model, unpack_model


@pytest.mark.parametrize("arch", ["gpt2", "llama_linear_tied_mqa"])
def test_packing_replaces_modules_of_one_model_only(hf_checkpoint: Any, arch: str) -> None:
    if not torch.backends.mkldnn.is_available():
        pytest.skip("oneDNN is not available in this torch build: nothing to pack")
    directory, _ = hf_checkpoint(arch)
    packed = load_model(directory, dtype="float32", device="cpu").model
    plain = load_model(directory, dtype="float32", device="cpu").model
    ids = torch.randint(0, packed.config.vocab_size, (2, 9), generator=torch.Generator()
                        .manual_seed(0))
    with torch.no_grad():
        expected = plain.causal_lm_logits(ids)
        pack_model(packed)
        blocks = packed.blocks()
        assert all(isinstance(m, PackedLinear) for b in blocks
                   for m in (b.attn.qkv, b.attn.o, b.mlp.up, b.mlp.down))
        assert isinstance(packed.lm_head, PackedLMHead)
        assert not any(isinstance(m, (PackedLinear, PackedLMHead)) for m in plain.modules())
        torch.testing.assert_close(packed.causal_lm_logits(ids), expected, rtol=1e-4,
                                   atol=1e-4)
        # Saved state is unchanged by packing: the packed copies are not parameters.
        assert set(packed.state_dict()) == set(plain.state_dict())
        unpack_model(packed)
        assert not any(isinstance(m, (PackedLinear, PackedLMHead)) for m in packed.modules())
        assert type(packed.blocks()[0].mlp.up) is nn.Linear
        torch.testing.assert_close(packed.causal_lm_logits(ids), expected, rtol=1e-5,
                                   atol=1e-5)
