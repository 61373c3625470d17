"""The kernels that multiply activations by quantized weights, and which shapes and
dtypes each one supports.

Candidates (each listed only where it is correct for the product's shape and dtype):
  cpp      app/kernels/quant_linear.cpp, built for this CPU's vector ISA (when it builds):
           int8 and int4, every shape our formats produce, float32/bfloat16/float16
  idot     app/kernels/int_dot.cpp, in the same extension: activations quantized to int8
           per block of 32, integer dot products (AVX512-VNNI / AVX-VNNI `vpdpbusd`, AVX2
           `vpmaddubsw`); int8 and int4, input widths a multiple of 32,
           float32/bfloat16/float16. Its error is the activations' rounding (1/254 of a
           block's largest |x| at most), the trade llama.cpp's q8_0 / q4_0 products make
  aten     torch's own CPU kernels: int8 `aten._weight_int8pack_mm`; int4
           `aten._weight_int4pack_mm_for_cpu` on a weight repacked by
           `aten._convert_weight_to_int4pack_for_cpu`
  dequant  widen the weights to the activation dtype, then a BLAS product (pure PyTorch;
           correct everywhere, CUDA included)

What the stock kernels support was found by calling them against the dequantized
product (torch 2.13, CPU):
- `_weight_int8pack_mm`: float32 activations, any input width. bfloat16 activations read
  past the row when the input width is not a multiple of the vector width (AVX2: widths
  33 and 37 give relative errors of 3.6 and 10.9, more rows crash the process; the issue's
  AVX-512 machine already failed at width 40), so reduced-precision activations are
  offered it only for widths that are a multiple of 32, a multiple of every vector width.
- `_weight_int4pack_mm_for_cpu`: out_features a multiple of 16 (the packing refuses
  others), group sizes 32-256, 2-D activations in float32/bfloat16/float16. It computes
  w = (q - 8) * scale + zero with scale and zero in the activations' dtype, so our
  w = q * scale + min maps to zero = min + 8 * scale (exact in float32; in bfloat16 the
  scale and zero round to 8 bits of mantissa).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from app.kernels.build import quant_extension
from app.modeling.quantize import Int4Weight, dequantize_int4, unpack_int4

FEW_ROWS = 64  # above this, always dequant + BLAS
ACTIVATION_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
ATEN_INT8_REDUCED_WIDTH = 32  # bf16/fp16 activations: input width a multiple of this
ATEN_INT4_OUT_MULTIPLE = 16
ATEN_INT4_GROUPS = (32, 64, 128, 256)


@dataclass(frozen=True)
class Shape:
    """What decides which kernels can run a product."""

    method: str  # int8 | int4
    in_features: int
    out_features: int
    group_size: int  # int4 only; 0 for int8
    dtype: torch.dtype  # the activations'


@functools.cache
def cpp_ops() -> bool:
    """Whether the C++ kernels are loaded as torch ops (llm_quant::*), with their shapes
    registered for tracing."""
    module, _ = quant_extension()
    if module is None:
        return False
    torch.library.register_fake("llm_quant::int8_linear", _int8_shape)
    torch.library.register_fake("llm_quant::int4_linear", _int4_shape)
    torch.library.register_fake("llm_quant::float_linear", _float_shape)
    torch.library.register_fake("llm_quant::idot_int8_linear", _int8_shape)
    torch.library.register_fake("llm_quant::idot_int4_linear", _int4_shape)
    torch.library.register_fake("llm_quant::paged_decode_attention",
                                lambda q, k_blocks, v_blocks, tables, lens: torch.empty_like(q))
    return True


@functools.cache
def idot_width() -> int:
    """Bytes of weight codes the integer kernels step by (0 where they are not built)."""
    return int(torch.ops.llm_quant.idot_width()) if cpp_ops() else 0


def idot_isa() -> str:
    """The vector path the integer kernels were built with (avx512vnni, avxvnni, avx2,
    scalar), or "none"."""
    return str(torch.ops.llm_quant.idot_isa()) if cpp_ops() else "none"


# Whether the startup choice times `idot` (`--integer-kernels`). Off by default: it rounds
# the activations, so one row (idot) and a prompt chunk (dequant) of the same request see
# different products, and greedy tokens can change with the batch a request lands in (the
# batch-invariance tests caught it); the other kernels differ by float rounding only.
_OFFER_INTEGER = [False]


def offer_integer_kernels(on: bool) -> None:
    """Let the startup choice consider the integer kernels (a server setting, process-wide
    like the extension it comes from)."""
    _OFFER_INTEGER[0] = on


def idot_takes(shape: Shape) -> bool:
    """Whether the integer kernels take `shape`: activations in whole blocks of 32 (int4:
    every group size is a multiple of 32). A row's bytes past its last whole vector run
    through the kernels' scalar tail."""
    return cpp_ops() and shape.in_features % 32 == 0


