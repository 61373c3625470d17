"""Products of a few rows (2 to 8) through our C++ kernel, where BLAS is slow at them.

A speculative verification step scores k + 1 tokens of a sequence, and a small decode
batch a handful: products of 2-8 rows. With so few rows the weights' bytes decide the
time, and a good product streams them once. MKL does not here: measured on AMD EPYC
Zen 5 (AVX-512, 2 vCPUs), 5 rows of the shipped model's 8192 x 256 LM head cost 3-4x one
row, where the kernel (`llm_quant::float_linear`, app/kernels/quant_linear.cpp: each
thread walks its share of the weight rows once, 4 weight rows against 4 input rows at a
time) costs about the same as one. Whether it pays, and up to how many rows, is measured
at startup on the model's own weights (`choose_few_rows`), so a CPU whose BLAS is good
at small products keeps it.

Like packing (app.modeling.packed), these are module replacements: `FewRowsLinear` (an
`nn.Linear` that also keeps the product it replaced, plain or packed, for more rows) and
`FewRowsLMHead`, swapped in by `use_few_rows` and back out by `drop_few_rows`; nothing
process-wide. One row keeps its own path (the compiled multiply-and-reduce, or BLAS).
The row count is a symbolic size in compiled graphs: the branch on it becomes a guard,
so a graph serves 2 to N rows and another serves more.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from app.modeling.heads import LMHead
from app.modeling.packed import packable
from app.modeling.quant_kernels import cpp_ops
from app.modeling.timing import speedup
from app.modeling.transformer import Transformer

# Tried in turn at startup; the largest that wins is kept. Never 2 alone: compiled graphs
# with a symbolic row count above one would then be specialised to exactly 2 rows by the
# branch (a constraint violation when tracing), where 2..4 stays a range.
CANDIDATE_ROWS = (4, 8)
MIN_GAIN = 1.15  # must beat the product it replaces by this much


def _rows(x: Tensor) -> int:
    return x.numel() // x.shape[-1]


def _few(x: Tensor, weight: Tensor) -> Tensor:
    return torch.ops.llm_quant.float_linear(x.contiguous(), weight)


class FewRowsLinear(nn.Linear):
    """`nn.Linear` whose products of 2..max_rows rows run the C++ kernel; more rows run
    the module it replaced (`many`: plain, or prepacked for oneDNN)."""

    def __init__(self, linear: nn.Linear, max_rows: int) -> None:
        super().__init__(linear.in_features, linear.out_features, bias=False, device="meta")
        self.weight, self.bias = linear.weight, linear.bias
        self.many = linear
        self.max_rows = max_rows

    def forward(self, x: Tensor) -> Tensor:
        if 2 <= _rows(x) <= self.max_rows:
            y = _few(x, self.weight)
            return y if self.bias is None else y + self.bias
        return self.many(x)


class FewRowsLMHead(LMHead):
    """`LMHead` whose products of 2..max_rows rows run the C++ kernel."""

    def __init__(self, head: LMHead, max_rows: int) -> None:
        super().__init__(0, 0, tied=True)
        self.tied, self.weight = head.tied, head.weight
        self.many = head
        self.max_rows = max_rows

    def forward(self, hidden: Tensor, embed: nn.Module, gemv: bool = False) -> Tensor:
        if not gemv and 2 <= _rows(hidden) <= self.max_rows:
            return _few(hidden, self.float_weight(embed))
        return self.many(hidden, embed, gemv)


@dataclass(frozen=True)
class FewRows:
    """Up to how many rows products take the kernel (0: never), for the block products
    and for the LM head apart: they are measured apart, as the head's one large weight
    (vocabulary x hidden) and the blocks' smaller ones can go different ways (measured:
    AMD Zen 5, default-lm, 5 rows: block products 1.4-2.5x faster than oneDNN's packed
    ones, the 8192 x 256 head 0.45x)."""

    blocks: int = 0
    head: int = 0


def _largest_winner(today: Callable[[Tensor], object], ours: Callable[[Tensor], object],
                    features: int, dtype: torch.dtype) -> tuple[int, list[str]]:
    chosen, parts = 0, []
    for rows in CANDIDATE_ROWS:
        x = torch.randn(rows, features, dtype=dtype)
        gain = speedup(lambda: today(x), lambda: ours(x))  # noqa: B023
        parts.append(f"{rows} rows {gain:.2f}x")
        if gain < MIN_GAIN:
            break
        chosen = rows
    return chosen, parts


def choose_few_rows(model: Transformer, device: torch.device) -> tuple[FewRows, str]:
    """Up to how many rows the C++ kernel beats the products the model would otherwise
    run, for its block products (timed on every layer's MLP weights, so they stream
    from memory as in a step) and for its LM head; and a line for the log."""
    if device.type != "cpu" or model.quantization != "none":
        return FewRows(), "off (float weights on a CPU only)"
    if not cpp_ops():
        return FewRows(), "off (the C++ kernels are unavailable)"
    layers = [block.mlp.up for block in model.blocks()]
    head = model.lm_head
    dtype = layers[0].weight.dtype
    if dtype not in (torch.float32, torch.bfloat16):
        return FewRows(), f"off ({dtype} weights)"
    features = layers[0].in_features
    try:
        with torch.inference_mode():
            blocks, block_parts = _largest_winner(
                lambda x: [m(x) for m in layers],
                lambda x: [_few(x, m.weight) for m in layers], features, dtype)
            head_rows, head_parts = 0, ["none"]
            if head is not None:
                weight = head.float_weight(model.embed)
                head_rows, head_parts = _largest_winner(
                    lambda x: head(x, model.embed), lambda x: _few(x, weight), features,
                    dtype)
    except RuntimeError as exc:  # a dtype this build cannot multiply (bf16 without BF16)
        return FewRows(), f"off (the kernel refused: {str(exc).splitlines()[0][:120]})"

    def verdict(rows: int) -> str:
        return f"2-{rows} rows" if rows else "off"

    return FewRows(blocks, head_rows), (
        f"block products {verdict(blocks)} ({', '.join(block_parts)}), LM head "
        f"{verdict(head_rows)} ({', '.join(head_parts)}) (gains over today's product)")


def use_few_rows(model: Transformer, blocks: int, head: int | None = None) -> None:
    """Route block products of 2..`blocks` rows and LM-head products of 2..`head` rows
    (default: `blocks`) to the kernel; 0 leaves that kind alone."""
    if not cpp_ops():  # also registers the op's shapes, so compiled graphs can trace it
        raise RuntimeError("the C++ kernels are unavailable")
    head = blocks if head is None else head
    if blocks:
        for parent, name in packable(model):
            layer = getattr(parent, name)
            if isinstance(layer, nn.Linear) and not isinstance(layer, FewRowsLinear):
                setattr(parent, name, FewRowsLinear(layer, blocks))
    if head and model.lm_head is not None and not isinstance(model.lm_head, FewRowsLMHead):
        model.lm_head = FewRowsLMHead(model.lm_head, head)


def drop_few_rows(model: Transformer) -> None:
    """Put the replaced modules back."""
    for parent, name in packable(model):
        layer = getattr(parent, name)
        if isinstance(layer, FewRowsLinear):
            setattr(parent, name, layer.many)
    if isinstance(model.lm_head, FewRowsLMHead):
        model.lm_head = model.lm_head.many
