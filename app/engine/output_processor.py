"""Output processing (vLLM v1's OutputProcessor): everything output-side of a request,
keyed by request id. Sampled tokens become text deltas and stop decisions; prefill-only
results (scores, embeddings, distributions, class scores) are gathered into the one
output of their request; outputs go to each request's collector. No torch here, and no
runner: the step's results arrive as plain values (RunnerOutput).

Runs on the event loop after each step, so everything here is cheap per token: the
detokenizer decodes a short window, and StopText scans only the held-back text.

Order of stop decisions for one new token (as vLLM does):
  1. a stop token id, or EOS (unless ignore_eos): "stop", the token's text is not emitted;
  2. a stop string in the text: "stop", the text is cut before it;
  3. max_tokens reached, or the context full: "length".
Until min_tokens tokens are generated, 1 and 2 are held off: EOS and stop token ids are
masked out of sampling (app.engine.sampling_plan), and stop strings are not matched.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from app.engine.output import CompletionDelta, RequestOutput, RequestSummary, RequestTimes, Usage
from app.engine.request import RequestKind, TokenSequence
from app.engine.runner_output import RunnerOutput
from app.engine.scheduler import ScheduledSeq
from app.engine.stop_text import StopText
from app.engine.stream import OutputCollector
from app.sampling_params import SamplingParams, TokenLogprob
from app.tokenizer import IncrementalDetokenizer, Tokenizer


@dataclass
class RequestProgress:
    """What a request's reader has been sent so far, and what is still being gathered
    for it, from submit() until the request ends."""

    request_id: str
    model: str
    kind: RequestKind
    params: SamplingParams
    prompt_ids: list[int]
    times: RequestTimes
    collector: OutputCollector = field(default_factory=OutputCollector)
    stop_texts: dict[int, StopText] = field(default_factory=dict)  # by completion index
    # SCORE: position -> log P(token | prefix); keyed so a recomputed step overwrites.
    score_logprobs: dict[int, float] = field(default_factory=dict)
    score_top: dict[int, list[tuple[int, float, int]]] = field(default_factory=dict)
    # EMBED: the sum of the final hidden states so far, and the latest one.
    embed_sum: list[float] | None = None
    embed_last: list[float] | None = None
    cached_tokens: int = 0  # prompt tokens the prefix cache served at admission
    generated_tokens: int = 0
    finish_reasons: list[str] = field(default_factory=list)
    finished: bool = False

    def summary(self) -> RequestSummary:
        return RequestSummary(
            request_id=self.request_id, model=self.model, kind=self.kind.value,
            prompt_ids=self.prompt_ids, completion_tokens=self.generated_tokens,
            cached_tokens=self.cached_tokens, finish_reasons=tuple(self.finish_reasons),
            finished=self.finished, times=self.times)


class OutputProcessor:
    def __init__(self, tokenizer: Tokenizer, eos_ids: tuple[int, ...], max_model_len: int
                 ) -> None:
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.max_model_len = max_model_len
        self._progress: dict[str, RequestProgress] = {}

    def add(self, progress: RequestProgress) -> None:
        self._progress[progress.request_id] = progress

    def get(self, request_id: str) -> RequestProgress | None:
        return self._progress.get(request_id)

    # ------------------------------------------------------------------ after each step

    def started(self, progress: RequestProgress, now: float, cached_tokens: int) -> None:
        """The request's first step has run (its prefix-cache hits are known by now)."""
        if progress.times.first_scheduled is None:
            progress.times.first_scheduled = now
            progress.cached_tokens = cached_tokens

    @staticmethod
    def gather_chunk(progress: RequestProgress, item: ScheduledSeq, result: RunnerOutput
                     ) -> None:
        """Keep a SCORE or EMBED request's share of one prompt chunk's results."""
        if item.kind is RequestKind.SCORE:
            progress.score_logprobs.update(result.score_logprobs.get(item.seq_id, {}))
            progress.score_top.update(result.score_top.get(item.seq_id, {}))
        elif item.kind is RequestKind.EMBED and item.seq_id in result.embeddings:
            chunk_sum, last = result.embeddings[item.seq_id]
            # A chunk at position 0 starts the sequence (again, after a preemption).
            if item.start == 0 or progress.embed_sum is None:
                progress.embed_sum = chunk_sum
            else:
                progress.embed_sum = [a + b for a, b in zip(progress.embed_sum, chunk_sum,
                                                            strict=True)]
            progress.embed_last = last

    def append(self, progress: RequestProgress, seq: TokenSequence,
               logprob: TokenLogprob | None) -> CompletionDelta:
        """The delta for `seq`'s newest token (already appended to it): what to stream
        and, when the sequence is done, why (the caller finishes it in the scheduler)."""
        p = progress.params
        token = seq.token_ids[-1]
        progress.generated_tokens += 1
        stop_text = progress.stop_texts.get(seq.index)
        if stop_text is None:
            detok = IncrementalDetokenizer(self.tokenizer, progress.prompt_ids,
                                           skip_special_tokens=p.skip_special_tokens)
            stop_text = progress.stop_texts[seq.index] = StopText(
                detok, p.stop, p.include_stop_str_in_output)
        reason: str | None = None
        stops_allowed = seq.num_output_tokens >= p.min_tokens
        is_stop_token = stops_allowed and (
            token in p.stop_token_ids or (not p.ignore_eos and token in self.eos_ids))
        if is_stop_token:
            text, reason = "", "stop"
        else:
            text, hit = stop_text.push([token], match_stop=stops_allowed)
            if hit:
                reason = "stop"
        if reason is None and (seq.num_output_tokens >= p.max_tokens
                               or len(seq.token_ids) >= self.max_model_len):
            reason = "length"
        if reason == "length" or is_stop_token:
            text += stop_text.finish()
        if reason is not None:
            progress.finish_reasons.append(reason)
        return CompletionDelta(index=seq.index, token_ids=[token], text=text,
                               logprobs=[logprob] if logprob is not None else None,
                               finish_reason=reason,
                               stop_string=stop_text.matched if reason == "stop" else None)

    @staticmethod
    def record_token_time(progress: RequestProgress, index: int, now: float,
                          count: int = 1) -> None:
        """Completion `index` got `count` tokens from the step that ended at `now`."""
        t = progress.times
        if t.first_token is None:
            t.first_token = now
        elif index == 0 and t.last_token is not None:
            t.inter_token.append(now - t.last_token)
        if index == 0:
            t.last_token = now
            t.num_tokens += count

    def prefill_output(self, progress: RequestProgress, seq: TokenSequence,
                       result: RunnerOutput) -> RequestOutput:
        """The one output of a prefill-only request (PREDICT, CLASSIFY, SCORE, EMBED)."""
        output = self.output(progress, finished=True)
        if seq.kind is RequestKind.CLASSIFY:
            output.class_scores = result.class_scores[seq.seq_id]
        elif seq.kind is RequestKind.PREDICT:
            output.distribution = result.distributions[seq.seq_id]
        elif seq.kind is RequestKind.EMBED:
            output.embedding_sum, output.embedding_last = progress.embed_sum, progress.embed_last
        else:
            start = seq.score_from or 1
            output.score_logprobs = [progress.score_logprobs[p] for p in range(start, len(seq))]
            if progress.score_top:
                output.score_top = [progress.score_top[p] for p in range(start, len(seq))]
        return output

    @staticmethod
    def output(progress: RequestProgress, completions: list[CompletionDelta] | None = None,
               finished: bool = False) -> RequestOutput:
        usage = Usage(len(progress.prompt_ids), progress.generated_tokens,
                      progress.cached_tokens)
        return RequestOutput(request_id=progress.request_id, usage=usage,
                             completions=completions or [], finished=finished,
                             times=progress.times)

    # ------------------------------------------------------------------ the end

    def finish(self, request_id: str, reason: str, cached_tokens: int, *,
               output: RequestOutput | None = None, error: BaseException | None = None
               ) -> RequestSummary | None:
        """Hand the reader its last output (or the error) and forget the request; None
        when it had already ended."""
        progress = self._progress.pop(request_id, None)
        if progress is None:
            return None
        progress.finished = True
        progress.cached_tokens = cached_tokens
        if error is not None or not progress.finish_reasons:
            progress.finish_reasons.append(reason)
        progress.times.finished = time.monotonic()
        if error is not None:
            progress.collector.fail(error)
        else:
            progress.collector.put(output or self.output(progress, finished=True))
        return progress.summary()
