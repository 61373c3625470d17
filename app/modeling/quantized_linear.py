"""Linear layers with quantized weights: drop-in replacements for `nn.Linear`.

`QuantizedLinear` replaces `nn.Linear` (and the LM head's product) when a model is served
with `--quantization int8|int4` (formats in `app.modeling.quantize`); its `forward(x)` is
`nn.Linear`'s, so the model's code does not know it is quantized. The product is a custom
op (`llm::int8_linear`, `llm::int4_linear`), opaque to torch.compile like the prepacked
product, so compiled graphs call it as one node.

Which kernel runs (`app.modeling.quant_kernels`) is this layer's own choice
(`kernels`, a `KernelPlan`), made at startup for its shape and the model's dtype
(`app.modeling.kernel_choice`), separately for one row (batch-1 decode, bound by the
bytes of weights streamed) and for a few rows (2-64: a decode batch). Above 64 rows
(prompt chunks) the work is compute-bound and `dequant` always runs: the widening is paid
once for all rows and the product is the fastest GEMM torch has. Until a choice is made
every layer runs `dequant`, which is correct for every shape.

A one-row product whose choice is `cpp` or `idot` calls the C++ op (`llm_quant::*`, registered by
the extension) directly: a Python custom op costs tens of microseconds a call, which at
~50 products a batch-1 decode step is a tenth of the step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from app.modeling.quant_kernels import (
    INT4_KERNELS,
    INT8_KERNELS,
    Int4Operands,
    Shape,
    aten_int4_pack,
    row_class,
    supported,
)
from app.modeling.quantize import (
    Int4Weight,
    Int8Weight,
    dequantize_int4,
    dequantize_int8,
    quantize_int4,
    quantize_int8,
)


@dataclass(frozen=True)
class KernelPlan:
    """The kernel a layer runs for one row and for a few rows."""

    one: str = "dequant"
    few: str = "dequant"


DEQUANT = KernelPlan()


def _kernel_for(x: Tensor, shape: Shape, one: str, few: str) -> str:
    """The planned kernel for x's row count, or dequant where the plan does not apply (off
    the CPU, many rows, a dtype the kernel was not chosen for and does not support)."""
    cls = row_class(x)
    name = one if cls == "one" else few if cls == "few" else "dequant"
    if x.device.type != "cpu" or not supported(name, shape):
        return "dequant"
    return name


@torch.library.custom_op("llm::int8_linear", mutates_args=())
def int8_linear(x: Tensor, q: Tensor, scale: Tensor, one: str, few: str) -> Tensor:
    """x (..., K) @ (q (N, K) * scale (N))^T -> (..., N) in x's dtype."""
    shape = Shape("int8", q.shape[1], q.shape[0], 0, x.dtype)
    return INT8_KERNELS[_kernel_for(x, shape, one, few)](x, q, scale)


@int8_linear.register_fake
def _int8_linear_shape(x: Tensor, q: Tensor, scale: Tensor, one: str, few: str) -> Tensor:
    return x.new_empty((*x.shape[:-1], q.shape[0]))


@torch.library.custom_op("llm::int4_linear", mutates_args=())
def int4_linear(x: Tensor, q: Tensor, scale: Tensor, mins: Tensor, group: int, one: str,
                few: str, aten_weight: Tensor | None, aten_scale_zeros: Tensor | None
                ) -> Tensor:
    """x (..., K) @ dequantized int4 weight^T -> (..., N) in x's dtype."""
    shape = Shape("int4", q.shape[1] * 2, q.shape[0], group, x.dtype)
    operands = Int4Operands(q, scale, mins, group, aten_weight, aten_scale_zeros)
    return INT4_KERNELS[_kernel_for(x, shape, one, few)](x, operands)


@int4_linear.register_fake
def _int4_linear_shape(x: Tensor, q: Tensor, scale: Tensor, mins: Tensor, group: int,
                       one: str, few: str, aten_weight: Tensor | None,
                       aten_scale_zeros: Tensor | None) -> Tensor:
    return x.new_empty((*x.shape[:-1], q.shape[0]))