def _float_shape(x: Tensor, w: Tensor) -> Tensor:
    return x.new_empty((*x.shape[:-1], w.shape[0]))


def _int8_shape(x: Tensor, q: Tensor, scale: Tensor) -> Tensor:
    return x.new_empty((*x.shape[:-1], q.shape[0]))


def _int4_shape(x: Tensor, q: Tensor, scale: Tensor, mins: Tensor, group: int) -> Tensor:
    return x.new_empty((*x.shape[:-1], q.shape[0]))


def supported(name: str, shape: Shape) -> bool:
    """Whether kernel `name` computes `shape`'s product correctly on a CPU."""
    if name == "dequant":
        return True
    if shape.dtype not in ACTIVATION_DTYPES:
        return False
    if name == "cpp":
        return cpp_ops()
    if name == "idot":
        return idot_takes(shape)
    if name == "aten" and shape.method == "int8":
        return (shape.dtype == torch.float32
                or shape.in_features % ATEN_INT8_REDUCED_WIDTH == 0)
    if name == "aten" and shape.method == "int4":
        return (shape.out_features % ATEN_INT4_OUT_MULTIPLE == 0
                and shape.group_size in ATEN_INT4_GROUPS
                and shape.in_features % shape.group_size == 0)
    return False


def candidates(shape: Shape) -> list[str]:
    """Every kernel that supports `shape`, dequant first; idot only when offered."""
    names = ("dequant", "aten", "cpp") + (("idot",) if _OFFER_INTEGER[0] else ())
    return [name for name in names if supported(name, shape)]


# ---------------------------------------------------------------------------- int8


def int8_dequant(x: Tensor, q: Tensor, scale: Tensor) -> Tensor:
    return F.linear(x, q.to(x.dtype) * scale.to(x.dtype)[:, None])


def int8_aten(x: Tensor, q: Tensor, scale: Tensor) -> Tensor:
    flat = x.reshape(-1, x.shape[-1]).contiguous()
    out = torch.ops.aten._weight_int8pack_mm(flat, q, scale.to(x.dtype))
    return out.view(*x.shape[:-1], q.shape[0])


def int8_cpp(x: Tensor, q: Tensor, scale: Tensor) -> Tensor:
    return torch.ops.llm_quant.int8_linear(x, q, scale)


def int8_idot(x: Tensor, q: Tensor, scale: Tensor) -> Tensor:
    return torch.ops.llm_quant.idot_int8_linear(x, q, scale)


INT8_KERNELS: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    "dequant": int8_dequant, "aten": int8_aten, "cpp": int8_cpp, "idot": int8_idot}


# ---------------------------------------------------------------------------- int4


@dataclass(frozen=True)
class Int4Operands:
    """An int4 weight as every int4 kernel needs it; `aten_*` only once repacked."""

    q: Tensor
    scale: Tensor
    mins: Tensor
    group: int
    aten_weight: Tensor | None = None
    aten_scale_zeros: Tensor | None = None


def aten_int4_pack(weight: Int4Weight, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Our int4 weight repacked for `_weight_int4pack_mm_for_cpu`: (packed codes,
    (K/G, N, 2) scale and zero in `dtype`), zero = min + 8 * scale (see the module doc)."""
    codes = unpack_int4(weight).to(torch.int32)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 8)
    scale = weight.scale.float()
    zero = weight.mins.float() + 8 * scale
    scale_zeros = torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous()
    return packed, scale_zeros.to(dtype)


def int4_dequant(x: Tensor, w: Int4Operands) -> Tensor:
    return F.linear(x, dequantize_int4(Int4Weight(w.q, w.scale, w.mins, w.group), x.dtype))


def int4_aten(x: Tensor, w: Int4Operands) -> Tensor:
    if w.aten_weight is None or w.aten_scale_zeros is None:
        return int4_dequant(x, w)  # not repacked: the layer never chose aten
    flat = x.reshape(-1, x.shape[-1]).contiguous()
    out = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, w.aten_weight, w.group,
                                                     w.aten_scale_zeros.to(x.dtype))
    return out.view(*x.shape[:-1], w.q.shape[0])


def int4_cpp(x: Tensor, w: Int4Operands) -> Tensor:
    return torch.ops.llm_quant.int4_linear(x, w.q, w.scale, w.mins, w.group)


def int4_idot(x: Tensor, w: Int4Operands) -> Tensor:
    return torch.ops.llm_quant.idot_int4_linear(x, w.q, w.scale, w.mins, w.group)


INT4_KERNELS: dict[str, Callable[[Tensor, Int4Operands], Tensor]] = {
    "dequant": int4_dequant, "aten": int4_aten, "cpp": int4_cpp, "idot": int4_idot}


def row_class(x: Tensor) -> str | None:
    """"one" (batch-1 decode), "few" (up to FEW_ROWS: a decode batch), or None above."""
    rows = x.numel() // max(x.shape[-1], 1)
    return "one" if rows == 1 else "few" if rows <= FEW_ROWS else None
