"""The compute thread: the one thread that runs torch work (loading, compiling, every
engine's steps).

Why one: OpenMP keeps a thread team per calling thread, and on a CPU a second thread's
team competes with the first for the same cores. Measured on a 2-vCPU AMD EPYC
(134M-parameter model, bf16, batch-1 decode step): 12 ms when one thread does all the
work, 20-37 ms once another thread has run a parallel op (loading the weights, say).
Steps of several models would not run faster side by side on the same cores anyway, so
the models of one process share this thread and take turns.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor


def compute_thread(name: str = "compute") -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
