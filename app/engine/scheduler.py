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

The runner never sees a live TokenSequence: `schedule()` returns a SchedulerOutput of
frozen snapshots (token ids, positions, block tables), so the worker thread computes from
values that nothing on the event loop can change under it.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from app.engine.block_manager import BlockManager
from app.engine.errors import QueueCapacityExceeded, QueueFull
from app.engine.multi_step import decode_steps
from app.engine.request import RequestKind, SequenceStatus, TokenSequence
from app.engine.speculative import Proposer


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 32
    max_num_batched_tokens: int = 512
    max_waiting_requests: int = 128
    max_waiting_tokens: int = 65536
    # Admission keeps this fraction of blocks free for running sequences to grow into,
    # so new arrivals do not immediately force preemptions.
    watermark: float = 0.01
    # Most distinct LoRA adapters among running sequences, hence in any one step (the
    # runner's resident slots); 0: no adapters.
    max_loras: int = 0
    # Decode steps the worker runs per schedule when every sequence in the step plainly
    # decodes (`_steps_ahead`): the event loop's round trip, schedule and update are paid
    # once for that many tokens (vLLM's former --num-scheduler-steps). 1: off.
    num_scheduler_steps: int = 4

    def __post_init__(self) -> None:
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError("max_num_batched_tokens must be >= max_num_seqs")
        if min(self.max_num_seqs, self.max_waiting_requests, self.max_waiting_tokens) < 1:
            raise ValueError("scheduler limits must be positive")


class ScheduledSeq(NamedTuple):
    """One sequence's share of a step, as plain values: all the runner reads. (A named
    tuple: immutable like a frozen dataclass, and several times cheaper to build, which
    counts at dozens per step.)"""

    seq_id: int
    request_id: str
    kind: RequestKind
    token_ids: tuple[int, ...]  # the tokens computed this step
    start: int  # position of token_ids[0]
    block_table: tuple[int, ...]
    num_prompt_tokens: int
    # After this step every token the sequence holds is computed, so its next-token
    # output (logits to sample from, a distribution, class scores) is wanted.
    completes_prefill: bool
    score_from: int | None = None  # SCORE: first prompt position whose logprob is wanted
    next_token: int | None = None  # SCORE: the token after this chunk, if any
    score_top: int = 0  # SCORE: most likely alternatives wanted at each position
    # GENERATE with speculative decoding: the guessed tokens at the end of token_ids
    # (scored in this step, kept only as far as the model agrees: app/spec_verify.py)
    draft: tuple[int, ...] = ()
    adapter: str | None = None  # the LoRA adapter this sequence runs with; None: the base
    # speculative decoding with a draft model: guesses for the sequence's next step are
    # wanted once this step's tokens are sampled (app/engine/draft_runner.py)
    guess_next: bool = False
    # multi-step decoding: the worker runs this many decode steps, each fed the token the
    # one before sampled (positions start .. start + steps - 1 have their slots)
    steps: int = 1

    @property
    def num_new_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def is_prefill(self) -> bool:
        return self.start < self.num_prompt_tokens


@dataclass(frozen=True)
class SchedulerOutput:
    scheduled: tuple[ScheduledSeq, ...] = ()
    num_preempted: int = 0

    @property
    def num_batched_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


def snapshot(seq: TokenSequence, num_new_tokens: int, draft: tuple[int, ...] = (),
             guess_next: bool = False, steps: int = 1) -> ScheduledSeq:
    start = seq.num_computed
    end = start + num_new_tokens - len(draft)
    scoring = seq.kind is RequestKind.SCORE
    return ScheduledSeq(
        seq_id=seq.seq_id, request_id=seq.request_id, kind=seq.kind,
        token_ids=(*seq.token_ids[start:end], *draft), start=start, draft=draft,
        block_table=tuple(seq.block_table), num_prompt_tokens=seq.num_prompt_tokens,
        completes_prefill=end == len(seq.token_ids),
        score_from=seq.score_from if scoring else None,
        next_token=seq.token_ids[end] if scoring and end < len(seq.token_ids) else None,
        score_top=seq.params.top_logprobs if scoring else 0, adapter=seq.adapter,
        guess_next=guess_next, steps=steps)


