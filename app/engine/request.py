"""Per-request state: what was asked (SamplingParams, RequestKind) and where each sequence
stands (Sequence). No torch here: the scheduler and block manager use these types.
"""

from __future__ import annotations

import enum
import itertools
import math
import time
from dataclasses import dataclass, field

from app.engine.errors import InvalidRequest


class RequestKind(enum.StrEnum):
    GENERATE = "generate"  # prefill, then decode token by token
    PREDICT = "predict"  # prefill only: the next-token distribution after the prompt
    CLASSIFY = "classify"  # prefill only: the classification head on the last token
    SCORE = "score"  # prefill only: log-probabilities of the prompt's own tokens


class LogprobsMode(enum.StrEnum):
    RAW = "raw"  # log-softmax of the model's logits
    PROCESSED = "processed"  # after penalties, bias, temperature and top-k/p/min-p


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    min_tokens: int = 0
    ignore_eos: bool = False
    n: int = 1
    logprobs: bool = False
    top_logprobs: int = 0
    logprobs_mode: LogprobsMode = LogprobsMode.PROCESSED
    skip_special_tokens: bool = True

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def needs_penalties(self) -> bool:
        return (self.repetition_penalty != 1.0 or self.presence_penalty != 0.0
                or self.frequency_penalty != 0.0)

    def validate(self, vocab_size: int, max_top_logprobs: int = 20) -> None:
        """Raise InvalidRequest naming the first bad field."""
        floats = {
            "temperature": self.temperature, "top_p": self.top_p, "min_p": self.min_p,
            "repetition_penalty": self.repetition_penalty,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
        }
        for name, value in floats.items():
            if not math.isfinite(value):
                raise InvalidRequest(f"{name} must be a finite number", param=name)
        checks = [
            (self.max_tokens >= 1, "max_tokens", "must be at least 1"),
            (self.temperature >= 0, "temperature", "must be >= 0"),
            (self.top_k >= 0, "top_k", "must be >= 0 (0 disables it)"),
            (0 < self.top_p <= 1, "top_p", "must be in (0, 1]"),
            (0 <= self.min_p <= 1, "min_p", "must be in [0, 1]"),
            (self.repetition_penalty > 0, "repetition_penalty", "must be > 0"),
            (-2 <= self.presence_penalty <= 2, "presence_penalty", "must be in [-2, 2]"),
            (-2 <= self.frequency_penalty <= 2, "frequency_penalty", "must be in [-2, 2]"),
            (self.min_tokens >= 0, "min_tokens", "must be >= 0"),
            (self.min_tokens <= self.max_tokens, "min_tokens", "must not exceed max_tokens"),
            (self.n >= 1, "n", "must be at least 1"),
            (0 <= self.top_logprobs <= max_top_logprobs, "top_logprobs",
             f"must be in [0, {max_top_logprobs}]"),
            (all(s for s in self.stop), "stop", "stop strings must not be empty"),
        ]
        for ok, name, message in checks:
            if not ok:
                raise InvalidRequest(f"{name} {message}", param=name)
        for token_id in self.stop_token_ids:
            if not 0 <= token_id < vocab_size:
                raise InvalidRequest(f"stop_token_ids: {token_id} is not in the vocabulary "
                                     f"(0..{vocab_size - 1})", param="stop_token_ids")
        for token_id, bias in self.logit_bias:
            if not 0 <= token_id < vocab_size:
                raise InvalidRequest(f"logit_bias: token {token_id} is not in the vocabulary",
                                     param="logit_bias")
            if not math.isfinite(bias) or abs(bias) > 100:
                raise InvalidRequest("logit_bias values must be in [-100, 100]",
                                     param="logit_bias")


class SequenceStatus(enum.Enum):
    WAITING = enum.auto()
    RUNNING = enum.auto()
    FINISHED = enum.auto()


_seq_ids = itertools.count()


@dataclass(eq=False)
class Sequence:
    """One token stream. A request with n > 1 has n sequences, forked after the prompt."""

    request_id: str
    kind: RequestKind
    token_ids: list[int]
    num_prompt_tokens: int
    params: SamplingParams
    index: int = 0  # which of the request's n completions
    priority: int = 0  # lower runs first; FCFS within a priority
    arrival: float = field(default_factory=time.monotonic)
    seq_id: int = field(default_factory=lambda: next(_seq_ids))
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
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    @property
    def sort_key(self) -> tuple[int, float, int]:
        """Scheduling order: priority, then arrival (FCFS), then fork index."""
        return (self.priority, self.arrival, self.index)
