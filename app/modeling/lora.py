"""LoRA on top of any base product: y = base(x) + B A x, per token, for a mixed batch.

The resident adapters live in fixed-shape buffers owned by `AdapterSlots`
(app.engine.lora_slots), one pair per layer and fused module (qkv, o, up, down):
A (max_loras, R, in) and B (max_loras, out, R), where R is the module's rank capacity
(--max-lora-rank times the projections it fuses: 3 for Llama's q|k|v, 2 for gate|up; zero
padded below). Loading an adapter copies into its slot, so no shape ever changes and
compiled graphs stay valid.

A step passes `LoraStep` to `Transformer.forward`: per layer the A/B to use, and a `mask`
that also says which of two forms runs (`lora_delta`), picked per step by AdapterSlots:
  - one adapter in the step (batch-1, or one adapter beside base rows): that slot's A and
    B, and a (1, T, 1) mask that zeroes base rows: two thin products per module (in
    compiled few-row graphs, multiply-and-reduce that inductor fuses, like the base);
  - several adapters: every slot's A and B, and (max_loras, n) token rows per slot
    (padded with an index of a zero row): each slot's rows are gathered, go through two
    batched products, and are added back (traced into the compiled graph with the rows
    per slot symbolic above one, so the step's mix never recompiles; as an opaque custom
    op instead, bench/lora.py measured 0.71-0.75x where traced gives 0.78x: inductor
    fuses the gather and the scatter).
A step without adapter rows passes no LoraStep: the model runs exactly the graphs it
runs without LoRA. The base product underneath can be anything (float, int8/int4,
prepacked): the delta is added to its output.

Why (bench/lora_kernels.py: every layer's qkv, o, up and down, eager, 4 slots of rank 16,
1 thread, the fastest of 9 interleaved rounds; AMD EPYC Zen 5 with AVX-512 BF16/VNNI,
2 vCPUs shared with other work, load average ~4.5). Extra time over the base products,
the rows spread over 4 adapters; "one slot" is every row on one adapter, the floor:

  shape (dtype)       rows  one slot  grouped  all slots  segments  loop per  gather per
                                      (served)   masked   (sorted)   adapter     token
  default-lm (fp32)     32     +26%     +52%      +65%      +52%      +65%       +730%
                       256     +20%     +33%      +87%      +29%      +26%         -
  Llama 134M (bf16)     32     +14%     +37%      +35%      +60%      +66%       +606%
                       256      +9%     +28%      +26%      +22%      +21%         -

Gathering each token's A and B copies T * r * (in + out) elements per module. Every
token through every slot ("all slots masked") does max_loras times the work, which
costs most on small models and long prompt chunks. A Python loop over adapters (on
gathered or on contiguous rows) costs two products per adapter per module, and has
data-dependent shapes. The grouped form is never far from the best and has a fixed
number of operations whatever the mix, which under load (each operation waits for
both threads) counts as much as the arithmetic.

In the engine (bench/lora.py: default-lm, 4 adapters of rank 16 on every projection,
compiled, 1 thread, same machine under load; docs/PERFORMANCE.md has the table): 32
concurrent requests over 4 adapters 0.77-0.92x the base's tokens/s (CPU time 0.71-0.84x),
batch-1 with an adapter 0.68-0.92x (CPU time 0.79-0.86x).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from app.modeling.config import ModelConfig


class AdapterError(ValueError):
    """An adapter that cannot be used with this model; the message says what to fix."""


LayerWeights = dict[str, tuple[Tensor, Tensor]]


@dataclass
class LoraAdapter:
    """An adapter in our layout. `weights[layer][module]` = (A (r_eff, in), B (out, r_eff))
    with the scaling folded into B; modules without a LoRA are absent."""

    name: str
    path: Path
    rank: int
    alpha: float
    use_rslora: bool
    scaling: float
    weights: list[LayerWeights] = field(default_factory=list)
    target_modules: tuple[str, ...] = ()  # the Hugging Face projections it adapts
    score: Tensor | None = None  # SEQ_CLS adapters: the classification head (labels, H)
    base_model: str | None = None  # `base_model_name_or_path`, informational
    max_part_rank: int = 0  # the largest rank of any one projection (--max-lora-rank bounds it)


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
    """What one block needs: the mask or segments (see `lora_delta`), each module's A, B."""

    mask: Tensor
    qkv_a: Tensor
    qkv_b: Tensor
    o_a: Tensor
    o_b: Tensor
    up_a: Tensor
    up_b: Tensor
    down_a: Tensor
    down_b: Tensor


def lora_delta(x: Tensor, a: Tensor, b: Tensor, mask: Tensor, gemv: bool = False) -> Tensor:
    """x (B, T, in) -> (B, T, out): each token's B A x. Two forms (see the module's
    docstring), told apart by `mask`:
      - float (B, T, 1): one slot's a (R, in) and b (out, R); the mask zeroes base rows;
      - int64 (max_loras, n): per slot, the flattened token rows it serves, padded with
        B*T (a zero row); every slot's a (max_loras, R, in) and b (max_loras, out, R).
    `gemv` (compiled graphs of a few rows, as for the base products: see
    `transformer.dense`): the one-slot form as multiply-and-reduce, which inductor fuses
    into the graph instead of calling two tiny matrix products."""
    if mask.dtype == torch.int64:
        return grouped_delta(x, a, b, mask)
    if gemv:
        h = (x.float()[..., None, :] * a.float()).sum(-1) * mask  # (B, T, R)
        return (h[..., None, :] * b.float()).sum(-1).to(x.dtype)
    h = torch.matmul(x, a.t())  # (B, T, R): shrink
    return torch.matmul(h * mask, b.t())  # (B, T, out): expand


def grouped_delta(x: Tensor, a: Tensor, b: Tensor, rows: Tensor) -> Tensor:
    """x (B, T, in); a (S, R, in), b (S, out, R); rows (S, n): slot s's token rows (of
    the flattened B*T), padded with B*T. Each slot's rows are gathered (a zero row for the
    padding), go through two batched products, and are added back to their places."""
    flat = x.reshape(-1, x.shape[-1])
    tokens = flat.shape[0]
    padded = torch.cat([flat, flat.new_zeros(1, flat.shape[1])])[rows]  # (S, n, in)
    h = torch.bmm(padded, a.transpose(1, 2))  # (S, n, R): shrink
    y = torch.bmm(h, b.transpose(1, 2))  # (S, n, out): expand
    out = flat.new_zeros(tokens + 1, b.shape[1])
    out.index_add_(0, rows.flatten(), y.flatten(0, 1))
    return out[:tokens].view(*x.shape[:-1], b.shape[1])


def masked_delta(x: Tensor, a: Tensor, b: Tensor, mask: Tensor) -> Tensor:
    """The all-slots alternative (measured in bench/lora_kernels.py, not served): mask
    (B, T, k) one-hot per token, a (k*R, in), b (out, k*R): every token through every
    slot's product."""
    h = torch.matmul(x, a.t())
    k = mask.shape[-1]
    h = (h.unflatten(-1, (k, -1)) * mask[..., None]).flatten(-2)
    return torch.matmul(h, b.t())


@dataclass(frozen=True)
class LoraStep:
    """The LoRA inputs of one forward: the mask and, per layer, the A/B views."""

    mask: Tensor  # (1, T, 1) float, or (max_loras, n) int64 rows per slot: see lora_delta
    layers: tuple[tuple[Tensor, ...], ...]  # per layer: the 8 views of LayerLora

    def layer(self, i: int) -> LayerLora:
        return LayerLora(self.mask, *self.layers[i])
