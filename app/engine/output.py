"""What the engine streams back to a request, and the per-sequence text state that turns
token ids into safe text deltas with stop strings applied."""

from __future__ import annotations

from dataclasses import dataclass, field

from app.sampling import TokenLogprob
from app.tokenizer import IncrementalDetokenizer


@dataclass
class CompletionDelta:
    """New output of one of a request's n sequences since the last RequestOutput."""

    index: int
    token_ids: list[int]
    text: str
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None  # "stop" | "length" | "abort" once finished


@dataclass
class RequestTimes:
    arrival: float
    first_scheduled: float | None = None
    first_token: float | None = None
    last_token: float | None = None
    finished: float | None = None
    inter_token: list[float] = field(default_factory=list)


@dataclass
class RequestOutput:
    request_id: str
    prompt_tokens: int
    completions: list[CompletionDelta] = field(default_factory=list)
    finished: bool = False
    cached_tokens: int = 0
    # PREDICT: the next-token distribution, [(token_id, prob, logprob)] most likely first.
    distribution: list[tuple[int, float, float]] | None = None
    # CLASSIFY: one score per label (softmax, sigmoid or raw, per the model's problem type).
    class_scores: list[float] | None = None
    # SCORE: log P(token | prefix) of each target token of the prompt.
    score_logprobs: list[float] | None = None
    times: RequestTimes | None = None


def merge_outputs(outputs: list[RequestOutput]) -> RequestOutput:
    """Fold a request's stream of outputs into one, with whole completions."""
    if not outputs:
        raise ValueError("no outputs to merge")
    merged = RequestOutput(request_id=outputs[0].request_id,
                           prompt_tokens=outputs[0].prompt_tokens, finished=True)
    by_index: dict[int, CompletionDelta] = {}
    for out in outputs:
        merged.cached_tokens = max(merged.cached_tokens, out.cached_tokens)
        merged.times = out.times or merged.times
        for delta in out.completions:
            acc = by_index.setdefault(delta.index, CompletionDelta(delta.index, [], ""))
            acc.token_ids += delta.token_ids
            acc.text += delta.text
            if delta.logprobs is not None:
                acc.logprobs = (acc.logprobs or []) + delta.logprobs
            acc.finish_reason = delta.finish_reason or acc.finish_reason
        for name in ("distribution", "class_scores", "score_logprobs"):
            if getattr(out, name) is not None:
                setattr(merged, name, getattr(out, name))
    merged.completions = [by_index[i] for i in sorted(by_index)]
    return merged


class StopText:
    """Accumulates detokenized text and finds stop strings, even across token
    boundaries. Text that might be the start of a stop string is held back until the
    next tokens decide; the stop string itself is never emitted."""

    def __init__(self, detokenizer: IncrementalDetokenizer, stop: tuple[str, ...]) -> None:
        self.detokenizer = detokenizer
        self.stop = stop
        self.text = ""
        self.emitted = 0
        self.longest = max((len(s) for s in stop), default=0)

    def push(self, token_ids: list[int]) -> tuple[str, bool]:
        """-> (text now safe to emit, whether a stop string was found)."""
        new = self.detokenizer.push(token_ids)
        if not new:
            return "", False
        self.text += new
        if self.stop:
            search_from = max(0, len(self.text) - len(new) - self.longest + 1)
            hits = [i for i in (self.text.find(s, search_from) for s in self.stop) if i >= 0]
            if hits:
                self.text = self.text[:min(hits)]
                return self._emit(len(self.text)), True
        return self._emit(len(self.text) - self._held_back()), False

    def _held_back(self) -> int:
        """Length of the longest text suffix that is a proper prefix of a stop string."""
        for n in range(min(self.longest - 1, len(self.text)), 0, -1):
            tail = self.text[-n:]
            if any(s.startswith(tail) for s in self.stop):
                return n
        return 0

    def _emit(self, end: int) -> str:
        end = max(end, self.emitted)
        delta, self.emitted = self.text[self.emitted:end], end
        return delta

    def finish(self) -> str:
        """End of stream without a stop string: everything left, held-back text included."""
        self.text += self.detokenizer.flush()
        return self._emit(len(self.text))
