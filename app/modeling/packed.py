"""Linear weights prepacked for oneDNN: the matrix products of a decode batch without
re-laying out the weights on every call.

oneDNN multiplies in a blocked weight layout. Given plain (out, in) weights, every call
first copies them into that layout; prepacked once at startup, the products of a batch of
8-32 rows run 1.3-1.6x faster (measured on a 2-vCPU AMD EPYC with AVX512-BF16: 12 layers
of a 134M model, bf16, 32 rows 22.9 -> 17.6 ms; fp32 59.5 -> 34.7 ms). Whether it pays is
measured at startup on the model's own weights (`choose_packing`), so CPUs where it does
not keep the plain path.

A packed weight is an opaque oneDNN tensor; the product is a custom op
(`llm::packed_linear`) that takes it as an argument, so compiled graphs call it as one
node. Packed products are module replacements: `PackedLinear` (an `nn.Linear` that also
holds its packed weight) and `PackedLMHead`, swapped in by `pack_model` and back out by
`unpack_model`, so the model's code does not know about packing and nothing is
process-wide. Plain weights stay too: the one-row product (batch-1 decode) streams them
faster as a compiled multiply-and-reduce, and the reference paths use them. The packed
copies cost one more copy of the linear weights in memory; packing is skipped (and the
reason logged) when that would take more than a quarter of the free memory.
"""

from __future__ import annotations

import psutil
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from app.modeling.heads import LMHead
from app.modeling.timing import speedup
from app.modeling.transformer import Transformer

PACK_MIN_GAIN = 1.1  # must beat the plain product by this much on both batch sizes
PACK_MEMORY_FRACTION = 0.25


@torch.library.custom_op("llm::packed_linear", mutates_args=())
def packed_linear(x: Tensor, weight: Tensor, out_features: int) -> Tensor:
    """x (..., in) @ packed weight -> (..., out_features)."""
    flat = x.reshape(-1, x.shape[-1]).contiguous()
    out = torch.ops.mkldnn._linear_pointwise(flat, weight, None, "none", [], "")
    return out.view(*x.shape[:-1], out_features)


@packed_linear.register_fake
def _packed_linear_shape(x: Tensor, weight: Tensor, out_features: int) -> Tensor:
    return x.new_empty((*x.shape[:-1], out_features))


def _pack(weight: Tensor, batch_hint: int) -> Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), batch_hint)


class PackedLinear(nn.Linear):
    """`nn.Linear` whose product runs on a oneDNN-packed copy of its weight (the plain
    weight stays, for the multiply-and-reduce form and for unpacking)."""

    def __init__(self, linear: nn.Linear, batch_hint: int) -> None:
        super().__init__(linear.in_features, linear.out_features, bias=False,
                         device="meta")
        self.weight, self.bias = linear.weight, linear.bias
        # Not a buffer: an opaque oneDNN tensor that is never saved or moved.
        self.packed = _pack(linear.weight, batch_hint)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.ops.llm.packed_linear(x, self.packed, self.out_features)
        return y if self.bias is None else y + self.bias

    def unpacked(self) -> nn.Linear:
        linear = nn.Linear(self.in_features, self.out_features, bias=False, device="meta")
        linear.weight, linear.bias = self.weight, self.bias
        return linear


class PackedLMHead(LMHead):
    """`LMHead` whose product (not its multiply-and-reduce form) runs on a packed copy."""

    def __init__(self, head: LMHead, weight: Tensor, batch_hint: int) -> None:
        super().__init__(weight.shape[1], weight.shape[0], tied=True)
        self.tied, self.weight = head.tied, head.weight
        self.packed = _pack(weight, batch_hint)

    def forward(self, hidden: Tensor, embed: nn.Module, gemv: bool = False) -> Tensor:
        if gemv:
            return super().forward(hidden, embed, gemv)
        return torch.ops.llm.packed_linear(hidden, self.packed, self.packed.shape[0])

    def unpacked(self) -> LMHead:
        head = LMHead(self.packed.shape[1], self.packed.shape[0], tied=True)
        head.tied, head.weight = self.tied, self.weight
        return head


def packable(model: Transformer) -> list[tuple[nn.Module, str]]:
    """(parent, attribute) of every block product worth packing (each block's four);
    none for a quantized model, whose products have their own kernels."""
    if model.quantization != "none":
        return []
    return [(parent, name) for block in model.blocks()
            for parent, name in ((block.attn, "qkv"), (block.attn, "o"), (block.mlp, "up"),
                                 (block.mlp, "down"))]


def _head_weight(model: Transformer) -> Tensor | None:
    if model.quantization != "none" or model.lm_head is None:
        return None
    return model.lm_head.float_weight(model.embed)


def choose_packing(model: Transformer, device: torch.device, measure: bool = True
                   ) -> tuple[bool, str]:
    """Whether prepacked products beat plain ones here (8 and 32 rows, the model's MLP
    weights), and why. measure=False (--prepack on) packs wherever oneDNN can."""
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False, f"not packed: oneDNN packing is for CPUs ({device.type})"
    weights = [getattr(parent, name).weight for parent, name in packable(model)]
    head = _head_weight(model)
    size = sum(w.nbytes for w in weights) + (head.nbytes if head is not None else 0)
    free = psutil.virtual_memory().available
    if size > PACK_MEMORY_FRACTION * free:
        return False, (f"not packed: a packed copy ({size / 2**20:.0f} MiB) would take more "
                       f"than {PACK_MEMORY_FRACTION:.0%} of free memory")
    if not measure:
        return True, f"packed for oneDNN ({size / 2**20:.0f} MiB; --prepack on)"
    layers = [block.mlp.up for block in model.blocks()]
    gains = []
    try:
        with torch.inference_mode():
            # Timed through the module the model would call, so the custom op's per-call
            # cost counts: on small models it can eat what the packed layout saves.
            packed = [PackedLinear(layer, 32) for layer in layers]
            for rows in (8, 32):
                x = torch.randn(rows, layers[0].in_features, dtype=layers[0].weight.dtype)
                gains.append(speedup(lambda: [F.linear(x, m.weight) for m in layers],  # noqa: B023
                                     lambda: [m(x) for m in packed], 5))  # noqa: B023
    except RuntimeError as exc:  # a dtype or ISA oneDNN cannot pack here
        return False, f"not packed: oneDNN refused ({str(exc).splitlines()[0][:120]})"
    measured = f"8 rows {gains[0]:.2f}x, 32 rows {gains[1]:.2f}x"
    if min(gains) < PACK_MIN_GAIN:
        return False, f"not packed: no gain here ({measured})"
    return True, f"packed for oneDNN ({size / 2**20:.0f} MiB; measured {measured})"


def pack_model(model: Transformer, batch_hint: int = 32) -> None:
    """Replace every packable product (and the LM head) by its packed module."""
    with torch.inference_mode():
        for parent, name in packable(model):
            setattr(parent, name, PackedLinear(getattr(parent, name), batch_hint))
        head = _head_weight(model)
        if model.lm_head is not None and head is not None:
            model.lm_head = PackedLMHead(model.lm_head, head, batch_hint)


def unpack_model(model: Transformer) -> None:
    """Put the plain modules back (frees the packed copies)."""
    for parent, name in packable(model):
        layer = getattr(parent, name)
        if isinstance(layer, PackedLinear):
            setattr(parent, name, layer.unpacked())
    if isinstance(model.lm_head, PackedLMHead):
        model.lm_head = model.lm_head.unpacked()
