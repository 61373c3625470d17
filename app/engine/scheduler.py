"""Which sequences run in the next forward step, and how many tokens each brings.

Pure Python (no torch). Each `schedule()`:
  1. running sequences that decode get one token each, oldest first (decode-first, so
     streams keep flowing); when blocks run out the newest running sequence is preempted
     (its blocks freed, to be recomputed later: "preemption by recompute");
  2. running sequences still in prefill get the next chunk of their prompt;
  3. waiting sequences are admitted in (priority, arrival) order while the token budget,
     the sequence cap and the free blocks allow, reusing cached prefix blocks.
A prompt longer than the budget is prefilled over several steps (chunked prefill)
while the other sequences keep decoding.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from app.engine.block_manager import BlockManager
from app.engine.errors import QueueFull
from app.engine.request import Sequence, SequenceStatus


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 32
    max_num_batched_tokens: int = 512
    max_waiting_requests: int = 128
    max_waiting_tokens: int = 65536
    # Admission keeps this fraction of blocks free for running sequences to grow into,
    # so new arrivals do not immediately force preemptions.
    watermark: float = 0.01

    def __post_init__(self) -> None:
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError("max_num_batched_tokens must be >= max_num_seqs")
        if min(self.max_num_seqs, self.max_waiting_requests, self.max_waiting_tokens) < 1:
            raise ValueError("scheduler limits must be positive")


@dataclass
class ScheduledSeq:
    seq: Sequence
    num_new_tokens: int  # query length this step
    start: int  # position of the first new token (== seq.num_computed when scheduled)

    @property
    def completes_prefill(self) -> bool:
        """After this step the sequence has computed every token it holds."""
        return self.start + self.num_new_tokens == len(self.seq.token_ids)


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledSeq] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_batched_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


class Scheduler:
    def __init__(self, config: SchedulerConfig, block_manager: BlockManager) -> None:
        self.config = config
        self.blocks = block_manager
        self.waiting: list[Sequence] = []  # sorted by sort_key
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    # ------------------------------------------------------------------ queues

    @property
    def waiting_tokens(self) -> int:
        return sum(len(s) for s in self.waiting)

    @property
    def num_waiting_requests(self) -> int:
        return len({s.request_id for s in self.waiting})

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        """Queue a new request's sequence, or refuse with QueueFull (-> HTTP 429)."""
        if self.num_waiting_requests >= self.config.max_waiting_requests:
            raise QueueFull(f"server busy: {self.config.max_waiting_requests} requests are "
                            "already waiting")
        if self.waiting_tokens + len(seq) > self.config.max_waiting_tokens:
            raise QueueFull(f"server busy: the waiting queue holds its limit of "
                            f"{self.config.max_waiting_tokens} prompt tokens")
        self._enqueue(seq)

    def _enqueue(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        bisect.insort(self.waiting, seq, key=lambda s: s.sort_key)

    def add_running(self, seq: Sequence) -> None:
        """A forked sequence: it already shares its parent's blocks."""
        seq.status = SequenceStatus.RUNNING
        self.running.append(seq)

    def finish(self, seq: Sequence, reason: str) -> None:
        """Mark done and return its blocks (cached prefix blocks stay reusable)."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.blocks.free(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason

    def _preempt(self, seq: Sequence, out: SchedulerOutput) -> None:
        self.running.remove(seq)
        self.blocks.free(seq)
        seq.preemptions += 1
        self.num_preemptions += 1
        self._enqueue(seq)
        out.preempted.append(seq)

    # ------------------------------------------------------------------ one step

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        self.running.sort(key=lambda s: s.sort_key)
        scheduled_ids: set[int] = set()

        def victim_for(seq: Sequence) -> Sequence:
            # The newest running sequence that has not been given work this step.
            for candidate in reversed(self.running):
                if candidate.seq_id not in scheduled_ids:
                    return candidate
            return seq

        decodes = [s for s in self.running if s.num_uncomputed == 1]
        prefills = [s for s in self.running if s.num_uncomputed > 1]
        for seq in decodes + prefills:
            if seq.status is not SequenceStatus.RUNNING or budget <= 0:
                continue  # preempted earlier in this loop, or no budget left
            want = min(seq.num_uncomputed, budget)
            while True:
                chunk = min(want, self.blocks.max_new_tokens_fitting(seq))
                if chunk == want or (chunk > 0 and seq.num_uncomputed > 1):
                    break
                victim = victim_for(seq)
                self._preempt(victim, out)
                if victim is seq:
                    break
            if seq.status is not SequenceStatus.RUNNING:
                continue
            assert self.blocks.ensure_slots(seq, chunk)
            out.scheduled.append(ScheduledSeq(seq, chunk, seq.num_computed))
            scheduled_ids.add(seq.seq_id)
            budget -= chunk

        reserve = int(self.config.watermark * self.blocks.num_blocks)
        while self.waiting and budget > 0 and not out.preempted:
            seq = self.waiting[0]
            if len(self.running) + seq.params.n > self.config.max_num_seqs and self.running:
                break
            hit = self.blocks.admit(seq)
            chunk = min(seq.num_uncomputed, budget,
                        self.blocks.max_new_tokens_fitting(seq, reserve=reserve))
            if chunk <= 0:
                self.blocks.free(seq)  # give back the prefix hits; try again next step
                break
            assert self.blocks.ensure_slots(seq, chunk)
            self.waiting.pop(0)
            if seq.preemptions == 0:
                seq.num_cached_hit = hit
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            out.scheduled.append(ScheduledSeq(seq, chunk, seq.num_computed))
            budget -= chunk
        return out

    def step_done(self, out: SchedulerOutput) -> None:
        """The runner computed the scheduled tokens: advance and publish full blocks."""
        for item in out.scheduled:
            if item.seq.status is SequenceStatus.RUNNING:
                item.seq.num_computed = item.start + item.num_new_tokens
                self.blocks.commit(item.seq)

    def abort(self, request_id: str) -> list[Sequence]:
        """Remove every sequence of a request, freeing its blocks at once."""
        found = [s for s in self.waiting + self.running if s.request_id == request_id]
        for seq in found:
            self.finish(seq, "abort")
        return found