class QuantizedLinear(nn.Module):
    """y = x W^T (+ b) with W stored as int8 (per output channel) or int4 (group-wise)."""

    def __init__(self, in_features: int, out_features: int, method: str, group_size: int = 0,
                 bias: Tensor | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.method = method
        self.group_size = group_size if method == "int4" else 0  # int8 has no groups
        if method == "int8":
            self.register_buffer("qweight", torch.empty(out_features, in_features,
                                                        dtype=torch.int8))
            self.register_buffer("scale", torch.empty(out_features, dtype=torch.float32))
        elif method == "int4":
            groups = in_features // group_size
            self.register_buffer("qweight", torch.empty(out_features, in_features // 2,
                                                        dtype=torch.uint8))
            self.register_buffer("scale", torch.empty(out_features, groups, dtype=torch.float16))
            self.register_buffer("mins", torch.empty(out_features, groups, dtype=torch.float16))
        else:
            raise ValueError(f"unknown quantization method {method!r}")
        self.bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None
        self.kernels = DEQUANT
        # torch's int4 kernel's own layout of this weight: made only when this layer
        # chooses that kernel (`use_kernels`); not saved.
        self.aten_weight: Tensor | None = None
        self.aten_scale_zeros: Tensor | None = None

    @classmethod
    def from_weight(cls, weight: Tensor, bias: Tensor | None, method: str,
                    group_size: int = 0) -> QuantizedLinear:
        out_features, in_features = weight.shape
        layer = cls(in_features, out_features, method, group_size,
                    None if bias is None else bias.detach())
        layer.set_weight(weight)
        return layer

    def set_weight(self, weight: Tensor) -> None:
        if self.method == "int8":
            w8 = quantize_int8(weight)
            self.qweight, self.scale = w8.q.to(weight.device), w8.scale.to(weight.device)
        else:
            w4 = quantize_int4(weight, self.group_size)
            self.qweight = w4.q.to(weight.device)
            self.scale, self.mins = w4.scale.to(weight.device), w4.mins.to(weight.device)
        self.use_kernels(DEQUANT, torch.float32)

    def shape(self, dtype: torch.dtype) -> Shape:
        return Shape(self.method, self.in_features, self.out_features, self.group_size, dtype)

    def int4_weight(self) -> Int4Weight:
        return Int4Weight(self.qweight, self.scale, self.mins, self.group_size)

    def use_kernels(self, plan: KernelPlan, dtype: torch.dtype) -> None:
        """Run `plan` from now on, for activations of `dtype`; a kernel that does not
        support this layer's shape is refused (ValueError)."""
        shape = self.shape(dtype)
        for name in (plan.one, plan.few):
            if not supported(name, shape):
                raise ValueError(f"kernel {name} does not support {shape}")
        self.kernels = plan
        if self.method == "int4" and "aten" in (plan.one, plan.few):
            if self.aten_scale_zeros is None or self.aten_scale_zeros.dtype != dtype:
                self.aten_weight, self.aten_scale_zeros = aten_int4_pack(self.int4_weight(),
                                                                         dtype)
        else:
            self.aten_weight = self.aten_scale_zeros = None

    def dequantized(self, dtype: torch.dtype = torch.float32) -> Tensor:
        if self.method == "int8":
            return dequantize_int8(Int8Weight(self.qweight, self.scale), dtype)
        return dequantize_int4(self.int4_weight(), dtype)

    def forward(self, x: Tensor) -> Tensor:
        plan = self.kernels
        # One row and the C++ kernel chosen for it: the C++ op itself, no Python between.
        # (In a compiled graph the row count here is static: a symbolic row dimension is
        # never 1, so this does not add a guard.)
        direct = (plan.one in ("cpp", "idot") and x.device.type == "cpu"
                  and x.numel() == x.shape[-1])
        ops = torch.ops.llm_quant
        if self.method == "int8" and direct:
            op8 = ops.int8_linear if plan.one == "cpp" else ops.idot_int8_linear
            y = op8(x, self.qweight, self.scale)
        elif self.method == "int8":
            y = torch.ops.llm.int8_linear(x, self.qweight, self.scale, plan.one, plan.few)
        elif direct:
            op4 = ops.int4_linear if plan.one == "cpp" else ops.idot_int4_linear
            y = op4(x, self.qweight, self.scale, self.mins, self.group_size)
        else:
            y = torch.ops.llm.int4_linear(x, self.qweight, self.scale, self.mins,
                                          self.group_size, plan.one, plan.few,
                                          self.aten_weight, self.aten_scale_zeros)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.method == "int4" else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"method={self.method}{group}, kernels={self.kernels}")


class QuantizedEmbedding(nn.Module):
    """An int8 embedding table (one scale per row) that a tied LM head shares: lookups
    widen only the rows they read."""

    def __init__(self, table: QuantizedLinear) -> None:
        super().__init__()
        if table.method != "int8":
            raise ValueError("a quantized embedding table is int8")
        self.table = table
        self.dtype = torch.float32

    @property
    def weight(self) -> Tensor:
        """The dequantized table (for reference paths; the fast paths never call it)."""
        return self.table.dequantized(self.dtype)

    def forward(self, ids: Tensor) -> Tensor:
        return (self.table.qweight[ids].to(self.dtype)
                * self.table.scale[ids].to(self.dtype)[..., None])
