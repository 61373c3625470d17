"""Linear layers with quantized weights, and the kernels that multiply by them.

`QuantizedLinear` replaces `nn.Linear` (and the LM head's product) when a model is served
with `--quantization int8|int4` (formats in `app.modeling.quantize`). Its product is a
custom op (`llm::int8_linear`, `llm::int4_linear`), opaque to torch.compile like the
prepacked product, so compiled graphs call it as one node.

Which kernel runs is chosen per machine by measurement (`choose_kernels`, at startup on
the model's own weights), separately for one row (batch-1 decode, bound by the bytes of
weights streamed) and for a few rows (2-64: a decode batch). Candidates:
  cpp      app/kernels/quant_linear.cpp, built for this CPU's vector ISA (when it builds)
  aten     torch's own int8 weight-only kernel (`aten._weight_int8pack_mm`; int8 only)
  dequant  widen the weights to the activation dtype, then a BLAS product (pure PyTorch;
           correct everywhere, CUDA included)
Above 64 rows (prompt chunks) the work is compute-bound and `dequant` always runs: the
widening is paid once for all rows and the product is the fastest GEMM torch has.

A compiled one-row graph (batch-1 decode) whose one-row choice is `cpp` calls the C++ op
(`llm_quant::*`, registered by the extension) directly: a Python custom op costs tens of
microseconds a call, which at ~50 products a step is a tenth of the step.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from app.kernels.build import quant_extension
from app.modeling.quantize import (
    Int4Weight,
    Int8Weight,
    dequantize_int4,
    dequantize_int8,
    quantize_int4,
    quantize_int8,
)
from app.modeling.timing import median_seconds

log = logging.getLogger(__name__)

FEW_ROWS = 64  # above this, always dequant + BLAS
Int8Kernel = Callable[[Tensor, Tensor, Tensor], Tensor]
Int4Kernel = Callable[[Tensor, Tensor, Tensor, Tensor, int], Tensor]


def _int8_dequant(x: Tensor, q: Tensor, scale: Tensor) -> Tensor:
    return F.linear(x, q.to(x.dtype) * scale.to(x.dtype)[:, None])


def _int8_aten(x: Tensor, q: Tensor, scale: Tensor) -> Tensor:
    flat = x.reshape(-1, x.shape[-1]).contiguous()
    out = torch.ops.aten._weight_int8pack_mm(flat, q, scale.to(x.dtype))
    return out.view(*x.shape[:-1], q.shape[0])


def _int8_cpp(x: Tensor, q: Tensor, scale: Tensor) -> Tensor:
    module, _ = quant_extension()
    assert module is not None
    return module.int8_linear(x, q, scale)


@functools.cache
def cpp_ops() -> bool:
    """Whether the C++ kernels are loaded as torch ops (llm_quant::*), with their shapes
    registered for tracing."""
    module, _ = quant_extension()
    if module is None:
        return False

    torch.library.register_fake("llm_quant::int8_linear", _int8_linear_shape)
    torch.library.register_fake("llm_quant::int4_linear", _int4_linear_shape)

    return True


def _int4_dequant(x: Tensor, q: Tensor, scale: Tensor, mins: Tensor, group: int) -> Tensor:
    return F.linear(x, dequantize_int4(Int4Weight(q, scale, mins, group), x.dtype))


def _int4_cpp(x: Tensor, q: Tensor, scale: Tensor, mins: Tensor, group: int) -> Tensor:
    module, _ = quant_extension()
    assert module is not None
    return module.int4_linear(x, q, scale, mins, group)


INT8_KERNELS: dict[str, Int8Kernel] = {"cpp": _int8_cpp, "aten": _int8_aten,
                                       "dequant": _int8_dequant}
INT4_KERNELS: dict[str, Int4Kernel] = {"cpp": _int4_cpp, "dequant": _int4_dequant}

# The chosen kernel per (format, row class); process-wide, like the CPU it describes.
CHOSEN: dict[tuple[str, str], str] = {("int8", "one"): "dequant", ("int8", "few"): "dequant",
                                      ("int4", "one"): "dequant", ("int4", "few"): "dequant"}


def _row_class(x: Tensor) -> str | None:
    rows = x.numel() // max(x.shape[-1], 1)
    return "one" if rows == 1 else "few" if rows <= FEW_ROWS else None


@torch.library.custom_op("llm::int8_linear", mutates_args=())
def int8_linear(x: Tensor, q: Tensor, scale: Tensor) -> Tensor:
    """x (..., K) @ (q (N, K) * scale (N))^T -> (..., N) in x's dtype."""
    rows = _row_class(x)
    name = CHOSEN[("int8", rows)] if rows and x.device.type == "cpu" else "dequant"
    return INT8_KERNELS[name](x, q, scale)


