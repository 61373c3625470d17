"""LoRA on top of any base product: y = base(x) + B A x, per token, for a mixed batch.

The resident adapters live in fixed-shape buffers owned by `AdapterSlots`, one pair per
layer and fused module (qkv, o, up, down): A (max_loras * R, in) and B (out,
max_loras * R), slot s owning rows (of A) and columns (of B) s*R:(s+1)*R, where R is the
module's rank capacity (--max-lora-rank times the projections it fuses: 3 for Llama's
q|k|v, 2 for gate|up; zero padded below). Loading an adapter copies into its slot, so no
shape ever changes and compiled graphs stay valid.

A step passes `LoraStep` to `Transformer.forward`: a per-token mask (1, T, k) and, per
layer, the A/B views to use. Two forms, picked per step by the runner:
  - one adapter in the step (batch-1, or one adapter beside base rows): k = 1 and the
    views are that slot's own rows/columns: two thin products (r * (in + out) per token);
  - several: k = max_loras and the views are the whole buffers; the mask is each token's
    one-hot slot (all zero for a base row): h = x A^T, masked per slot, then h B^T.
A step without adapter rows passes no LoraStep: the model runs exactly the graphs it
runs without LoRA. Each form is its own compiled graph (see app.modeling.compile).

Why the all-slots product (measured with bench/lora_kernels.py on AMD EPYC Zen 5, 2 vCPUs,
shared and noisy; see MEASURED below): per-token gathering of A and B copies every
token's adapter (T * r * (in + out) elements per module: for 32 decode rows that is 8x the
bytes of four adapters' weights) and grouping rows per adapter costs a gather, two
products and a scatter per adapter per module in Python (variable shapes: eager only);
the masked all-slots product is two plain GEMMs whose extra work grows with max_loras,
not with the tokens, and is one fixed-shape graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from app.modeling.config import ModelConfig

MODULES = ("qkv", "o", "up", "down")  # our fused modules that can carry a LoRA


def fused_sizes(config: ModelConfig) -> dict[str, tuple[tuple[int, ...], int]]:
    """Per module of ours: its parts' output sizes (in fused order) and its input size."""
    H, inner = config.hidden_size, config.intermediate_size
    q, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    if config.family == "gpt2":
        return {"qkv": ((3 * H,), H), "o": ((H,), H), "up": ((inner,), H),
                "down": ((H,), inner)}
    return {"qkv": ((q, kv, kv), H), "o": ((H,), q), "up": ((inner, inner), H),
            "down": ((H,), inner)}


class LayerLora(NamedTuple):
    """What one block needs: the per-token mask (B, T, k) and each module's A, B."""

    mask: Tensor
    qkv_a: Tensor
    qkv_b: Tensor
    o_a: Tensor
    o_b: Tensor
    up_a: Tensor
    up_b: Tensor
    down_a: Tensor
    down_b: Tensor


def lora_delta(x: Tensor, a: Tensor, b: Tensor, mask: Tensor) -> Tensor:
    """x (B, T, in), a (k*R, in), b (out, k*R), mask (B, T, k) -> (B, T, out): each token's
    B A x over the k slots its mask selects."""
    h = torch.matmul(x, a.t())  # (B, T, k*R): shrink
    k = mask.shape[-1]
    h = (h.unflatten(-1, (k, -1)) * mask[..., None]).flatten(-2)
    return torch.matmul(h, b.t())  # (B, T, out): expand


@dataclass(frozen=True)
class LoraStep:
    """The LoRA inputs of one forward: the mask and, per layer, the A/B views."""

    mask: Tensor  # (1, T, k)
    layers: tuple[tuple[Tensor, ...], ...]  # per layer: the 8 views of LayerLora

    def layer(self, i: int) -> LayerLora:
        return LayerLora(self.mask, *self.layers[i])
