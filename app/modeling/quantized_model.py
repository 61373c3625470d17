"""Quantizing a loaded model, and the checkpoint layout a quantized model is saved in.

What is quantized (`--quantization`):
  int8  every block's four products (q|k|v, attention output, MLP up (gate|up), MLP
        down) and the LM head, int8 per output channel. A tied LM head and the input
        embedding share one int8 table (lookups widen only the rows they read).
  int4  the block products int4 group-wise (`--int4-group-size`, default 64); the LM
        head int8 as above (llama.cpp's Q4 files likewise keep the output matrix at
        higher precision: it is one matrix, and its errors go straight into the logits).
Never quantized: norms, biases, learned position embeddings, an untied input embedding
(a decode step reads one row of it) and a classification head (a few rows).

Saved layout (`python -m app quantize SRC DST`): `config.json` is the source's, plus
    "quantization_config": {"quant_method": "llm-inference", "format_version": 1,
                             "method": "int8" | "int4", "group_size": G,
                             "lm_head": "int8", "compute_dtype": "float32" | ...}
and `model.safetensors` holds *our* parameter names (the fused layout of
`app.modeling.transformer`: `layers.N.attn.qkv.qweight`, `.scale`, int4 `.mins`,
`.bias`; `lm_head.quantized.qweight` / `.scale` or, tied, `embed.table.qweight` /
`.scale`; float tensors as in the model). It loads here without re-quantizing; it is
not a Hugging Face layout (transformers cannot load it).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from app.modeling.heads import LMHead
from app.modeling.quantize import int4_group_problem
from app.modeling.quantized_linear import QuantizedEmbedding, QuantizedLinear
from app.modeling.transformer import Transformer

FORMAT = "llm-inference"
FORMAT_VERSION = 1
DEFAULT_INT4_GROUP_SIZE = 64


class QuantizedLMHead(LMHead):
    """The LM head with an int8 product (its own, or the table it shares with a
    quantized input embedding), in place of `LMHead`."""

    def __init__(self, table: QuantizedLinear, tied: bool) -> None:
        super().__init__(table.in_features, table.out_features, tied=True)  # no float weight
        self.tied = tied
        self.quantized = table

    def forward(self, hidden: Tensor, embed: nn.Module, gemv: bool = False) -> Tensor:
        return self.quantized(hidden)


def block_products(model: Transformer) -> list[tuple[nn.Module, str]]:
    """(parent, attribute) of every block product."""
    return [(parent, name) for block in model.blocks()
            for parent, name in ((block.attn, "qkv"), (block.attn, "o"),
                                 (block.mlp, "up"), (block.mlp, "down"))]


def quantization_problem(model: Transformer, method: str, group_size: int) -> str | None:
    if method == "int4":
        for parent, name in block_products(model):
            layer = getattr(parent, name)
            problem = int4_group_problem(layer.in_features, group_size)
            if problem:
                return f"int4 cannot store {name} of this model: {problem}"
    return None


def _quantize_head(model: Transformer, dtype: torch.dtype) -> None:
    head = model.lm_head
    if head is None:
        return
    if head.weight is not None:  # untied: the head alone
        model.lm_head = QuantizedLMHead(QuantizedLinear.from_weight(head.weight, None, "int8"),
                                        tied=False)
        return
    table = QuantizedLinear.from_weight(model.embed.weight, None, "int8")
    embed = QuantizedEmbedding(table)
    embed.dtype = dtype
    model.embed = embed  # type: ignore[assignment]
    model.lm_head = QuantizedLMHead(table, tied=True)


def quantize_model(model: Transformer, method: str, group_size: int = DEFAULT_INT4_GROUP_SIZE,
                   dtype: torch.dtype | None = None) -> None:
    """Replace the model's products by quantized ones, in place (float weights freed).
    `dtype`: the activations' dtype the model will run in (default: its weights')."""
    problem = quantization_problem(model, method, group_size)
    if problem:
        raise ValueError(problem)
    dtype = dtype or model.embed.weight.dtype
    with torch.no_grad():
        for parent, name in block_products(model):
            layer = getattr(parent, name)
            setattr(parent, name, QuantizedLinear.from_weight(layer.weight, layer.bias, method,
                                                              group_size))
        _quantize_head(model, dtype)
    model.quantization = method
    model.quantization_group_size = group_size if method == "int4" else 0


def skeleton(model: Transformer, method: str, group_size: int, dtype: torch.dtype) -> None:
    """Swap in empty quantized modules (meta device) so a saved quantized state dict can
    be loaded into `model` as is."""
    for parent, name in block_products(model):
        layer = getattr(parent, name)
        bias = None if layer.bias is None else torch.empty_like(layer.bias)
        setattr(parent, name, QuantizedLinear(layer.in_features, layer.out_features, method,
                                              group_size, bias))
    head = model.lm_head
    if head is not None:
        vocab, hidden = model.config.vocab_size, model.config.hidden_size
        table = QuantizedLinear(hidden, vocab, "int8")
        if head.weight is None:
            embed = QuantizedEmbedding(table)
            embed.dtype = dtype
            model.embed = embed  # type: ignore[assignment]
        model.lm_head = QuantizedLMHead(table, tied=head.tied)
    model.quantization = method
    model.quantization_group_size = group_size if method == "int4" else 0


def quantized_layers(model: Transformer) -> list[QuantizedLinear]:
    return [m for m in model.modules() if isinstance(m, QuantizedLinear)]


def weight_count(model: Transformer) -> int:
    """Parameters the model represents, quantized weights included (a tied table once)."""
    count = sum(p.numel() for p in model.parameters())
    seen: set[int] = set()
    for layer in quantized_layers(model):
        if id(layer) not in seen:
            seen.add(id(layer))
            count += layer.in_features * layer.out_features
    return count


def describe(model: Transformer) -> str:
    method = getattr(model, "quantization", "none")
    if method == "none":
        return "none"
    layers = quantized_layers(model)
    size = sum(t.nbytes for m in layers for t in m.buffers())
    group = f", groups of {model.quantization_group_size}" if method == "int4" else ""
    head = "; LM head int8" if model.lm_head is not None else ""
    return f"{method}{group}{head}; {size / 2**20:.0f} MiB of quantized weights"


def quantization_config(model: Transformer, dtype: torch.dtype) -> dict[str, object]:
    return {"quant_method": FORMAT, "format_version": FORMAT_VERSION,
            "method": model.quantization, "group_size": model.quantization_group_size,
            "lm_head": "int8" if model.lm_head is not None else "none",
            "compute_dtype": str(dtype).removeprefix("torch.")}
