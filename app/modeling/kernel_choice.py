"""Choosing each quantized product's kernel, at startup, by measurement on the model's
own weights.

Products are grouped by shape (format, in and out features, group size; the dtype is
the model's): every layer of a group runs the same kernels, and only kernels that
support the group's shape and dtype are timed (`app.modeling.quant_kernels.candidates`).
Each group is timed with 1 and 16 rows on up to PROBE_LAYERS of its layers (different
weights, so they stream from memory as in a decode step), which keeps the startup cost
to a few products per distinct shape. The choice is stored on the layers themselves
(`QuantizedLinear.kernels`): nothing process-wide, so two models in one process choose
independently.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from app.modeling.quant_kernels import Shape, candidates
from app.modeling.quantized_linear import KernelPlan, QuantizedLinear
from app.modeling.timing import round_robin_seconds

log = logging.getLogger(__name__)

PROBE_LAYERS = 4
ROW_CLASSES = (("one", 1), ("few", 16))


def shape_groups(layers: Iterable[QuantizedLinear], dtype: torch.dtype
                 ) -> dict[Shape, list[QuantizedLinear]]:
    """Distinct layers by shape, in model order (a tied table counts once)."""
    groups: dict[Shape, list[QuantizedLinear]] = {}
    seen: set[int] = set()
    for layer in layers:
        if id(layer) not in seen:
            seen.add(id(layer))
            groups.setdefault(layer.shape(dtype), []).append(layer)
    return groups


def _runner(name: str, probes: list[QuantizedLinear], x: Tensor) -> Callable[[], object]:
    def run() -> object:
        for layer in probes:
            layer.use_kernels(KernelPlan(name, name), x.dtype)
        return [layer(x) for layer in probes]
    return run


def _timings(shape: Shape, names: list[str], probes: list[QuantizedLinear], x: Tensor
             ) -> dict[str, float]:
    """Seconds of each candidate that accepts `x` on the probe layers."""
    runs: dict[str, Callable[[], object]] = {}
    with torch.inference_mode():
        for name in names:
            run = _runner(name, probes, x)
            try:
                run()  # a first call that may refuse, and may allocate
            except RuntimeError as exc:  # a stock kernel refusing what we thought it took
                log.warning("%s kernel %s refused %s: %s", shape.method, name, shape,
                            str(exc)[:200])
                continue
            runs[name] = run
        # every candidate once a round, in turn: a burst of other work on a shared
        # machine then slows them all alike instead of deciding the choice
        return round_robin_seconds(runs, warmup=0)


def choose_for_shape(shape: Shape, layers: list[QuantizedLinear]) -> tuple[KernelPlan, str]:
    """Time the candidates for `shape` and set the fastest on every layer; returns the plan
    and a line for the startup log and /v1/info."""
    probes = layers[:PROBE_LAYERS]
    names = candidates(shape)
    chosen: dict[str, str] = {}
    parts = []
    for cls, rows in ROW_CLASSES:
        x = torch.randn(rows, shape.in_features, dtype=shape.dtype)
        timings = _timings(shape, names, probes, x)
        best = min(timings, key=timings.__getitem__)
        chosen[cls] = best
        base = timings["dequant"]
        parts.append(f"{rows} row{'s' * (rows > 1)} {best} ("
                     + ", ".join(f"{n} {base / t:.2f}x" for n, t in timings.items()) + ")")
    plan = KernelPlan(chosen["one"], chosen["few"])
    for layer in layers:
        layer.use_kernels(plan, shape.dtype)
    group = f"/{shape.group_size}" if shape.group_size else ""
    return plan, (f"{shape.method}{group} {shape.in_features}->{shape.out_features}: "
                  + ", ".join(parts))


def choose_kernels(layers: Iterable[QuantizedLinear], dtype: torch.dtype) -> str:
    """Choose every layer's kernels for activations of `dtype`; the report."""
    return "; ".join(choose_for_shape(shape, group)[1]
                     for shape, group in shape_groups(layers, dtype).items())
