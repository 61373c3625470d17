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

import torch
from torch import Tensor, nn

from app.modeling.heads import LMHead
from app.modeling.packed import packable
from app.modeling.quant_kernels import cpp_ops
from app.modeling.timing import median_seconds
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


def choose_few_rows(model: Transformer, device: torch.device) -> tuple[int, str]:
    """The largest row count up to which the C++ kernel beats the product the model
    would otherwise run (its MLP and LM-head weights, every layer's, so they stream from
    memory as in a step), and a line for the log; 0 when it never does or cannot run."""
    if device.type != "cpu" or model.quantization != "none":
        return 0, "off (float weights on a CPU only)"
    if not cpp_ops():
        return 0, "off (the C++ kernels are unavailable)"
    layers = [block.mlp.up for block in model.blocks()]
    head = model.lm_head
    dtype = layers[0].weight.dtype
    if dtype not in (torch.float32, torch.bfloat16):
        return 0, f"off ({dtype} weights)"
    chosen, parts = 0, []
    try:
        with torch.inference_mode():
            for rows in CANDIDATE_ROWS:
                x = torch.randn(rows, layers[0].in_features, dtype=dtype)
                h = torch.randn(rows, layers[0].in_features, dtype=dtype)

                def today(x: Tensor = x, h: Tensor = h) -> object:
                    out = [m(x) for m in layers]
                    return out if head is None else head(h, model.embed)

                def ours(x: Tensor = x, h: Tensor = h) -> object:
                    out = [_few(x, m.weight) for m in layers]
                    return out if head is None else _few(h, head.float_weight(model.embed))

                gain = median_seconds(today, 7) / median_seconds(ours, 7)
                parts.append(f"{rows} rows {gain:.2f}x")
                if gain < MIN_GAIN:
                    break
                chosen = rows
    except RuntimeError as exc:  # a dtype this build cannot multiply (bf16 without BF16)
        return 0, f"off (the kernel refused: {str(exc).splitlines()[0][:120]})"
    verdict = f"2-{chosen} rows" if chosen else "off: no gain here"
    return chosen, f"{verdict} (measured against today's product: {', '.join(parts)})"


def use_few_rows(model: Transformer, max_rows: int) -> None:
    """Route products of 2..max_rows rows (block products and the LM head) to the kernel."""
    if not cpp_ops():  # also registers the op's shapes, so compiled graphs can trace it
        raise RuntimeError("the C++ kernels are unavailable")
    for parent, name in packable(model):
        layer = getattr(parent, name)
        if isinstance(layer, nn.Linear) and not isinstance(layer, FewRowsLinear):
            setattr(parent, name, FewRowsLinear(layer, max_rows))
    if model.lm_head is not None and not isinstance(model.lm_head, FewRowsLMHead):
        model.lm_head = FewRowsLMHead(model.lm_head, max_rows)


def drop_few_rows(model: Transformer) -> None:
    """Put the replaced modules back."""
    for parent, name in packable(model):
        layer = getattr(parent, name)
        if isinstance(layer, FewRowsLinear):
            setattr(parent, name, layer.many)
    if isinstance(model.lm_head, FewRowsLMHead):
        model.lm_head = model.lm_head.many
