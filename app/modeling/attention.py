"""Attention backends: the one place where queries meet keys and values.

Every layer calls `backend(layer, q, k, v)` with q (B, T, nh, hd) and k, v (B, T, nkv, hd)
for the *new* tokens of this forward pass, and gets (B, T, nh, hd) back. The backend
decides where the keys and values of earlier tokens come from:

- `DenseCausalAttention`: no cache, a plain causal batch (training, evaluation, reference).
  Batches are right-padded: with causal attention, real tokens never see the pad tokens
  that follow them, so no padding mask is needed.
- `PagedAttention`: a paged KV cache (the engine's). The B=1 batch holds the new tokens
  of many sequences back to back; each token's K/V is written to its slot, then each
  sequence attends over its own blocks. All index tensors are built once per step by
  `build_paged_batch` and shared by every layer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor


class AttentionBackend(Protocol):
    def __call__(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor: ...


def _sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool) -> Tensor:
    """q (B, nh, Tq, hd), k/v (B, nkv, Tk, hd) -> (B, nh, Tq, hd); GQA when nkv < nh."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                          enable_gqa=k.shape[1] != q.shape[1])


class DenseCausalAttention:
    """Full causal attention over the tokens of this call only (no KV cache)."""

    def __call__(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        out = _sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), None, True)
        return out.transpose(1, 2)


@dataclass
class PrefillSpan:
    """One sequence that brings more than one new token (or a lone first token)."""

    start: int  # offset of its first new token in the flat batch
    length: int  # number of new tokens
    context_len: int  # cached tokens + new tokens
    blocks: Tensor | None  # (n_blocks,) its block table; None when nothing is cached
    mask: Tensor | None  # (length, n_blocks * block_size) bool; None when nothing is cached


@dataclass
class DecodeGroup:
    """Single-token sequences of similar context length, attended in one padded call."""

    tokens: Tensor  # (D,) positions of their new tokens in the flat batch
    blocks: Tensor  # (D, max_blocks) block tables, padded with block 0
    mask: Tensor  # (D, 1, 1, max_blocks * block_size) bool: which gathered keys are real
    lens: Tensor  # (D,) context lengths (the same information as `mask`)


@dataclass
class PagedBatch:
    """Index tensors for one forward step over a paged KV cache (see build_paged_batch)."""

    slot_mapping: Tensor  # (N,) int64: the cache slot each new token's K/V is written to
    decode_groups: list[DecodeGroup]
    prefills: list[PrefillSpan]


class PagedKVCache:
    """K and V of every layer: one (num_slots, nkv, hd) tensor per layer for each.

    A slot is one token position; slot = block_id * block_size + offset_in_block.
    Each layer has a tensor of its own, not a view into one big tensor: a compiled
    decode step (app.modeling.decode_step) writes new keys into them in place, and
    inductor only does that in place for a graph input that is not a view of another.
    """

    def __init__(
        self,
        num_layers: int,
        num_blocks: int,
        block_size: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        shape = (num_blocks * block_size, num_kv_heads, head_dim)
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in (*self.k, *self.v))

    def blocks(self, which: list[Tensor], layer: int) -> Tensor:
        """One layer's K or V seen by block: (num_blocks, block_size, nkv, hd)."""
        t = which[layer]
        return t.view(-1, self.block_size, *t.shape[1:])

    @staticmethod
    def bytes_per_block(
        num_layers: int, block_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype
    ) -> int:
        itemsize = torch.empty((), dtype=dtype).element_size()
        return 2 * num_layers * block_size * num_kv_heads * head_dim * itemsize


# Decoding sequences are padded to the longest in their group; a group spans at most this
# ratio of context lengths. Measured on CPU (bench/attention.py): one padded call over very
# different lengths is up to 4x slower than length-bucketed calls, and one call per
# sequence loses on small models where per-call overhead dominates.
DECODE_BUCKET_RATIO = 1.3
# New tokens of a sequence with a cached context, up to this many, attend as decode rows
# (one query each) rather than as a prefill span (one SDPA call per sequence and layer).
DECODE_ROWS_SPAN = 17  # the most a verification step brings: 16 guesses and the last token


