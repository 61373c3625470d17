"""The scheduler's view of a request: what kind of work it is (RequestKind), where each of
its token sequences stands (TokenSequence, shared with the scheduler and block manager,
so no torch in its fields), and the request as the engine schedules it (EngineRequest).

Nothing output-side lives here: text, stop strings, random generators, grammar matchers,
score and embedding accumulators and the reader's collector belong to the output
processor and the sampling planner, keyed by request id.
"""

from __future__ import annotations

import enum
import itertools
import time
from dataclasses import dataclass, field

from app.sampling_params import SamplingParams


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
class TokenSequence:
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
    # Speculative decoding may guess this sequence's next tokens (app/engine/core.py).
    speculate: bool = False
    # The LoRA adapter (its name) this sequence runs with; None: the base model.
    adapter: str | None = None
    # A grammar masks its tokens (app.structured): each draw waits for the one before.
    constrained: bool = False

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
class EngineRequest:
    """A request as the engine schedules it, from submit() until it ends: its prompt,
    parameters and token sequences (one, then n after the prompt forks)."""

    request_id: str
    kind: RequestKind
    params: SamplingParams
    prompt_ids: list[int]
    sequences: list[TokenSequence] = field(default_factory=list)
    adapter: str | None = None  # the LoRA adapter every sequence runs with (None: base)

    @property
    def cached_tokens(self) -> int:
        return self.sequences[0].num_cached_hit if self.sequences else 0

    @property
    def is_done(self) -> bool:
        """Every one of the request's n completions exists and has finished."""
        return len(self.sequences) == self.params.n and all(
            s.is_finished for s in self.sequences)

    def sequence(self, seq_id: int) -> TokenSequence | None:
        return next((s for s in self.sequences if s.seq_id == seq_id), None)


def new_request(request_id: str, kind: RequestKind, params: SamplingParams,
                prompt_ids: list[int], tokens: list[int], *, priority: int, arrival: float,
                cache_salt: str | None, score_from: int | None,
                adapter: str | None = None) -> EngineRequest:
    """A request and its first sequence. `tokens` are what the model reads (a CLASSIFY
    prompt is padded its own way), `prompt_ids` what the caller sent. `adapter`: the LoRA
    adapter it runs with (its cache salt already namespaced by it: Engine.submit_batch)."""
    seq = TokenSequence(
        request_id=request_id, kind=kind, token_ids=tokens, num_prompt_tokens=len(tokens),
        params=params, priority=priority, arrival=arrival, cache_salt=cache_salt,
        adapter=adapter,
        pending_forks=params.n - 1 if kind is RequestKind.GENERATE else 0,
        # EMBED pools every position: none may come from the prefix cache.
        score_from=1 if kind is RequestKind.EMBED else score_from)
    return EngineRequest(request_id, kind, params, prompt_ids, [seq], adapter)
