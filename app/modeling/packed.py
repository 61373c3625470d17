"""Linear weights prepacked for oneDNN: the matrix products of a decode batch without
re-laying out the weights on every call.

oneDNN multiplies in a blocked weight layout. Given plain (out, in) weights, every call
first copies them into that layout; prepacked once at startup, the products of a batch of
8-32 rows run 1.3-1.6x faster (measured on a 2-vCPU AMD EPYC with AVX512-BF16: 12 layers
of a 134M model, bf16, 32 rows 22.9 -> 17.6 ms; fp32 59.5 -> 34.7 ms). Whether it pays is
measured at startup on the model's own weights (`choose_packing`), so CPUs where it does
not keep the plain path.

A packed weight is an opaque oneDNN tensor that cannot enter a compiled graph, so the
product is a custom op (`llm::packed_linear`) that takes a small integer tensor naming
the weight; the op looks the weight up in `_PACKED` (process-wide, filled when a model is
prepared). Plain weights stay too: the one-row product (batch-1 decode) streams them
faster as a compiled multiply-and-reduce, and the reference paths use them. The packed
copies cost one more copy of the linear weights in memory; packing is skipped (and the
reason logged) when that would take more than a quarter of the free memory.
"""

from __future__ import annotations

import itertools

import psutil
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from app.modeling.timing import median_seconds
from app.modeling.transformer import Transformer

# Packed weights by key. Process-wide because a custom op's implementation can only find
# them through a name; each module holds its key as a 0-d tensor (see `pack_model`).
_PACKED: dict[int, Tensor] = {}
_KEYS = itertools.count()
PACK_MIN_GAIN = 1.1  # must beat the plain product by this much on both batch sizes
PACK_MEMORY_FRACTION = 0.25


@torch.library.custom_op("llm::packed_linear", mutates_args=())
def packed_linear(x: Tensor, key: Tensor, out_features: int) -> Tensor:
    """x (..., in) @ packed weight -> (..., out_features)."""
    weight = _PACKED[int(key)]
    flat = x.reshape(-1, x.shape[-1]).contiguous()
    out = torch.ops.mkldnn._linear_pointwise(flat, weight, None, "none", [], "")
    return out.view(*x.shape[:-1], out_features)


@packed_linear.register_fake
def _packed_linear_shape(x: Tensor, key: Tensor, out_features: int) -> Tensor:
    return x.new_empty((*x.shape[:-1], out_features))


def _pack(weight: Tensor, batch_hint: int) -> Tensor:
    key = next(_KEYS)
    _PACKED[key] = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), batch_hint)
    return torch.tensor(key)


def packable(model: Transformer) -> list[tuple[nn.Module, Tensor]]:
    """(module, weight) of every product worth packing: each block's four, the LM head."""
    pairs: list[tuple[nn.Module, Tensor]] = []
    if model.quantization != "none":  # quantized products have their own kernels
        return pairs
    for block in model.blocks():
        for layer in (block.attn.qkv, block.attn.o, block.mlp.up, block.mlp.down):
            pairs.append((layer, layer.weight))
    if model.lm_head is not None:
        head = model.lm_head.weight if model.lm_head.weight is not None else model.embed.weight
        pairs.append((model.lm_head, head))
    return pairs


def choose_packing(model: Transformer, device: torch.device, measure: bool = True
                   ) -> tuple[bool, str]:
    """Whether prepacked products beat plain ones here (8 and 32 rows, the model's MLP
    weights), and why. measure=False (--prepack on) packs wherever oneDNN can."""
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False, f"not packed: oneDNN packing is for CPUs ({device.type})"
    pairs = packable(model)
    size = sum(w.nbytes for _, w in pairs)
    free = psutil.virtual_memory().available
    if size > PACK_MEMORY_FRACTION * free:
        return False, (f"not packed: a packed copy ({size / 2**20:.0f} MiB) would take more "
                       f"than {PACK_MEMORY_FRACTION:.0%} of free memory")
    if not measure:
        return True, f"packed for oneDNN ({size / 2**20:.0f} MiB; --prepack on)"
    layers = [block.mlp.up for block in model.blocks()]
    gains = []
    keys: list[Tensor] = []
    try:
        with torch.inference_mode():
            # Timed through the custom op the model would call, so its per-call cost
            # counts: on small models it can eat what the packed layout saves.
            keys = [_pack(layer.weight, 32) for layer in layers]
            for rows in (8, 32):
                x = torch.randn(rows, layers[0].in_features, dtype=layers[0].weight.dtype)
                plain = median_seconds(lambda: [F.linear(x, m.weight) for m in layers])  # noqa: B023
                fast = median_seconds(lambda: [
                    torch.ops.llm.packed_linear(x, k, m.out_features)  # noqa: B023
                    for k, m in zip(keys, layers, strict=True)])
                gains.append(plain / fast)
    except RuntimeError as exc:  # a dtype or ISA oneDNN cannot pack here
        return False, f"not packed: oneDNN refused ({str(exc).splitlines()[0][:120]})"
    finally:
        for key in keys:
            _PACKED.pop(int(key), None)
    measured = f"8 rows {gains[0]:.2f}x, 32 rows {gains[1]:.2f}x"
    if min(gains) < PACK_MIN_GAIN:
        return False, f"not packed: no gain here ({measured})"
    return True, f"packed for oneDNN ({size / 2**20:.0f} MiB; measured {measured})"


def pack_model(model: Transformer, batch_hint: int = 32) -> None:
    """Pack every product's weight; modules get `packed_key` (used by `dense`)."""
    with torch.inference_mode():
        for module, weight in packable(model):
            module.packed_key = _pack(weight, batch_hint)


def unpack_model(model: Transformer) -> None:
    for module, _ in packable(model):
        key = getattr(module, "packed_key", None)
        if key is not None:
            _PACKED.pop(int(key), None)
            del module.packed_key
