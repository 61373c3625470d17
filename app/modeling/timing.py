"""Timing for the measurements that choose kernels at startup (packing, the one-row
product, quantized kernels): the median of a few runs after one warm-up run.

Where two candidates are compared, they run in alternating rounds and the choice reads
the median of the per-round ratios: on a shared machine a burst of other work then
slows both sides of a ratio alike, where timing one candidate after the other let a
burst land on one side and flip the choice between two starts of the same server
(measured: batch-1 decode of the shipped default-lm at 1.7 or 2.5 ms a token)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def median_seconds(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):  # first-call allocation and compilation do not count
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def paired_seconds(first: Callable[[], Any], second: Callable[[], Any], repeats: int = 9,
                   warmup: int = 1) -> tuple[float, float]:
    """Median seconds of each of two functions, run back to back in alternating order
    each round, so that a burst of other work slows both alike."""
    for _ in range(warmup):
        first()
        second()
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(repeats):
        for which in ((0, 1) if i % 2 == 0 else (1, 0)):
            fn = (first, second)[which]
            start = time.perf_counter()
            fn()
            times[which].append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def speedup(baseline: Callable[[], Any], candidate: Callable[[], Any], repeats: int = 9,
            warmup: int = 1) -> float:
    """How many times faster `candidate` runs than `baseline`: the median of per-round
    ratios, the two run back to back in alternating order each round."""
    for _ in range(warmup):
        baseline()
        candidate()
    ratios = []
    for i in range(repeats):
        base, cand = 0.0, 0.0
        for which in ((0, 1) if i % 2 == 0 else (1, 0)):
            start = time.perf_counter()
            (baseline, candidate)[which]()
            elapsed = time.perf_counter() - start
            if which == 0:
                base = elapsed
            else:
                cand = elapsed
        ratios.append(base / cand)
    return statistics.median(ratios)


def round_robin_seconds(fns: dict[str, Callable[[], Any]], repeats: int = 5,
                        warmup: int = 1) -> dict[str, float]:
    """Median seconds of each of several functions, each round running every one once
    in a rotated order, so that a burst of other work lands on all of them alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(repeats):
        for name in names[i % len(names):] + names[:i % len(names)]:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}
