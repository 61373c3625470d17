"""Decode attention through our C++ kernel (app/kernels/paged_attention.cpp), where it is
measured faster than the compiled reductions of `attention.decode_attention`.

Both read each row's keys and values in place from the paged cache. The reductions, as
inductor compiles them, end every 64-wide score in a horizontal sum and walk the scores
three more times for the softmax; the kernel streams each row's K and V once per block
with an online softmax (app/kernels/paged_attention.cpp says more). Measured on AMD EPYC
Zen 5 (AVX-512, 2 threads), against the compiled reductions: 32 rows of about 96 tokens,
12 heads of 64, bf16: 1.8x (237 against 437 us a layer); 512 tokens: 2.0x; default-lm's
8 query / 4 KV heads of 32, fp32, 32 rows: 4.0x; one row: 9-10x.

Measured in isolation the kernel wins (above); inside a decode step's graph the reductions
are fused with the step's other loops, and which wins depends on the model and the CPU
(134M bf16, 32 rows: the kernel +10-17 % tokens/s, 400-token contexts +36 %; the shipped
default-lm: within the noise). So the runner's warm-up times a decode step of 8 rows
both ways and keeps the faster (app.engine.runner_warmup). CPU only, float32 and
bfloat16 caches.
"""

from __future__ import annotations

import torch
from torch import Tensor

from app.modeling.quant_kernels import cpp_ops


def kernel_decode_attention(q: Tensor, k_blocks: Tensor, v_blocks: Tensor, tables: Tensor,
                            lens: Tensor) -> Tensor:
    """`attention.decode_attention`'s contract, through the C++ kernel (loaded, and its
    shapes registered for tracing, by `quant_kernels.cpp_ops()`)."""
    return torch.ops.llm_quant.paged_decode_attention(q, k_blocks, v_blocks, tables, lens)


def kernel_serves(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the kernel can attend over this cache: on a CPU, float32 or bfloat16, with
    the C++ kernels built (and their shapes registered for tracing)."""
    return device.type == "cpu" and dtype in (torch.float32, torch.bfloat16) and cpp_ops()
