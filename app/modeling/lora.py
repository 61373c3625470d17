"""LoRA on top of any base product: y = base(x) + B A x, per token, for a mixed batch.

The resident adapters live in fixed-shape buffers owned by `AdapterSlots`
(app.engine.lora_slots), one pair per layer and fused module (qkv, o, up, down):
A (max_loras, R, in) and B stored transposed, Bt (max_loras, R, out). R is the module's
rank capacity: --max-lora-rank for each projection it fuses (3 for Llama's q|k|v, 2 for
gate|up), and projection p's ranks sit at rows [p * max_rank, (p + 1) * max_rank) of both,
zero padded. So Bt is block-diagonal at fixed places: projection p's block is
Bt[p * max_rank:(p + 1) * max_rank, its slice of the output], and the fused forms below
multiply only those blocks, never the zeros around them (2/3 of q|k|v's expand, 1/2 of
gate|up's). Loading an adapter copies into its slot, so no shape ever changes and
compiled graphs stay valid.

A step passes `LoraStep` to `Transformer.forward`; which of three forms runs is picked
per step by AdapterSlots (`lora_delta` tells them apart):
  - compiled graphs, any number of adapters: every layer's buffers stacked, (L,
    max_loras, R, in|out), indexed per layer inside the graph (8 graph inputs, not 8 per
    layer: each input costs guard checks on every call), each token's slot (1, T) and a
    (1, T, 1) mask that zeroes base rows. Each token's rows of A and Bt are indexed
    inside fused multiply-and-reduce loops (punica's BGMV as inductor code: the gathered
    weights are never materialized), per projection block; at a row or two, the whole
    block-diagonal Bt in one loop (there the loops cost, not the arithmetic);
  - eager, one adapter (batch-1, or one adapter beside base rows): that slot's A and Bt,
    the (1, T, 1) mask, two thin products per module;
  - eager, several adapters: every slot's A and Bt, and (max_loras, n) token rows per
    slot (padded with an index of a zero row): each slot's rows are gathered, go through
    two batched products and are added back (per token would copy each token's weights).
A step without adapter rows passes no LoraStep: the model runs exactly the graphs it
runs without LoRA. The base product underneath can be anything (float, int8/int4,
prepacked): the delta is added to its output.

Why per token when compiled (`python -m bench.lora_kernels --compiled --threads 2`:
every layer's qkv, o, up and down of default-lm with their base products in one compiled
graph, rows spread over 4 slots of rank 16; AMD EPYC Zen 5 with AVX-512 BF16/VNNI, 2
threads, 2026-12-07): time over that graph without deltas, grouped against per token:
1 row +46 % against +9 %, 32 rows +62 % against +18 %, 256 rows +100 % against +30 %.
The grouped form's scatter-add and its extern bmm calls cost more than its arithmetic;
inductor fuses the per-token indexing, the products and the add into the step's own
loops. In eager, per token would copy each token's weights (+547 % at 32 rows), and the
grouped form is the cheapest for several adapters (+55 %; every slot masked +79 %, a loop
per adapter +128 %, segments +74 %); one slot alone costs +32 %.

In the engine (bench/lora.py, docs/PERFORMANCE.md, five runs on AMD EPYC Zen 5): 32
concurrent requests over 4 adapters 0.82-0.90x the base's tokens/s with the per-token
form (0.67x grouped), median 0.87x; batch-1 with an adapter 0.84-0.92x, median 0.87x,
once the step is called past Dynamo's guards and its LoRA inputs are reused (0.82x
before: each adapted module's two loops still cost more than their arithmetic).
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
    # per layer and module: each fused projection's rank, in fused order (0: no LoRA on it)
    part_ranks: list[dict[str, tuple[int, ...]]] = field(default_factory=list)
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
    """What one block needs: the mask or rows (see `lora_delta`), each module's A and Bt,
    and each token's slot in the per-token form."""

    mask: Tensor
    qkv_a: Tensor
    qkv_b: Tensor
    o_a: Tensor
    o_b: Tensor
    up_a: Tensor
    up_b: Tensor
    down_a: Tensor
    down_b: Tensor
    slots: Tensor | None = None


