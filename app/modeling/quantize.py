"""Weight-only quantization: the number formats, as plain functions.

int8 (symmetric, per output channel): q = round(w / s) in [-127, 127], s = max|w_row| / 127;
    w ~ q * s. One float32 scale per row.
int4 (asymmetric, group-wise along the input dimension): for each group of G weights of a
    row, s = (max - min) / 15, q = round((w - min) / s) in [0, 15]; w ~ q * s + min.
    Scale and min are float16 (two per group: 32 bits per G weights, 4.5 bits a weight at
    G = 64). Two q per byte, in the order the kernel reads them: within a group, byte j
    holds column j in its low nibble and column j + G/2 in its high nibble (llama.cpp's
    Q4 blocks use the same split, which lets a vector loop unpack a byte with one mask
    and one shift).

Zero points pay for int4: the asymmetric form measured lower perplexity than symmetric
int4 on the shipped default-lm (docs/PERFORMANCE.md) for the same bytes per weight.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

Method = Literal["int8", "int4"]
METHODS: tuple[str, ...] = ("none", "int8", "int4")
INT4_GROUP_SIZES = (32, 64, 128)


@dataclass(frozen=True)
class Int8Weight:
    q: Tensor  # (N, K) int8
    scale: Tensor  # (N,) float32


@dataclass(frozen=True)
class Int4Weight:
    q: Tensor  # (N, K/2) uint8, layout above
    scale: Tensor  # (N, K/G) float16
    mins: Tensor  # (N, K/G) float16
    group_size: int


def quantize_int8(weight: Tensor) -> Int8Weight:
    """(N, K) float weights -> int8 and one scale per row."""
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return Int8Weight(q.contiguous(), scale.contiguous())


def dequantize_int8(weight: Int8Weight, dtype: torch.dtype = torch.float32) -> Tensor:
    return (weight.q.float() * weight.scale[:, None]).to(dtype)


def int4_group_problem(in_features: int, group_size: int) -> str | None:
    """Why a weight with `in_features` columns cannot be stored as int4 in groups of
    `group_size`, or None."""
    if group_size not in INT4_GROUP_SIZES:
        return f"group size {group_size} is not one of {INT4_GROUP_SIZES}"
    if in_features % group_size:
        return f"{in_features} input features are not a multiple of the group size {group_size}"
    return None


def quantize_int4(weight: Tensor, group_size: int) -> Int4Weight:
    """(N, K) float weights -> packed int4 with a float16 scale and min per group."""
    problem = int4_group_problem(weight.shape[1], group_size)
    if problem:
        raise ValueError(problem)
    n, k = weight.shape
    w = weight.detach().float().view(n, k // group_size, group_size)  # (N, groups, G)
    lo, hi = w.amin(dim=-1), w.amax(dim=-1)  # (N, groups)
    # Stored in float16, then used as stored: quantize against the rounded values so the
    # rounding of scale and min does not add to the error of every weight. A group whose
    # spread is below float16's smallest step (about 6e-8 * 15) gets scale 0: its codes
    # are 0 (every weight within that spread of min) instead of a division by zero.
    scale = ((hi - lo) / 15.0).to(torch.float16)
    mins = lo.to(torch.float16)
    step = scale.float()[..., None]
    step = torch.where(step > 0, step, torch.ones_like(step))
    q = torch.round((w - mins.float()[..., None]) / step).clamp(0, 15)
    q = torch.where(scale[..., None] > 0, q, torch.zeros_like(q))
    q = q.to(torch.uint8)
    half = group_size // 2
    packed = q[..., :half] | (q[..., half:] << 4)  # (N, groups, G/2)
    return Int4Weight(packed.reshape(n, k // 2).contiguous(), scale.contiguous(),
                      mins.contiguous(), group_size)


def unpack_int4(weight: Int4Weight) -> Tensor:
    """The 0..15 codes, (N, K) uint8."""
    n = weight.q.shape[0]
    groups = weight.scale.shape[1]
    half = weight.group_size // 2
    b = weight.q.view(n, groups, half)
    return torch.cat([b & 0x0F, b >> 4], dim=-1).view(n, groups * weight.group_size)


def dequantize_int4(weight: Int4Weight, dtype: torch.dtype = torch.float32) -> Tensor:
    n = weight.q.shape[0]
    groups = weight.scale.shape[1]
    q = unpack_int4(weight).view(n, groups, weight.group_size).float()
    w = q * weight.scale.float()[..., None] + weight.mins.float()[..., None]
    return w.view(n, groups * weight.group_size).to(dtype)
