"""Scheduler: budgets, chunked prefill, decode-first, preemption, queue limits. No torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from app.engine.block_manager import BlockManager
from app.engine.errors import InvalidRequest, QueueCapacityExceeded, QueueFull
from app.engine.request import RequestKind, SequenceStatus, TokenSequence
from app.engine.scheduler import ScheduledSeq, Scheduler, SchedulerConfig
from app.sampling_params import SamplingParams


def make(num_blocks: int = 64, block_size: int = 4, **cfg: int) -> Scheduler:
    return Scheduler(SchedulerConfig(**cfg), BlockManager(num_blocks, block_size))


def seq(n: int, request_id: str, priority: int = 0, arrival: float = 0.0,
        forks: int = 0) -> TokenSequence:
    # Distinct tokens per request, so prefix caching does not change the arithmetic.
    base = 1000 * sum(map(ord, request_id))
    return TokenSequence(request_id=request_id, kind=RequestKind.GENERATE,
                    token_ids=list(range(base, base + n)),
                    num_prompt_tokens=n, params=SamplingParams(n=forks + 1),
                    priority=priority, arrival=arrival, pending_forks=forks)


def live(s: Scheduler, item: ScheduledSeq) -> TokenSequence:
    return next(x for x in s.running + s.waiting if x.seq_id == item.seq_id)


def run_step(s: Scheduler) -> dict[str, int]:
    """Schedule, pretend the model ran, append one token to finished prefills."""
    out = s.schedule()
    s.step_done(out)
    for item in out.scheduled:
        if item.completes_prefill:
            live(s, item).token_ids.append(7)
    s.blocks.check_invariants()
    return {i.request_id: i.num_new_tokens for i in out.scheduled}


def test_engine_core_imports_no_torch() -> None:
    code = ("import sys, app.engine.scheduler, app.engine.block_manager;"
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_chunked_prefill_runs_beside_decodes() -> None:
    s = make(max_num_batched_tokens=16, max_num_seqs=4)
    s.add([seq(5, "short", arrival=0)])
    assert run_step(s) == {"short": 5}
    s.add([seq(40, "long", arrival=1)])
    # The decode goes first, the long prompt takes the rest of the budget, for 3 steps.
    assert run_step(s) == {"short": 1, "long": 15}
    assert run_step(s) == {"short": 1, "long": 15}
    assert run_step(s) == {"short": 1, "long": 10}
    assert run_step(s) == {"short": 1, "long": 1}


def test_sequence_cap_and_fcfs_with_priority() -> None:
    s = make(max_num_batched_tokens=64, max_num_seqs=2)
    s.add([seq(3, "a", arrival=0)])
    s.add([seq(3, "b", arrival=1)])
    s.add([seq(3, "urgent", priority=-1, arrival=2)])
    assert run_step(s) == {"urgent": 3, "a": 3}
    assert [x.request_id for x in s.waiting] == ["b"]


def test_queue_limits_raise_queue_full() -> None:
    s = make(max_waiting_requests=2, max_waiting_tokens=100)
    s.add([seq(10, "a")])
    s.add([seq(10, "b")])
    with pytest.raises(QueueFull, match="2 requests are already waiting"):
        s.add([seq(10, "c")])
    t = make(max_waiting_requests=10, max_waiting_tokens=25)
    t.add([seq(20, "a")])
    with pytest.raises(QueueFull, match="25 prompt tokens"):
        t.add([seq(10, "b")])
    assert len(t.waiting) == 1


def test_preemption_newest_first_when_blocks_run_out() -> None:
    # 6 blocks of 2 tokens: two 4-token prompts use 4 blocks; decoding exhausts the rest.
    s = make(num_blocks=6, block_size=2, max_num_batched_tokens=32, max_num_seqs=4,
             watermark=0)
    s.add([seq(4, "old", arrival=0)])
    s.add([seq(4, "new", arrival=1)])
    run_step(s)
    preempted = 0
    for _ in range(6):
        out = s.schedule()
        preempted += out.num_preempted
        s.step_done(out)
        for item in out.scheduled:
            if item.completes_prefill:
                live(s, item).token_ids.append(7)
        s.blocks.check_invariants()
    assert preempted and {x.request_id for x in s.running + s.waiting if x.preemptions} == {
        "new"}
    old = next(x for x in s.running if x.request_id == "old")
    assert old.status is SequenceStatus.RUNNING and old.preemptions == 0
    new = next(x for x in s.waiting if x.request_id == "new")
    assert new.num_computed == 0 and new.block_table == [] and new.preemptions >= 1
    # The preempted one comes back once the old one finishes, keeping its tokens.
    s.finish(old)
    assert "new" in run_step(s)


def test_abort_frees_everything() -> None:
    s = make()
    s.add([seq(9, "a")])
    s.add([seq(9, "b")])
    run_step(s)
    assert s.blocks.num_used > 0
    for x in s.running + s.waiting:
        s.finish(x)
    s.blocks.check_invariants()
    assert s.blocks.num_used == 0 and not s.has_work()


def test_snapshots_do_not_change_with_the_live_sequence() -> None:
    s = make(max_num_batched_tokens=16, max_num_seqs=4)
    s.add([seq(6, "a")])
    out = s.schedule()
    item = out.scheduled[0]
    assert item.token_ids == tuple(live(s, item).token_ids) and item.start == 0
    table = item.block_table
    live(s, item).token_ids.append(99)
    live(s, item).block_table.append(63)
    assert item.block_table == table and len(item.token_ids) == 6


def test_a_group_of_prompts_is_one_admission() -> None:
    s = make(max_waiting_requests=1, max_waiting_tokens=100)
    s.add([seq(10, "a"), seq(10, "b"), seq(10, "c")])  # one request of three prompts
    assert s.num_waiting_requests == 1 and len(s.waiting) == 3
    with pytest.raises(QueueFull):
        s.add([seq(10, "d")])


def test_requests_that_can_never_be_queued_are_invalid_not_busy() -> None:
    s = make(max_waiting_tokens=25)
    with pytest.raises(InvalidRequest, match="max_waiting_tokens") as caught:
        s.add([seq(30, "long")])  # idle server: never 429 for what can never fit
    # An engine error names no API field: the API maps this one to its prompt field.
    assert isinstance(caught.value, QueueCapacityExceeded) and caught.value.param is None
    assert (caught.value.tokens, caught.value.capacity) == (30, 25)
    with pytest.raises(InvalidRequest, match="max_waiting_tokens"):
        s.add([seq(10, "a"), seq(10, "b"), seq(10, "c")])
    assert not s.waiting


def test_pending_forks_hold_seats_from_admission() -> None:
    # max_num_seqs=4: a request with n=4 takes every seat before it forks.
    s = make(max_num_batched_tokens=64, max_num_seqs=4)
    s.add([seq(5, "n4", forks=3, arrival=0)])
    s.add([seq(5, "other", arrival=1)])
    assert run_step(s) == {"n4": 5}
    assert s.num_running_seats == 4 and [x.request_id for x in s.waiting] == ["other"]


def test_a_preempted_child_needs_one_seat_not_n() -> None:
    s = make(max_num_batched_tokens=64, max_num_seqs=4)
    child = seq(5, "child")  # a forked sibling: pending_forks == 0
    s.add([child])
    s.add([seq(5, "x", arrival=1), seq(5, "y", arrival=1), seq(5, "z", arrival=1)])
    run_step(s)
    assert s.num_running_seats == 4
    s._preempt(child)
    run_step(s)
    # Three seats are taken; the child needs one, so it comes back at once.
    assert child.status is SequenceStatus.RUNNING and s.num_running_seats == 4


def test_prefix_lookups_are_counted_once_per_admission() -> None:
    s = make(num_blocks=3, block_size=4, max_num_batched_tokens=64, watermark=0)
    s.add([seq(8, "a")])
    run_step(s)
    s.add([seq(12, "b", arrival=1)])  # no free block until "a" finishes: retried each step
    for _ in range(3):
        run_step(s)
    assert s.blocks.prefix_queries == 8
    s.finish(next(x for x in s.running if x.request_id == "a"))
    run_step(s)
    assert s.blocks.prefix_queries == 8 + 12