class _LoraGate:
    """Admission's LoRA rule: the running sequences never use more than `max_loras`
    distinct adapters (so no step does). A waiting sequence whose adapter would be one too
    many waits, keeping its place; once one waits, later sequences with adapters wait too
    (the adapters running now would otherwise keep their slots busy with newer requests
    and starve it), while sequences of the base model go on being admitted."""

    def __init__(self, max_loras: int, running: list[TokenSequence]) -> None:
        self.max_loras = max_loras
        self.active = {s.adapter for s in running if s.adapter is not None}
        self.blocked = False

    def admits(self, adapter: str | None) -> bool:
        if adapter is None:
            return True
        if self.blocked or (adapter not in self.active and
                            len(self.active) >= self.max_loras):
            self.blocked = True
            return False
        return True

    def admitted(self, adapter: str | None) -> None:
        if adapter is not None:
            self.active.add(adapter)


@dataclass
class _Queue:
    """The waiting sequences in scheduling order, with running totals for admission."""

    seqs: list[TokenSequence] = field(default_factory=list)
    tokens: int = 0
    groups: Counter[int] = field(default_factory=Counter)

    def push(self, seq: TokenSequence) -> None:
        seq.status = SequenceStatus.WAITING
        bisect.insort(self.seqs, seq, key=lambda s: s.sort_key)
        self.tokens += len(seq)
        self.groups[seq.group] += 1

    def remove(self, seq: TokenSequence) -> None:
        self.seqs.remove(seq)
        self.tokens -= len(seq)
        self.groups[seq.group] -= 1
        if not self.groups[seq.group]:
            del self.groups[seq.group]


