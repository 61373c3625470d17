"""Paged-attention variants on CPU, decode step of a GPT-2-small layer, same inputs.

    python -m bench.attention

  bucketed     sequences grouped by context length (within 1.3x), blocks gathered with
               index_select, one padded SDPA call per group (app.modeling.attention)
  slots+pad    all sequences in one padded call, gathering token slots with advanced
               indexing (cache[slots]): the first implementation
  per-seq      gather each sequence's slots separately, one SDPA call per sequence
  flex         torch FlexAttention over the paged cache with a block mask (if it runs)
Reports the median time per layer call and the ratio to bucketed.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import torch
import torch.nn.functional as F

from app.modeling.attention import PagedAttention, PagedKVCache, build_paged_batch
from bench.engine import median_time


def timed(fn: Callable[[], object], repeats: int = 30) -> float:
    for _ in range(3):  # warm up (allocator, lazy init, compilation)
        fn()
    return median_time(fn, repeats)


def main() -> None:
    torch.manual_seed(0)
    rng = random.Random(0)
    nh, hd, block = 12, 64, 16
    batch = 32
    lens = [rng.randint(64, 512) for _ in range(batch)]
    blocks_needed = [-(-n // block) for n in lens]
    cache = PagedKVCache(1, sum(blocks_needed) + 8, block, nh, hd, torch.float32,
                         torch.device("cpu"))
    cache.k[0].normal_()
    cache.v[0].normal_()
    free = list(range(cache.num_blocks))
    rng.shuffle(free)
    tables = [[free.pop() for _ in range(n)] for n in blocks_needed]
    q = torch.randn(1, batch, nh, hd)
    k = torch.randn(1, batch, nh, hd)
    v = torch.randn(1, batch, nh, hd)
    paged = build_paged_batch([1] * batch, lens, tables, block, torch.device("cpu"))
    attention = PagedAttention(cache, paged)

    def bucketed() -> torch.Tensor:
        return attention(0, q, k, v)

    width = max(lens)
    width_blocks = max(blocks_needed)
    tables_t = torch.tensor([t + [0] * (width_blocks - len(t)) for t in tables])
    padded_slots = (tables_t[:, :, None] * block + torch.arange(block)).flatten(1)
    padded_slots = padded_slots[:, :width]
    slot_mask = (torch.arange(width)[None, :] < torch.tensor(lens)[:, None])[:, None, None]

    def slots_pad() -> torch.Tensor:
        ks = cache.k[0][padded_slots].transpose(1, 2)
        vs = cache.v[0][padded_slots].transpose(1, 2)
        return F.scaled_dot_product_attention(q[0][:, :, None], ks, vs, attn_mask=slot_mask)

    slots = [padded_slots[i, :n] for i, n in enumerate(lens)]

    def per_seq() -> torch.Tensor:
        out = torch.empty_like(q[0])
        for i, s in enumerate(slots):
            ks = cache.k[0][s].transpose(0, 1)[None]
            vs = cache.v[0][s].transpose(0, 1)[None]
            out[i] = F.scaled_dot_product_attention(q[0, i][None, :, None], ks, vs)[0, :, 0]
        return out

    results = {"bucketed": timed(bucketed), "slots+pad": timed(slots_pad),
               "per-seq": timed(per_seq)}
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        lengths = torch.tensor(lens)

        def mask_mod(b: torch.Tensor, h: torch.Tensor, qi: torch.Tensor,
                     kv: torch.Tensor) -> torch.Tensor:
            return kv < lengths[b]

        mask = create_block_mask(mask_mod, batch, None, 1, width, device="cpu")
        compiled = torch.compile(flex_attention)

        def flex() -> torch.Tensor:
            ks = cache.k[0][padded_slots].transpose(1, 2)  # (B, nh, width, hd)
            vs = cache.v[0][padded_slots].transpose(1, 2)
            return compiled(q[0][:, :, None], ks, vs, block_mask=mask)

        results["flex (compiled)"] = timed(flex, repeats=10)
    except Exception as exc:  # report, do not fail: the point is to measure what runs
        print(f"flex_attention did not run here: {type(exc).__name__}: {str(exc)[:200]}")
    base = results["bucketed"]
    print(f"decode, {batch} sequences of 64-512 tokens, {nh} heads x {hd}, one layer, "
          f"{torch.get_num_threads()} threads")
    print("| variant | ms per layer | bucketed is faster by |")
    print("|---|---|---|")
    for name, seconds in results.items():
        print(f"| {name} | {1000 * seconds:.2f} | {seconds / base:.2f}x |")


if __name__ == "__main__":
    main()
