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

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor


class AttentionBackend(Protocol):
    def __call__(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor: ...


def _sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool) -> Tensor:
    """q (B, nh, Tq, hd), k/v (B, nkv, Tk, hd) -> (B, nh, Tq, hd); GQA by head grouping."""
    if k.shape[1] != q.shape[1]:
        # Grouped-query attention: each K/V head serves nh/nkv query heads.
        groups = q.shape[1] // k.shape[1]
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)


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
    slots: Tensor | None  # (context_len,) slot of every key; None when nothing is cached
    mask: Tensor | None  # (length, context_len) bool; None when nothing is cached


@dataclass
class PagedBatch:
    """Index tensors for one forward step over a paged KV cache (see build_paged_batch)."""

    slot_mapping: Tensor  # (N,) int64: the cache slot each new token's K/V is written to
    decode_tokens: Tensor | None  # (D,) positions in the flat batch of single-token sequences
    decode_slots: Tensor | None  # (D, max_ctx) int64 slots to gather, padded with slot 0
    decode_mask: Tensor | None  # (D, 1, 1, max_ctx) bool: which gathered keys are real
    prefills: list[PrefillSpan]
    all_decode: bool  # every sequence has one new token: the output needs no scatter


class PagedKVCache:
    """K and V tensors for every layer: (num_layers, num_slots, nkv, hd) each.

    A slot is one token position; slot = block_id * block_size + offset_in_block.
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
        shape = (num_layers, num_blocks * block_size, num_kv_heads, head_dim)
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    @staticmethod
    def bytes_per_block(
        num_layers: int, block_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype
    ) -> int:
        itemsize = torch.empty((), dtype=dtype).element_size()
        return 2 * num_layers * block_size * num_kv_heads * head_dim * itemsize


def slots_for(block_table: list[int], start: int, end: int, block_size: int) -> list[int]:
    """Cache slots of token positions [start, end) of a sequence with this block table."""
    return [block_table[p // block_size] * block_size + p % block_size for p in range(start, end)]


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
    decode_tokens: list[int] = []
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
        if q_len == 1 and ctx > 1:
            decode_tokens.append(offset)
            decode_tables.append(table[: -(-ctx // block_size)])
            decode_lens.append(ctx)
        elif ctx == q_len:
            # Nothing cached yet: attend over the new keys directly, no gather needed.
            prefills.append(PrefillSpan(offset, q_len, ctx, None, None))
        else:
            slots = torch.tensor(slots_for(table, 0, ctx, block_size), device=device)
            query_pos = torch.arange(ctx - q_len, ctx, device=device)
            mask = torch.arange(ctx, device=device)[None, :] <= query_pos[:, None]
            prefills.append(PrefillSpan(offset, q_len, ctx, slots, mask))
        offset += q_len

    decode_slots = decode_mask = decode_idx = None
    if decode_tables:
        # Slots from block tables by broadcasting: O(blocks) Python work, not O(tokens).
        width = max(decode_lens)
        n_blocks = max(len(t) for t in decode_tables)
        tables = torch.tensor([t + [0] * (n_blocks - len(t)) for t in decode_tables],
                              device=device)  # (D, n_blocks)
        offsets = torch.arange(block_size, device=device)
        decode_slots = (tables[:, :, None] * block_size + offsets).flatten(1)[:, :width]
        lens = torch.tensor(decode_lens, device=device)
        valid = torch.arange(width, device=device)[None, :] < lens[:, None]
        decode_mask = valid[:, None, None, :]
        decode_idx = torch.tensor(decode_tokens, device=device)
    return PagedBatch(
        slot_mapping=torch.tensor(slot_mapping, dtype=torch.long, device=device),
        decode_tokens=decode_idx,
        decode_slots=decode_slots,
        decode_mask=decode_mask,
        prefills=prefills,
        all_decode=not prefills,
    )


class PagedAttention:
    """Writes new K/V into the paged cache, then attends each sequence over its blocks."""

    def __init__(self, cache: PagedKVCache, batch: PagedBatch) -> None:
        self.cache = cache
        self.batch = batch

    def __call__(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        # q (1, N, nh, hd); k, v (1, N, nkv, hd)
        b = self.batch
        k_cache, v_cache = self.cache.k[layer], self.cache.v[layer]  # (S, nkv, hd)
        k_cache.index_copy_(0, b.slot_mapping, k[0])
        v_cache.index_copy_(0, b.slot_mapping, v[0])

        if b.all_decode:
            return self._decode(q[0], k_cache, v_cache)[None]
        out = torch.empty_like(q[0])  # (N, nh, hd)
        if b.decode_tokens is not None:
            out[b.decode_tokens] = self._decode(q[0, b.decode_tokens], k_cache, v_cache)
        for span in b.prefills:
            s, e = span.start, span.start + span.length
            qs = q[0, s:e].transpose(0, 1)[None]  # (1, nh, len, hd)
            if span.slots is None:
                ks = k[0, s:e].transpose(0, 1)[None]
                vs = v[0, s:e].transpose(0, 1)[None]
                res = _sdpa(qs, ks, vs, None, True)
            else:
                ks = k_cache[span.slots].transpose(0, 1)[None]  # (1, nkv, ctx, hd)
                vs = v_cache[span.slots].transpose(0, 1)[None]
                res = _sdpa(qs, ks, vs, span.mask, False)
            out[s:e] = res[0].transpose(0, 1)
        return out[None]

    def _decode(self, q: Tensor, k_cache: Tensor, v_cache: Tensor) -> Tensor:
        # q (D, nh, hd) -> (D, nh, hd): one query per sequence over its gathered keys.
        b = self.batch
        assert b.decode_slots is not None
        ks = k_cache[b.decode_slots].transpose(1, 2)  # (D, nkv, max_ctx, hd)
        vs = v_cache[b.decode_slots].transpose(1, 2)
        res = _sdpa(q[:, :, None, :], ks, vs, b.decode_mask, False)  # (D, nh, 1, hd)
        return res[:, :, 0, :]