class Scheduler:
    def __init__(self, config: SchedulerConfig, block_manager: BlockManager,
                 proposer: Proposer | None = None, max_model_len: int = 0) -> None:
        self.config = config
        self.blocks = block_manager
        self.proposer = proposer  # speculative decoding (app/engine/speculative.py)
        self.max_model_len = max_model_len
        self._queue = _Queue()
        self.running: list[TokenSequence] = []
        self.num_preemptions = 0
        self._in_flight: list[TokenSequence] = []  # the live sequences of the last schedule()

    # ------------------------------------------------------------------ queues

    @property
    def waiting(self) -> list[TokenSequence]:
        return self._queue.seqs

    @property
    def waiting_tokens(self) -> int:
        return self._queue.tokens

    @property
    def num_waiting_requests(self) -> int:
        """Waiting admission groups (the prompts of one HTTP request count once)."""
        return len(self._queue.groups)

    @property
    def num_running_seats(self) -> int:
        return sum(s.seats for s in self.running)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seqs: Sequence[TokenSequence]) -> None:
        """Queue the sequences of one request (its prompts) as one admission, or refuse
        them all: QueueCapacityExceeded (an InvalidRequest) when they could never be
        admitted, whatever the load; QueueFull when the queue is full now."""
        limits = self.config
        tokens = sum(len(s) for s in seqs)
        if tokens > limits.max_waiting_tokens:
            raise QueueCapacityExceeded(tokens, limits.max_waiting_tokens)
        if self.num_waiting_requests >= limits.max_waiting_requests:
            raise QueueFull(f"server busy: {limits.max_waiting_requests} requests are "
                            "already waiting")
        if self.waiting_tokens + tokens > limits.max_waiting_tokens:
            raise QueueFull(f"server busy: the waiting queue holds its limit of "
                            f"{limits.max_waiting_tokens} prompt tokens")
        for seq in seqs:
            seq.group = seqs[0].group
            self._queue.push(seq)

    def add_running(self, seq: TokenSequence) -> None:
        """A forked sequence: it already shares its parent's blocks, and its seat was
        counted with the parent's (pending_forks)."""
        seq.status = SequenceStatus.RUNNING
        self.running.append(seq)

    def finish(self, seq: TokenSequence) -> None:
        """Mark done and return its blocks (cached prefix blocks stay reusable)."""
        if seq.status is SequenceStatus.RUNNING and seq in self.running:
            self.running.remove(seq)
        elif seq.status is SequenceStatus.WAITING and seq in self.waiting:
            self._queue.remove(seq)
        self.blocks.free(seq)
        seq.status = SequenceStatus.FINISHED
        if self.proposer is not None:
            self.proposer.forget(seq.seq_id)

    def _preempt(self, seq: TokenSequence) -> None:
        self.running.remove(seq)
        self.blocks.free(seq)
        seq.preemptions += 1
        self.num_preemptions += 1
        self._queue.push(seq)

    def _allocate(self, seq: TokenSequence, num_new_tokens: int) -> None:
        if not self.blocks.ensure_slots(seq, num_new_tokens):
            raise RuntimeError(f"scheduler: no blocks for {num_new_tokens} tokens of sequence "
                               f"{seq.seq_id} after checking that they fit")

    # ------------------------------------------------------------------ one step

    def schedule(self) -> SchedulerOutput:
        budget = self.config.max_num_batched_tokens
        self.running.sort(key=lambda s: s.sort_key)
        picked: list[tuple[TokenSequence, int, tuple[int, ...]]] = []
        picked_ids: set[int] = set()
        preempted = 0

        def victim_for(seq: TokenSequence) -> TokenSequence:
            # The newest running sequence that has not been given work this step.
            for candidate in reversed(self.running):
                if candidate.seq_id not in picked_ids:
                    return candidate
            return seq

        decodes = [s for s in self.running if s.num_uncomputed == 1]
        prefills = [s for s in self.running if s.num_uncomputed > 1]
        drafts = self._drafts(decodes, budget)
        for seq in decodes + prefills:
            if seq.status is not SequenceStatus.RUNNING or budget <= 0:
                continue  # preempted earlier in this loop, or no budget left
            draft = drafts.get(seq.seq_id, ())
            want = min(seq.num_uncomputed, budget)
            while True:
                chunk = min(want, self.blocks.max_new_tokens_fitting(seq))
                if chunk == want or (chunk > 0 and seq.num_uncomputed > 1):
                    break
                victim = victim_for(seq)
                self._preempt(victim)
                preempted += 1
                if victim is seq:
                    break
            if seq.status is not SequenceStatus.RUNNING:
                continue
            # guesses ride along only where budget and blocks allow (never a preemption)
            room = min(budget - chunk,
                       self.blocks.max_new_tokens_fitting(seq) - chunk) if draft else 0
            draft = draft[:max(0, room)]
            self._allocate(seq, chunk + len(draft))
            picked.append((seq, chunk, draft))
            picked_ids.add(seq.seq_id)
            budget -= chunk + len(draft)

        reserve = int(self.config.watermark * self.blocks.num_blocks)
        seats = self.num_running_seats
        lora = _LoraGate(self.config.max_loras, self.running)
        skipped = 0  # waiting sequences passed over (LoRA), ahead in the queue
        while skipped < len(self.waiting) and budget > 0 and not preempted:
            seq = self.waiting[skipped]
            if seats + seq.seats > self.config.max_num_seqs and self.running:
                break
            if not lora.admits(seq.adapter):
                skipped += 1  # keeps its place in the queue; later ones may still run
                continue
            hit = self.blocks.admit(seq)
            chunk = min(seq.num_uncomputed, budget,
                        self.blocks.max_new_tokens_fitting(seq, reserve=reserve))
            if chunk <= 0:
                self.blocks.free(seq)  # give back the prefix hits; try again next step
                break
            self._allocate(seq, chunk)
            self._queue.remove(seq)
            if seq.preemptions == 0:  # a first admission, not a recompute
                seq.num_cached_hit = hit
                self.blocks.record_lookup(len(seq), hit)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            lora.admitted(seq.adapter)
            seats += seq.seats
            picked.append((seq, chunk, ()))
            budget -= chunk
        self._in_flight = [seq for seq, _, _ in picked]
        guessing = self._guess_next(picked)
        steps = 1 if preempted else self._steps_ahead(picked)
        return SchedulerOutput(tuple(snapshot(seq, chunk + len(draft), draft,
                                              seq.seq_id in guessing, steps)
                                     for seq, chunk, draft in picked), preempted)

    def _steps_ahead(self, picked: list[tuple[TokenSequence, int, tuple[int, ...]]]) -> int:
        """Multi-step decoding: how many decode steps the worker runs for this schedule
        (app/engine/multi_step.py), their slots allocated."""
        drafting = self.proposer is not None and self.proposer.config.uses_draft_model
        if (drafting or len(picked) != len(self.running)
                or (self.waiting and self.num_running_seats < self.config.max_num_seqs)):
            return 1
        steps = decode_steps(self.config.num_scheduler_steps, picked, self.max_model_len)
        if steps > 1 and sum(self.blocks.blocks_needed(seq, steps)
                             for seq, _, _ in picked) <= self.blocks.num_available:
            for seq, _, _ in picked:
                self._allocate(seq, steps)
            return steps
        return 1

    def _guess_next(self, picked: list[tuple[TokenSequence, int, tuple[int, ...]]]
                    ) -> set[int]:
        """draft_model: the sequences the draft should guess for after this step (those
        that will decode next and may speculate; none when more than max_batch will,
        as _drafts will then take no guesses)."""
        proposer = self.proposer
        if proposer is None or not proposer.config.uses_draft_model:
            return set()
        sampling = [seq for seq, chunk, draft in picked
                    if seq.kind is RequestKind.GENERATE
                    and seq.num_computed + chunk == len(seq.token_ids)]
        if len(sampling) > proposer.config.max_batch:
            return set()
        return {seq.seq_id for seq in sampling
                if seq.speculate and not seq.pending_forks
                and seq.num_output_tokens + 1 >= seq.params.min_tokens
                and proposer.wants_guesses(seq.seq_id)}

    def _drafts(self, decodes: list[TokenSequence], budget: int
                ) -> dict[int, tuple[int, ...]]:
        """Guessed next tokens per decoding sequence that may speculate (none when the
        batch is large enough that the step is compute-bound)."""
        if self.proposer is None or len(decodes) > self.proposer.config.max_batch:
            return {}
        out: dict[int, tuple[int, ...]] = {}
        for seq in decodes:
            # not before its first token: a prompt's last chunk can be one token long, and
            # a request whose n completions fork after it draws n tokens from that step
            if not seq.speculate or seq.pending_forks or seq.num_output_tokens == 0:
                continue
            # beyond the next token: what max_tokens and the context still allow
            room = min(seq.params.max_tokens - seq.num_output_tokens - 1,
                       (self.max_model_len or 1 << 30) - len(seq.token_ids) - 1)
            draft = self.proposer.propose(seq.seq_id, seq.token_ids, room)
            if draft:
                out[seq.seq_id] = tuple(draft)
        return out

    def step_done(self, out: SchedulerOutput) -> None:
        """The runner computed the scheduled tokens: advance and publish full blocks."""
        for seq, item in zip(self._in_flight, out.scheduled, strict=True):
            if seq.status is SequenceStatus.RUNNING and seq.seq_id == item.seq_id:
                # guesses' K/V count only once kept (app/engine/step_update.py)
                seq.num_computed = item.start + item.num_new_tokens - len(item.draft)
                self.blocks.commit(seq)
        self._in_flight = []
