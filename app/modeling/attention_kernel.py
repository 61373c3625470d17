"""Decode attention through our C++ kernel (app/kernels/paged_attention.cpp), where it is
measured faster than the compiled reductions of `attention.decode_attention`.

Both read each row's keys and values in place from the paged cache. The reductions, as
inductor compiles them, end every 64-wide score in a horizontal sum and walk the scores
three more times for the softmax; the kernel streams each row's K and V once per block
with an online softmax (app/kernels/paged_attention.cpp says more). Measured on AMD EPYC
Zen 5 (AVX-512, 2 threads), against the compiled reductions: 32 rows of about 96 tokens,
12 heads of 64, bf16: 1.8x (237 against 437 us a layer); 512 tokens: 2.0x; default-lm's
8 query / 4 KV heads of 32, fp32, 32 rows: 4.0x; one row: 9-10x.

Chosen per model shape at startup by timing both (`faster_decode_attention`), like the
other kernels: a CPU or build where the kernel is slower keeps the reductions. CPU only,
float32 and bfloat16 caches.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from app.modeling.attention import decode_attention
from app.modeling.quant_kernels import cpp_ops
from app.modeling.timing import speedup

MIN_GAIN = 1.1  # the kernel must beat the compiled reductions by this much


def kernel_decode_attention(q: Tensor, k_blocks: Tensor, v_blocks: Tensor, tables: Tensor,
                            lens: Tensor) -> Tensor:
    """`attention.decode_attention`'s contract, through the C++ kernel (loaded, and its
    shapes registered for tracing, by `quant_kernels.cpp_ops()`)."""
    return torch.ops.llm_quant.paged_decode_attention(q, k_blocks, v_blocks, tables, lens)


@functools.cache
def faster_decode_attention(heads: int, kv_heads: int, head_dim: int, dtype: torch.dtype,
                            block_size: int = 16) -> tuple[bool, str]:
    """Whether the kernel beats the compiled reductions for this head shape (timed on 8
    rows of 96 cached tokens, blocks spread over a cache larger than the CPU's caches);
    and a line for the log. Cached: a model's shape is measured once per process."""
    if dtype not in (torch.float32, torch.bfloat16):
        return False, f"decode attention: compiled reductions ({dtype} cache)"
    if not cpp_ops():
        return False, "decode attention: compiled reductions (the C++ kernels are unavailable)"
    rows, context, blocks = 8, 96, 1024
    gen = torch.Generator().manual_seed(0)
    k = torch.randn(blocks, block_size, kv_heads, head_dim, generator=gen).to(dtype)
    v = torch.randn(blocks, block_size, kv_heads, head_dim, generator=gen).to(dtype)
    q = torch.randn(rows, heads, head_dim, generator=gen).to(dtype)
    width = -(-context // block_size)
    tables = torch.randperm(blocks, generator=gen)[:rows * width].view(rows, width)
    lens = torch.full((rows,), context)
    compiled = torch.compile(decode_attention, dynamic=False)
    with torch.inference_mode():
        want = compiled(q, k, v, tables, lens)
        got = kernel_decode_attention(q, k, v, tables, lens)
        tol = 1e-4 if dtype is torch.float32 else 2e-2
        if not torch.allclose(got.float(), want.float(), rtol=tol, atol=tol):
            return False, "decode attention: compiled reductions (the kernel's result differed)"
        gain = speedup(lambda: compiled(q, k, v, tables, lens),
                       lambda: kernel_decode_attention(q, k, v, tables, lens), 9)
    chosen = gain >= MIN_GAIN
    return chosen, (f"decode attention: {'C++ kernel' if chosen else 'compiled reductions'} "
                    f"(the kernel measured {gain:.2f}x)")