def lora_delta(x: Tensor, a: Tensor, bt: Tensor, mask: Tensor, gemv: bool = False,
               parts: tuple[int, ...] | None = None, slots: Tensor | None = None) -> Tensor:
    """x (B, T, in) -> (B, T, out): each token's B A x. `parts`: the output sizes of the
    projections the module fuses, in order (None: one); projection p's ranks are rows
    [p * R / len(parts), ...) of a and bt (the module's docstring). Three forms:
      - `slots` (B, T) int64 (compiled graphs): every slot's a (S, R, in) and bt
        (S, R, out), each token's slot, a float (B, T, 1) mask that zeroes base rows;
        `gemv` (a graph of a row or two): one loop per product;
      - mask int64 (S, n) (eager, several adapters): per slot, the flattened token rows it
        serves, padded with B*T (a zero row); every slot's a and bt;
      - float mask (B, T, 1) (eager, one adapter): its slot's a (R, in) and bt (R, out)."""
    if slots is not None:
        return token_delta(x, a, bt, mask, slots, parts or (bt.shape[-1],), gemv)
    if mask.dtype == torch.int64:
        return grouped_delta(x, a, bt, mask)
    h = torch.matmul(x, a.t())  # (B, T, R): shrink
    return torch.matmul(h * mask, bt)  # (B, T, out): expand


def _expand_blocks(h: Tensor, bt: Tensor, parts: tuple[int, ...]) -> Tensor:
    """h (..., R) float, bt (..., R, out) (one slot's, or each token's gathered lazily) ->
    (..., out): each projection's rank block times its output block, as multiply-and-
    reduce over the ranks (out contiguous, so inductor vectorizes along it)."""
    rank = h.shape[-1] // len(parts)
    ys, col = [], 0
    for p, size in enumerate(parts):
        block = bt[..., p * rank:(p + 1) * rank, col:col + size]  # (..., r, size)
        ys.append((h[..., p * rank:(p + 1) * rank, None] * block).sum(-2))
        col += size
    return ys[0] if len(ys) == 1 else torch.cat(ys, -1)


def token_delta(x: Tensor, a: Tensor, bt: Tensor, mask: Tensor, slots: Tensor,
                parts: tuple[int, ...], gemv: bool = False) -> Tensor:
    """x (B, T, in); a (S, R, in), bt (S, R, out); mask (B, T, 1) float; slots (B, T):
    each token through its own slot's A and Bt. Written for inductor, which fuses the
    indexing into the products' loops (BGMV); eager would copy each token's weights.
    `gemv` (a row or two): the whole block-diagonal Bt in one loop, zeros included, as
    the loops, not the arithmetic, cost there."""
    h = (x.float()[..., None, :] * a[slots].float()).sum(-1) * mask  # (B, T, R)
    if gemv:
        return (h[..., :, None] * bt[slots].float()).sum(-2).to(x.dtype)
    return _expand_blocks(h, bt[slots].float(), parts).to(x.dtype)


def grouped_delta(x: Tensor, a: Tensor, bt: Tensor, rows: Tensor) -> Tensor:
    """x (B, T, in); a (S, R, in), bt (S, R, out); rows (S, n): slot s's token rows (of
    the flattened B*T), padded with B*T. Each slot's rows are gathered (a zero row for the
    padding), go through two batched products, and are added back to their places."""
    flat = x.reshape(-1, x.shape[-1])
    tokens = flat.shape[0]
    padded = torch.cat([flat, flat.new_zeros(1, flat.shape[1])])[rows]  # (S, n, in)
    h = torch.bmm(padded, a.transpose(1, 2))  # (S, n, R): shrink
    y = torch.bmm(h, bt)  # (S, n, out): expand
    out = flat.new_zeros(tokens + 1, bt.shape[2])
    out.index_add_(0, rows.flatten(), y.flatten(0, 1))
    return out[:tokens].view(*x.shape[:-1], bt.shape[2])


def masked_delta(x: Tensor, a: Tensor, bt: Tensor, mask: Tensor) -> Tensor:
    """The all-slots alternative (measured in bench/lora_kernels.py, not served): mask
    (B, T, k) one-hot per token, a (k*R, in), bt (k*R, out): every token through every
    slot's product."""
    h = torch.matmul(x, a.t())
    k = mask.shape[-1]
    h = (h.unflatten(-1, (k, -1)) * mask[..., None]).flatten(-2)
    return torch.matmul(h, bt)


@dataclass(frozen=True)
class LoraStep:
    """The LoRA inputs of one forward (the forms: the module's docstring)."""

    mask: Tensor  # (1, T, 1) float, or (max_loras, n) int64 rows per slot: see lora_delta
    layers: tuple[tuple[Tensor, ...], ...]  # per layer: the 8 A / Bt tensors of LayerLora
    slots: Tensor | None = None  # (1, T) int64: each token's slot, in the per-token form
    # the per-token form's A / Bt of every layer, (L, max_loras, R, in|out), in
    # LayerLora's order (`layers` is empty then): indexed per layer inside the graph
    stacked: tuple[Tensor, ...] = ()

    def layer(self, i: int) -> LayerLora:
        if self.stacked:
            qa, qb, oa, ob, ua, ub, da, db = (t[i] for t in self.stacked)
            return LayerLora(self.mask, qa, qb, oa, ob, ua, ub, da, db, self.slots)
        return LayerLora(self.mask, *self.layers[i])
