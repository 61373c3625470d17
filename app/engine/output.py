"""What the engine hands back: outputs streamed to a request's reader (RequestOutput, with
one CompletionDelta per completion that moved), token counts (Usage), timings, and the
summary of a finished request that observers (metrics, request logs) read."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from app.sampling_params import TokenLogprob


@dataclass
class CompletionDelta:
    """New output of one of a request's n sequences since the last RequestOutput."""

    index: int
    token_ids: list[int]
    text: str
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None  # "stop" | "length" once finished
    # the stop string that ended it (finish_reason "stop"; None for EOS or a stop token):
    # what Anthropic's stop_sequence and vLLM's stop_reason report
    stop_string: str | None = None

    def extend(self, later: CompletionDelta) -> None:
        """Append a later delta of the same completion (in place: amortised O(1) per
        token, however long a reader has been away)."""
        self.token_ids.extend(later.token_ids)
        self.text += later.text
        if later.logprobs is not None:
            if self.logprobs is None:
                self.logprobs = []
            self.logprobs.extend(later.logprobs)
        self.finish_reason = later.finish_reason or self.finish_reason
        self.stop_string = later.stop_string or self.stop_string


@dataclass
class RequestTimes:
    arrival: float
    first_scheduled: float | None = None
    first_token: float | None = None
    last_token: float | None = None
    finished: float | None = None
    # the time between one step's tokens and the next's, for the first completion (as
    # vLLM counts it: a step that gives several tokens, multi-step or speculative, is one
    # gap, and its tokens reach the reader together)
    inter_token: list[float] = field(default_factory=list)
    num_tokens: int = 0  # the first completion's tokens so far

    def time_per_output_token(self) -> float | None:
        """What each token of the first completion after its first took, however steps
        grouped them: (last token - first token) / (tokens - 1); None with fewer than
        two tokens."""
        if self.first_token is None or self.last_token is None or self.num_tokens < 2:
            return None
        return (self.last_token - self.first_token) / (self.num_tokens - 1)


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
    # SCORE with top_logprobs: the most likely tokens at each of those positions.
    score_top: list[list[tuple[int, float, int]]] | None = None
    # EMBED: the sum of the prompt's final hidden states (mean pooling divides by the
    # prompt's length) and the last token's (last-token pooling).
    embedding_sum: list[float] | None = None
    embedding_last: list[float] | None = None
    times: RequestTimes | None = None

    @property
    def prompt_tokens(self) -> int:
        return self.usage.prompt_tokens

    def merge(self, later: RequestOutput) -> None:
        """Fold a later output of the same request into this one, in place: each
        completion's deltas appended, the later counts, flags and results kept. Only for
        an output nobody else holds (the collector's pending one, or merge_outputs')."""
        by_index = {d.index: d for d in self.completions}
        for delta in later.completions:
            earlier = by_index.get(delta.index)
            if earlier is None:
                by_index[delta.index] = CompletionDelta(
                    delta.index, list(delta.token_ids), delta.text,
                    None if delta.logprobs is None else list(delta.logprobs),
                    delta.finish_reason, delta.stop_string)
            else:
                earlier.extend(delta)
        self.completions = [by_index[i] for i in sorted(by_index)]
        self.usage, self.finished = later.usage, later.finished
        for name in ("distribution", "class_scores", "score_logprobs", "score_top",
                     "embedding_sum", "embedding_last"):
            if getattr(later, name) is not None:
                setattr(self, name, getattr(later, name))
        self.times = later.times or self.times


def merge_outputs(outputs: Sequence[RequestOutput]) -> RequestOutput:
    """Fold a request's stream of outputs into one, with whole completions."""
    if not outputs:
        raise ValueError("no outputs to merge")
    merged = RequestOutput(outputs[0].request_id, outputs[0].usage)
    for out in outputs:
        merged.merge(out)
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
