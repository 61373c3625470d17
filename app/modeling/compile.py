"""Compiling the dense pieces of the forward pass with torch.compile (inductor).

What is compiled: each block's `pre_attention` and `post_attention` (one graph shared by
every layer), the LM head, and single-token decode attention; and, for a step of decode
rows only, the whole step as one graph (app.modeling.decode_step). Attention over prompt
chunks stays eager (SDPA), so a step of any mix of prompt chunks and decodes runs the
same graphs (vLLM's piecewise compilation). The token dimension is symbolic: one graph
serves every token count above one, and a single token (batch-1 decode) has its own.

Why: on a CPU an eager step pays a per-op overhead on dozens of small ops per layer, and
BLAS matrix-vector products stream weights at about half the memory bandwidth. Compiled,
the elementwise ops fuse, and products with few rows are written as multiply-and-reduce
(`Transformer.dense`), which inductor turns into one vectorised pass over the weights.
Whether that pays, and up to how many rows, is measured at startup on the model's own
weights (`gemv_rows`), so the choice follows the CPU at hand.

Policy (`--compile`): `off` eager; `on` compile, and a failure is a startup error;
`auto` compile on a CPU where a C++ compiler works (probed), eager otherwise, with the
reason logged. On CUDA `auto` stays eager: there the eager kernels are already the
vendor's, and compiling has not been measured on a GPU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cache

import torch

from app.modeling.attention import DecodeFn, decode_attention
from app.modeling.config import Task
from app.modeling.decode_step import CompiledStep, compile_decode_step
from app.modeling.timing import speedup
from app.modeling.transformer import Block, ForwardOps, Transformer, dense, lm_logits

log = logging.getLogger(__name__)

COMPILE_MODES = ("auto", "on", "off")
# Candidate row counts for the multiply-and-reduce product, tried at startup.
GEMV_CANDIDATE_ROWS = (1, 2, 4)
# It must beat the BLAS call by this much to be chosen: timing noise never flips it.
GEMV_MIN_GAIN = 1.15


class CompileError(RuntimeError):
    """--compile on, and compiling is not possible here."""


@dataclass(frozen=True)
class CompiledModel:
    ops: ForwardOps
    decode: DecodeFn | None
    reason: str  # why compiled or not, for the startup log and /v1/info
    step: CompiledStep | None = None  # a whole decode step as one graph (app.modeling.decode_step)


def _configure_dynamo() -> None:
    # Only the dimensions we mark are symbolic: automatic dynamic would otherwise make a
    # second model's hidden size symbolic too (both share the compiled functions' code).
    torch._dynamo.config.automatic_dynamic_shapes = False
    # A few graphs per model (one token / several; a GEMV or a BLAS product) and per
    # served model: room for several models in one process.
    torch._dynamo.config.recompile_limit = 64
    torch._dynamo.config.accumulated_recompile_limit = 1024


@cache
def compiler_problem() -> str | None:
    """None when inductor can build and run a CPU kernel here, else the reason."""
    try:
        _configure_dynamo()
        probe = torch.compile(lambda x: (x * 2 + 1).sum(-1), dynamic=False)
        out = probe(torch.ones(2, 8))
        if not torch.equal(out, torch.full((2,), 24.0)):
            return "a compiled probe kernel gave a wrong result"
    except Exception as exc:  # no compiler, missing headers, read-only cache directory
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"
    return None


def choose_gemv_rows(model: Transformer) -> tuple[int, dict[int, float]]:
    """The largest row count up to which the compiled multiply-and-reduce beats the
    product the model would otherwise run (BLAS, or prepacked oneDNN) on this CPU,
    measured on the model's own MLP weights (every layer's, so the weights stream from
    memory as in a decode step); 0 if it never does."""
    # the product one row would otherwise run: a few-rows wrapper's own (it passes one row
    # on; timed through the wrapper, its Python call would count against BLAS here, where
    # in a compiled graph it costs nothing)
    layers = [getattr(block.mlp.up, "many", block.mlp.up) for block in model.blocks()]
    reduce = torch.compile(lambda x, w: (x.float()[:, None, :] * w.float()).sum(-1).to(x.dtype),
                           dynamic=False)
    gains: dict[int, float] = {}
    chosen = 0
    with torch.inference_mode():
        for rows in GEMV_CANDIDATE_ROWS:
            w0 = layers[0].weight
            x = torch.randn(rows, w0.shape[1], dtype=w0.dtype, device=w0.device)
            gains[rows] = speedup(lambda: [dense(x, m) for m in layers],  # noqa: B023
                                  lambda: [reduce(x, m.weight) for m in layers])  # noqa: B023
            if gains[rows] < GEMV_MIN_GAIN:
                break
            chosen = rows
    return chosen, gains


def compile_model(model: Transformer, device: torch.device, mode: str) -> CompiledModel:
    """Decide, and if so build, the compiled pieces for `model` (not yet traced: the
    runner's warm-up traces them)."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {COMPILE_MODES}, not {mode!r}")
    if mode == "off":
        return CompiledModel(model.ops, None, "off (--compile off)")
    if device.type != "cpu" and mode == "auto":
        return CompiledModel(model.ops, None,
                             f"off on {device.type} (auto compiles on CPUs only)")
    problem = compiler_problem() if device.type == "cpu" else None
    if problem is not None:
        if mode == "on":
            raise CompileError(f"--compile on, but compiling fails here: {problem}")
        return CompiledModel(model.ops, None, f"off: compiling fails here ({problem})")
    _configure_dynamo()
    # Quantized products have their own one-row kernels (app.modeling.quantized_linear).
    measure_gemv = device.type == "cpu" and model.quantization == "none"
    gemv_rows, gains = choose_gemv_rows(model) if measure_gemv else (0, {})
    if model.quantization != "none":
        gemv_rows = 1  # one-row graphs call the one-row quantized kernel directly
    ops = ForwardOps(
        pre_attention=torch.compile(Block.pre_attention, dynamic=None),
        post_attention=torch.compile(Block.post_attention, dynamic=None),
        logits=torch.compile(lm_logits, dynamic=None),
        gemv_rows=gemv_rows, compiled=True)
    # decode attention: the compiled reductions here; the runner's warm-up may measure
    # our kernel faster in its step and switch (app.engine.runner_warmup)
    decode = torch.compile(decode_attention, dynamic=None)
    step = compile_decode_step() if model.config.task is Task.CAUSAL_LM else None
    measured = ", ".join(f"{rows} row{'s' * (rows > 1)} {gain:.2f}x"
                         for rows, gain in gains.items())
    reason = (f"on: inductor; multiply-and-reduce products up to {gemv_rows} rows "
              f"(measured against the plain product: {measured or 'not measured'})"
              if measure_gemv else "on: inductor; quantized products as custom ops")
    if step is not None:
        reason += "; decode steps as one graph"
    return CompiledModel(ops, decode, reason, step)
