"""Per-request state: what kind of work a request is (RequestKind), where each of its
sequences stands (Sequence, shared with the scheduler and block manager, so no torch in
their fields), and what the engine keeps about the whole request (RequestState).
"""

from __future__ import annotations

import enum
import itertools
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from app.engine.output import RequestSummary, RequestTimes
from app.sampling_params import SamplingParams

if TYPE_CHECKING:
    from app.engine.output_processor import StopText
    from app.engine.stream import OutputCollector
    from app.structured import Constraint, Matcher


class RequestKind(enum.StrEnum):
    GENERATE = "generate"  # prefill, then decode token by token
    PREDICT = "predict"  # prefill only: the next-token distribution after the prompt
    CLASSIFY = "classify"  # prefill only: the classification head on the last token
    SCORE = "score"  # prefill only: log-probabilities of the prompt's own tokens
    EMBED = "embed"  # prefill only: the final hidden states, summed, and the last one


class SequenceStatus(enum.Enum):
    WAITING = enum.auto()
    RUNNING = enum.auto()
    FINISHED = enum.auto()


_seq_ids = itertools.count()
_groups = itertools.count()


def new_group() -> int:
    """A fresh admission-group id."""
    return next(_groups)


@dataclass(eq=False)
class Sequence:
    """One token stream. A request with n > 1 has n sequences, forked after the prompt.

    Owned by the event loop: the scheduler and the engine change it between steps; the
    worker thread only ever sees the snapshots in a SchedulerOutput."""

    request_id: str
    kind: RequestKind
    token_ids: list[int]
    num_prompt_tokens: int
    params: SamplingParams
    index: int = 0  # which of the request's n completions
    priority: int = 0  # lower runs first; FCFS within a priority
    arrival: float = field(default_factory=time.monotonic)
    seq_id: int = field(default_factory=lambda: next(_seq_ids))
    # Requests submitted together (the prompts of one HTTP request) share a group: the
    # waiting queue counts a group as one request.
    group: int = field(default_factory=new_group)
    # Siblings this sequence will fork into when its prompt is done (n - 1 for a request's
    # first sequence until then; 0 after, and for every child). The sequence cap counts
    # them from admission on, so forking never pushes a step past max_num_seqs.
    pending_forks: int = 0
    # Prefix-cache namespace: only sequences with the same salt share cached blocks.
    cache_salt: str | None = None
    status: SequenceStatus = SequenceStatus.WAITING
    num_computed: int = 0  # tokens whose K/V are in the cache
    num_cached_hit: int = 0  # prompt tokens served by the prefix cache at admission
    block_table: list[int] = field(default_factory=list)
    # Prompt positions from which SCORE requests want the next token's log-probability.
    score_from: int | None = None
    preemptions: int = 0
    finish_reason: str | None = None

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def num_uncomputed(self) -> int:
        return len(self.token_ids) - self.num_computed

    @property
    def seats(self) -> int:
        """Places in the running batch this sequence takes, counting its future forks."""
        return 1 + self.pending_forks

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    @property
    def sort_key(self) -> tuple[int, float, int]:
        """Scheduling order: priority, then arrival (FCFS), then fork index."""
        return (self.priority, self.arrival, self.index)


@dataclass
class RequestState:
    """What the engine keeps about one request from submit() until it ends."""

    request_id: str
    model: str
    kind: RequestKind
    params: SamplingParams
    prompt_ids: list[int]
    collector: OutputCollector
    times: RequestTimes
    sequences: list[Sequence] = field(default_factory=list)
    texts: dict[int, StopText] = field(default_factory=dict)  # completion index -> text
    generators: dict[int, Any] = field(default_factory=dict)  # index -> torch.Generator
    # SCORE: position -> log P(token | prefix); keyed so a recomputed step overwrites.
    score_logprobs: dict[int, float] = field(default_factory=dict)
    score_top: dict[int, list[tuple[int, float, int]]] = field(default_factory=dict)
    # Structured output (app.structured.Constraint) and each completion's matcher.
    constraint: Constraint | None = None
    matchers: dict[int, Matcher] = field(default_factory=dict)
    # EMBED: the sum of the final hidden states so far, and the latest one.
    embed_sum: list[float] | None = None
    embed_last: list[float] | None = None
    finished: bool = False
    generated_tokens: int = 0
    finish_reasons: list[str] = field(default_factory=list)

    @property
    def cached_tokens(self) -> int:
        return self.sequences[0].num_cached_hit if self.sequences else 0

    def sequence(self, seq_id: int) -> Sequence | None:
        return next((s for s in self.sequences if s.seq_id == seq_id), None)

    def summary(self) -> RequestSummary:
        return RequestSummary(
            request_id=self.request_id, model=self.model, kind=self.kind.value,
            prompt_ids=self.prompt_ids, completion_tokens=self.generated_tokens,
            cached_tokens=self.cached_tokens, finish_reasons=tuple(self.finish_reasons),
            finished=self.finished, times=self.times)