def _decode_groups(tokens: list[int], tables: list[list[int]], lens: list[int],
                   block_size: int, device: torch.device) -> list[DecodeGroup]:
    order = sorted(range(len(lens)), key=lambda i: lens[i])
    buckets: list[list[int]] = []
    for i in order:
        if buckets and lens[i] <= DECODE_BUCKET_RATIO * lens[buckets[-1][0]]:
            buckets[-1].append(i)
        else:
            buckets.append([i])
    groups = []
    for bucket in buckets:
        width = max(len(tables[i]) for i in bucket)
        blocks = torch.tensor([tables[i] + [0] * (width - len(tables[i])) for i in bucket],
                              device=device)
        group_lens = torch.tensor([lens[i] for i in bucket], device=device)
        valid = torch.arange(width * block_size, device=device)[None, :] < group_lens[:, None]
        groups.append(DecodeGroup(torch.tensor([tokens[i] for i in bucket], device=device),
                                  blocks, valid[:, None, None, :], group_lens))
    return groups


def slots_for(block_table: list[int], start: int, end: int, block_size: int) -> list[int]:
    """Cache slots of token positions [start, end) of a sequence with this block table."""
    return [block_table[p // block_size] * block_size + p % block_size for p in range(start, end)]


def decode_rows_of(table: list[int], context_len: int, query_len: int, block_size: int
                   ) -> Iterator[tuple[list[int], int]]:
    """A sequence's new tokens as decode rows: each row's block table and context length,
    the context up to and including itself."""
    for j in range(query_len):
        row_ctx = context_len - query_len + j + 1
        yield table[: -(-row_ctx // block_size)], row_ctx


def build_paged_batch(
    query_lens: list[int],
    context_lens: list[int],
    block_tables: list[list[int]],
    block_size: int,
    device: torch.device,
) -> PagedBatch:
    """Index tensors for sequences whose new tokens sit back to back in one flat batch.

    Sequence i brings query_lens[i] new tokens at positions
    [context_lens[i] - query_lens[i], context_lens[i]).
    """
    slot_mapping: list[int] = []
    decode_tokens: list[int] = []  # offsets of decode rows in the flat batch
    decode_tables: list[list[int]] = []
    decode_lens: list[int] = []
    prefills: list[PrefillSpan] = []
    offset = 0
    for q_len, ctx, table in zip(query_lens, context_lens, block_tables, strict=True):
        if q_len <= 0 or ctx < q_len:
            raise ValueError(f"bad span: query_len={q_len}, context_len={ctx}")
        if len(table) * block_size < ctx:
            raise ValueError(f"block table of {len(table)} blocks cannot hold {ctx} tokens")
        slot_mapping.extend(slots_for(table, ctx - q_len, ctx, block_size))
        if ctx > q_len and q_len <= DECODE_ROWS_SPAN:
            # One new token over a cached context (decoding), or a few (a speculative
            # verification step's last token and guesses, a short last chunk): each is a
            # decode row over the context up to itself (every new key is written before
            # any row attends), so they run the decode path, compiled where it is,
            # batched with the other sequences' rows.
            for j, (row_table, row_ctx) in enumerate(decode_rows_of(table, ctx, q_len,
                                                                    block_size)):
                decode_tokens.append(offset + j)
                decode_tables.append(row_table)
                decode_lens.append(row_ctx)
        elif ctx == q_len:
            # Nothing cached yet: attend over the new keys directly, no gather needed.
            prefills.append(PrefillSpan(offset, q_len, ctx, None, None))
        else:
            used = table[: -(-ctx // block_size)]
            query_pos = torch.arange(ctx - q_len, ctx, device=device)
            key_pos = torch.arange(len(used) * block_size, device=device)
            mask = key_pos[None, :] <= query_pos[:, None]  # causal; also hides the tail
            blocks = torch.tensor(used, device=device)
            prefills.append(PrefillSpan(offset, q_len, ctx, blocks, mask))
        offset += q_len

    return PagedBatch(
        slot_mapping=torch.tensor(slot_mapping, dtype=torch.long, device=device),
        decode_groups=_decode_groups(decode_tokens, decode_tables, decode_lens, block_size,
                                     device),
        prefills=prefills,
    )


def decode_attention(q: Tensor, k_blocks: Tensor, v_blocks: Tensor, tables: Tensor,
                     lens: Tensor) -> Tensor:
    """One query per sequence over its cached blocks, written as plain reductions so that
    a compiler fuses the block gather into the dot products (no gathered copy of K and V,
    no padded SDPA call): measured 3-9x faster than index_select + SDPA on CPU once
    compiled (bf16, 32 sequences of 64-512 tokens). Eager, it is only a reference.

    q (D, nh, hd); k_blocks, v_blocks (num_blocks, block_size, nkv, hd) of one layer;
    tables (D, nb) block ids; lens (D,) context lengths -> (D, nh, hd).
    """
    D, nh, hd = q.shape
    nkv = k_blocks.shape[2]
    k = k_blocks[tables].flatten(1, 2).float()  # (D, W, nkv, hd)
    v = v_blocks[tables].flatten(1, 2).float()
    valid = torch.arange(k.shape[1], device=q.device)[None, :] < lens[:, None]  # (D, W)
    qg = q.float().view(D, 1, nkv, nh // nkv, hd)  # grouped queries share a KV head
    scores = (qg * k[:, :, :, None, :]).sum(-1) * hd**-0.5  # (D, W, nkv, g)
    scores = scores.masked_fill(~valid[:, :, None, None], float("-inf"))
    weights = torch.softmax(scores, dim=1)
    out = (weights[..., None] * v[:, :, :, None, :]).sum(1)  # (D, nkv, g, hd)
    return out.reshape(D, nh, hd).to(q.dtype)


DecodeFn = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]


class PagedAttention:
    """Writes new K/V into the paged cache, then attends each sequence over its blocks.

    Eager: keys and values are gathered a whole block at a time (index_select of
    contiguous block_size x nkv x hd rows), which is several times faster on CPU than
    gathering token slots with advanced indexing, and SDPA masks the padded tail. With a
    compiled `decode` function (app.modeling.compile), single-token sequences go through
    it instead.
    """

    def __init__(self, cache: PagedKVCache, batch: PagedBatch, decode: DecodeFn | None = None
                 ) -> None:
        self.cache = cache
        self.batch = batch
        self.decode = decode

    def _blocks(self, layer: int, which: list[Tensor], index: Tensor) -> Tensor:
        """Blocks `index` (any shape S) of one layer's K or V -> (*S, block_size, nkv, hd)."""
        by_block = self.cache.blocks(which, layer)  # (num_blocks, bs, nkv, hd)
        picked = by_block.index_select(0, index.flatten())
        return picked.view(*index.shape, *by_block.shape[1:])

    def __call__(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        # q (1, N, nh, hd); k, v (1, N, nkv, hd)
        b = self.batch
        self.cache.k[layer].index_copy_(0, b.slot_mapping, k[0])
        self.cache.v[layer].index_copy_(0, b.slot_mapping, v[0])

        out = torch.empty_like(q[0])  # (N, nh, hd)
        for group in b.decode_groups:
            out[group.tokens] = self._decode(layer, q[0, group.tokens], group)
        for span in b.prefills:
            s, e = span.start, span.start + span.length
            qs = q[0, s:e].transpose(0, 1)[None]  # (1, nh, len, hd)
            if span.blocks is None:
                ks = k[0, s:e].transpose(0, 1)[None]
                vs = v[0, s:e].transpose(0, 1)[None]
                res = _sdpa(qs, ks, vs, None, True)
            else:
                ks = self._blocks(layer, self.cache.k, span.blocks).flatten(0, 1)
                vs = self._blocks(layer, self.cache.v, span.blocks).flatten(0, 1)
                res = _sdpa(qs, ks.transpose(0, 1)[None], vs.transpose(0, 1)[None],
                            span.mask, False)
            out[s:e] = res[0].transpose(0, 1)
        return out[None]

    def _decode(self, layer: int, q: Tensor, group: DecodeGroup) -> Tensor:
        # q (D, nh, hd) -> (D, nh, hd): one query per sequence over its gathered blocks.
        if self.decode is not None:
            k_blocks = self.cache.blocks(self.cache.k, layer)
            v_blocks = self.cache.blocks(self.cache.v, layer)
            # Sequence count and width vary every step: symbolic, not one graph each
            # (a single sequence, or a single block, keeps a graph of its own).
            if q.shape[0] > 1:
                for t in (q, group.blocks, group.lens):
                    torch._dynamo.mark_dynamic(t, 0)
            if group.blocks.shape[1] > 1:
                torch._dynamo.mark_dynamic(group.blocks, 1)
            return self.decode(q, k_blocks, v_blocks, group.blocks, group.lens)
        ks = self._blocks(layer, self.cache.k, group.blocks).flatten(1, 2)  # (D, W, nkv, hd)
        vs = self._blocks(layer, self.cache.v, group.blocks).flatten(1, 2)
        res = _sdpa(q[:, :, None, :], ks.transpose(1, 2), vs.transpose(1, 2), group.mask,
                    False)  # (D, nh, 1, hd)
        return res[:, :, 0, :]