@int8_linear.register_fake
def _int8_linear_shape(x: Tensor, q: Tensor, scale: Tensor) -> Tensor:
    return x.new_empty((*x.shape[:-1], q.shape[0]))


@torch.library.custom_op("llm::int4_linear", mutates_args=())
def int4_linear(x: Tensor, q: Tensor, scale: Tensor, mins: Tensor, group: int) -> Tensor:
    """x (..., K) @ dequantized int4 weight^T -> (..., N) in x's dtype."""
    rows = _row_class(x)
    name = CHOSEN[("int4", rows)] if rows and x.device.type == "cpu" else "dequant"
    return INT4_KERNELS[name](x, q, scale, mins, group)


@int4_linear.register_fake
def _int4_linear_shape(x: Tensor, q: Tensor, scale: Tensor, mins: Tensor, group: int) -> Tensor:
    return x.new_empty((*x.shape[:-1], q.shape[0]))


class QuantizedLinear(nn.Module):
    """y = x W^T (+ b) with W stored as int8 (per output channel) or int4 (group-wise)."""

    def __init__(self, in_features: int, out_features: int, method: str, group_size: int = 0,
                 bias: Tensor | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.method, self.group_size = method, group_size
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

    def dequantized(self, dtype: torch.dtype = torch.float32) -> Tensor:
        if self.method == "int8":
            return dequantize_int8(Int8Weight(self.qweight, self.scale), dtype)
        return dequantize_int4(Int4Weight(self.qweight, self.scale, self.mins,
                                          self.group_size), dtype)

    def forward(self, x: Tensor, one_row: bool = False) -> Tensor:
        """`one_row`: the caller knows x has one row (a compiled batch-1 graph; see
        `Transformer.dense`); if the C++ kernel won for one row, it is called directly as
        a torch op, so the compiled step reaches it without a Python call."""
        # CHOSEN names "cpp" only once the C++ ops are loaded (`choose_kernels`); nothing
        # here may call into the loader, which a compiled graph cannot trace.
        direct = one_row and x.device.type == "cpu" and CHOSEN[(self.method, "one")] == "cpp"
        if self.method == "int8":
            op = torch.ops.llm_quant.int8_linear if direct else torch.ops.llm.int8_linear
            y = op(x, self.qweight, self.scale)
        else:
            op = torch.ops.llm_quant.int4_linear if direct else torch.ops.llm.int4_linear
            y = op(x, self.qweight, self.scale, self.mins, self.group_size)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.method == "int4" else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"method={self.method}{group}")


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


# ---------------------------------------------------------------------------- choosing


def available_kernels(method: str) -> list[str]:
    names = ["dequant"]
    if method == "int8":
        names.append("aten")
    if cpp_ops():
        names.append("cpp")
    return names


def choose_kernels(layers: list[QuantizedLinear], dtype: torch.dtype) -> str:
    """Time every available kernel on `layers` (a model's MLP products, every layer, so the
    weights stream from memory as in a decode step) with 1 and 16 rows; keep the fastest
    for each row class. Returns what was measured, for the startup log and /v1/info."""
    method = layers[0].method
    kernels: dict[str, Callable[..., Tensor]] = dict(
        INT8_KERNELS if method == "int8" else INT4_KERNELS)
    report = []
    for cls, rows in (("one", 1), ("few", 16)):
        x = torch.randn(rows, layers[0].in_features, dtype=dtype)
        timings: dict[str, float] = {}
        for name in available_kernels(method):
            kernel = kernels[name]
            args = ([(m.qweight, m.scale) for m in layers] if method == "int8" else
                    [(m.qweight, m.scale, m.mins, m.group_size) for m in layers])
            try:
                with torch.inference_mode():
                    timings[name] = median_seconds(
                        lambda: [kernel(x, *a) for a in args])  # noqa: B023
            except RuntimeError as exc:  # a dtype or shape a stock kernel refuses
                log.info("%s kernel %s unusable: %s", method, name, str(exc)[:120])
        best = min(timings, key=timings.__getitem__)
        CHOSEN[(method, cls)] = best
        base = timings["dequant"]
        report.append(f"{rows} row{'s' * (rows > 1)}: {best} ("
                      + ", ".join(f"{n} {base / t:.2f}x" for n, t in timings.items()) + ")")
    return "; ".join(report)
