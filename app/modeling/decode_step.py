"""A whole decode step as one compiled graph: embedding -> every layer (with its KV-cache
write and paged attention) -> final norm -> LM head.

Why: a step of a small model is mostly per-call cost, not arithmetic. The piecewise path
(app.modeling.compile) calls three compiled graphs per layer and runs the KV writes, the
row gathers and the Python between them eagerly: for the shipped 6-layer default-lm,
19 compiled calls (each with its guard checks) and about 60 small eager ops a token.
Here the same work is one call. llama.cpp reuses one compute graph across tokens for
the same reason.

When: every new token of the step is a decode row (app.modeling.attention: one new
token over a cached context, or a verification step's last token and guesses) of a
language model, every row's logits are wanted, and either the decode attention is the
C++ kernel (which reads each row's own length: rows of any lengths share the step) or
the rows' context lengths fit one decode group (`DECODE_BUCKET_RATIO`, so padding the
compiled reductions to the longest row costs no more than the piecewise path's grouping
would).
Any other step (prompt chunks, scoring, embeddings) runs the piecewise path. LoRA
adapters ride along as in `Transformer.forward`.

The row count is symbolic above one, and so is the block-table width: two graphs (a few
more with adapters), all traced by the runner's warm-up.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch
from torch import Tensor

from app.modeling.attention import (
    DECODE_BUCKET_RATIO,
    DECODE_ROWS_SPAN,
    PagedKVCache,
    decode_attention,
    decode_rows_of,
    slots_for,
)
from app.modeling.attention_kernel import kernel_decode_attention
from app.modeling.direct_call import DirectCompiled
from app.modeling.lora import LoraStep
from app.modeling.rope import rope_cos_sin
from app.modeling.timing import speedup
from app.modeling.transformer import Transformer, lm_logits


@dataclass(frozen=True)
class DecodeRows:
    """Index tensors of a step whose new tokens are all decode rows, in batch order."""

    slots: Tensor  # (N,) the cache slot each new token's K/V is written to
    tables: Tensor  # (N, W) each row's block table, padded with block 0
    lens: Tensor  # (N,) each row's context length, itself included


def decode_rows(query_lens: list[int], context_lens: list[int], block_tables: list[list[int]],
                block_size: int, device: torch.device, any_lengths: bool = False
                ) -> DecodeRows | None:
    """The step's rows for the one-graph path, or None where it does not apply (a
    sequence with nothing cached or more new tokens than a verification brings, or
    context lengths too far apart for one padded attention call). `any_lengths`: the
    step's attention reads each row's own length and no padding (the C++ kernel), so
    rows of any lengths share the call."""
    slots: list[int] = []
    tables: list[list[int]] = []
    lens: list[int] = []
    for q_len, ctx, table in zip(query_lens, context_lens, block_tables, strict=True):
        if not 0 < q_len <= DECODE_ROWS_SPAN or ctx <= q_len:
            return None
        slots.extend(slots_for(table, ctx - q_len, ctx, block_size))
        for row_table, row_ctx in decode_rows_of(table, ctx, q_len, block_size):
            tables.append(row_table)
            lens.append(row_ctx)
    if not any_lengths and max(lens) > DECODE_BUCKET_RATIO * min(lens):
        return None
    # at least two blocks wide: a one-block width would be a graph of its own (a size-1
    # dimension is never symbolic), one more whole-model compile for the few steps whose
    # contexts all fit one block; its padding is masked like any row's shorter table
    width = max(2, *(len(t) for t in tables))
    return DecodeRows(
        slots=torch.tensor(slots, dtype=torch.long, device=device),
        tables=torch.tensor([t + [0] * (width - len(t)) for t in tables], device=device),
        lens=torch.tensor(lens, device=device))


def decode_step(model: Transformer, input_ids: Tensor, positions: Tensor, k_layers: list[Tensor],
                v_layers: list[Tensor], slots: Tensor, tables: Tensor, lens: Tensor,
                block_size: int, gemv: bool, lora: LoraStep | None = None,
                kernel_attention: bool = False) -> Tensor:
    """input_ids, positions, slots, lens (N,); tables (N, W); k_layers / v_layers one
    (num_slots, nkv, hd) tensor per layer, written in place -> logits (N, vocab).
    `lora`: the rows' adapters (app.modeling.lora), as in `Transformer.forward`.
    `kernel_attention`: attention through the C++ kernel (app.modeling.attention_kernel),
    else as the compiled reductions."""
    attend = kernel_decode_attention if kernel_attention else decode_attention
    x = model.embed(input_ids)[None]  # (1, N, H)
    rope = None
    if model.pos_embed is not None:
        x = x + model.pos_embed(positions)[None]
    else:
        if model.inv_freq is None:
            raise RuntimeError("rotary frequencies missing: call init_rope first")
        rope = rope_cos_sin(positions[None], model.inv_freq, x.dtype)
    for layer, block in enumerate(model.blocks()):
        adapters = lora.layer(layer) if lora is not None else None
        q, k, v = block.pre_attention(x, rope, gemv, adapters)  # q (1, N, nh, hd); k, v nkv
        k_layers[layer].index_copy_(0, slots, k[0])  # every row's key before any row reads
        v_layers[layer].index_copy_(0, slots, v[0])
        k_blocks = k_layers[layer].view(-1, block_size, *k_layers[layer].shape[1:])
        v_blocks = v_layers[layer].view(-1, block_size, *v_layers[layer].shape[1:])
        y = attend(q[0], k_blocks, v_blocks, tables, lens)[None]  # (1, N, nh, hd)
        x = block.post_attention(x, y, gemv, adapters)
    return lm_logits(model, model.norm(x)[0], gemv)  # (N, vocab)


# Inductor's generated code asserts every input's sizes and strides on entry: about 60
# inputs on the shipped default-lm (each layer's weights, the KV cache, the step's rows),
# about 45 us of a 0.8 ms one-row step (AMD EPYC Zen 5, 2 threads: the same graph with
# them off ran 1.058x as fast, 15 interleaved rounds; docs/PERFORMANCE.md). They repeat
# what is already known: a traced kind's first call passes Dynamo's guards, which check
# the same sizes and strides, and a direct call's key (`step_kind`) holds every size that
# varies; the weights' and the cache's never change while a key lives (packing or
# unpacking the model drops every key: ModelRunner.release).
STEP_OPTIONS = {"size_asserts": False}


class CompiledStep:
    """`decode_step` compiled, with its decode attention fixed; called without Dynamo's
    guards once each kind of step has been traced (app.modeling.direct_call)."""

    def __init__(self, kernel_attention: bool = False) -> None:
        self.kernel_attention = kernel_attention
        self.graph = DirectCompiled(decode_step, dynamic=None, options=STEP_OPTIONS)


def compile_decode_step(kernel_attention: bool = False) -> CompiledStep:
    return CompiledStep(kernel_attention)


def step_kind(model: Transformer, rows: DecodeRows, block_size: int, gemv: bool,
              lora: LoraStep | None) -> Hashable:
    """Everything about a step's arguments that may pick one traced graph over another:
    every size that varies between steps (the row count, the table width, the adapters'
    shapes: a size range, such as the few-rows kernel's 2-4 rows, is a guard of its own),
    the flags, which optional inputs are present, and the autograd mode. Each new kind's
    first call is a guarded one (app.modeling.direct_call), so a kind too fine costs one
    guard evaluation, where one too coarse would call the wrong graph."""
    adapters = None if lora is None else (
        lora.mask.shape, lora.mask.dtype, None if lora.slots is None else lora.slots.shape,
        tuple(t.shape for t in lora.stacked),
        len(lora.layers), tuple(t.shape for t in lora.layers[0]) if lora.layers else ())
    return (id(model), rows.tables.shape, block_size, gemv, adapters,
            torch.is_inference_mode_enabled(), torch.is_grad_enabled())


def run_decode_step(step: CompiledStep, model: Transformer, input_ids: Tensor,
                    positions: Tensor, cache: PagedKVCache, rows: DecodeRows,
                    one_row_gemv: bool, lora: LoraStep | None = None) -> Tensor:
    """Call the compiled step with its symbolic dimensions marked: the row count above
    one (one row keeps a graph of its own) and the table width. Only one row takes
    the multiply-and-reduce form (with `one_row_gemv`: see `faster_one_row_form`):
    a graph of its own for each of 2-4 rows would mean a whole-model compile each, and
    a few rows have their own kernel (app.modeling.few_rows). A kind of step already
    traced runs its graph directly (the marks only matter to tracing)."""
    n = rows.tables.shape[0]
    gemv = n == 1 and one_row_gemv
    kind = step_kind(model, rows, cache.block_size, gemv, lora)
    if not step.graph.ready(kind):
        _mark_dynamic(n, rows, input_ids, positions, lora)
    return step.graph(kind, model, input_ids, positions, cache.k, cache.v, rows.slots,
                      rows.tables, rows.lens, cache.block_size, gemv, lora,
                      kernel_attention=step.kernel_attention)


def _mark_dynamic(n: int, rows: DecodeRows, input_ids: Tensor, positions: Tensor,
                  lora: LoraStep | None) -> None:
    if n > 1:
        for t in (input_ids, positions, rows.slots, rows.tables, rows.lens):
            torch._dynamo.mark_dynamic(t, 0)
        if lora is not None and lora.mask.dim() == 3:
            torch._dynamo.mark_dynamic(lora.mask, 1)  # (1, N, 1): follows the rows
            if lora.slots is not None:
                torch._dynamo.mark_dynamic(lora.slots, 1)  # (1, N)
    if lora is not None and lora.mask.dim() == 2 and lora.mask.shape[1] > 1:
        torch._dynamo.mark_dynamic(lora.mask, 1)  # rows per slot
    torch._dynamo.mark_dynamic(rows.tables, 1)  # at least 2 (decode_rows)


def faster_one_row_form(run_one_row: Callable[[bool], object]) -> tuple[bool, float]:
    """Whether one-row steps should take the multiply-and-reduce form, timed on the
    whole compiled step both ways (`run_one_row(gemv)` runs a one-row step; each form's
    graph is traced on its first call). The per-product measurement at startup
    (compile.choose_gemv_rows) times products called one by one, and misses what fusing
    them into one graph does: on the shipped default-lm its verdict flipped between
    starts (1.05x, 1.29x) where the whole step ran at 0.65 against 1.2 ms.
    Returns the choice and the gain of the multiply-and-reduce form."""
    gain = speedup(lambda: run_one_row(False), lambda: run_one_row(True), 9)
    return gain > 1.0, gain
