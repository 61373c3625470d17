"""What the engine hands back: outputs streamed to a request's reader (RequestOutput, with
one CompletionDelta per completion that moved), token counts (Usage), timings, and the
summary of a finished request that observers (metrics, request logs) read."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from app.sampling_params import TokenLogprob


@dataclass
class CompletionDelta:
    """New output of one of a request's n sequences since the last RequestOutput."""

    index: int
    token_ids: list[int]
    text: str
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None  # "stop" | "length" once finished

    def extended(self, later: CompletionDelta) -> CompletionDelta:
        """This delta followed by a later one of the same completion."""
        logprobs = self.logprobs
        if later.logprobs is not None:
            logprobs = (logprobs or []) + later.logprobs
        return CompletionDelta(self.index, self.token_ids + later.token_ids,
                               self.text + later.text, logprobs,
                               later.finish_reason or self.finish_reason)


@dataclass
class RequestTimes:
    arrival: float
    first_scheduled: float | None = None
    first_token: float | None = None
    last_token: float | None = None
    finished: float | None = None
    inter_token: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Usage:
    """Token counts of a request so far (final once the request has finished)."""

    prompt_tokens: int
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens served from the prefix cache

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.prompt_tokens + other.prompt_tokens,
                     self.completion_tokens + other.completion_tokens,
                     self.cached_tokens + other.cached_tokens)


@dataclass
class RequestOutput:
    request_id: str
    usage: Usage
    completions: list[CompletionDelta] = field(default_factory=list)
    finished: bool = False
    # PREDICT: the next-token distribution, [(token_id, prob, logprob)] most likely first.
    distribution: list[tuple[int, float, float]] | None = None
    # CLASSIFY: one score per label (softmax, sigmoid or raw, per the model's problem type).
    class_scores: list[float] | None = None
    # SCORE: log P(token | prefix) of each target token of the prompt.
    score_logprobs: list[float] | None = None
    times: RequestTimes | None = None

    @property
    def prompt_tokens(self) -> int:
        return self.usage.prompt_tokens

    def merged_with(self, later: RequestOutput) -> RequestOutput:
        """This output followed by a later one: each completion's deltas concatenated,
        the later counts, flags and results kept."""
        by_index = {d.index: d for d in self.completions}
        for delta in later.completions:
            earlier = by_index.get(delta.index)
            by_index[delta.index] = delta if earlier is None else earlier.extended(delta)
        return replace(
            later, completions=[by_index[i] for i in sorted(by_index)],
            distribution=later.distribution if later.distribution is not None
            else self.distribution,
            class_scores=later.class_scores if later.class_scores is not None
            else self.class_scores,
            score_logprobs=later.score_logprobs if later.score_logprobs is not None
            else self.score_logprobs,
            times=later.times or self.times)


def merge_outputs(outputs: Sequence[RequestOutput]) -> RequestOutput:
    """Fold a request's stream of outputs into one, with whole completions."""
    if not outputs:
        raise ValueError("no outputs to merge")
    merged = outputs[0]
    for out in outputs[1:]:
        merged = merged.merged_with(out)
    return merged


@dataclass(frozen=True)
class RequestSummary:
    """A request as observers see it: counts, reasons and timings (read-only)."""

    request_id: str
    model: str
    kind: str
    prompt_ids: Sequence[int]
    completion_tokens: int
    cached_tokens: int
    finish_reasons: tuple[str, ...]
    finished: bool
    times: RequestTimes

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def finish_reason(self) -> str | None:
        return self.finish_reasons[-1] if self.finish_reasons else None

    @property
    def usage(self) -> Usage:
        return Usage(self.prompt_tokens, self.completion_tokens, self.cached_tokens)
