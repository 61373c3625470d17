"""Output processing: what each step must sample (the OutputPlan, built before the step
from the requests' state), then sampled tokens -> text deltas, stop decisions and stream
outputs (after the step).

Runs on the event loop after each step, so everything here is cheap per token: the
detokenizer decodes a short window, and stop strings are searched only in the text that
is still held back plus the new text (at most the longest stop string's length), never
in the whole generated text.

Order of stop decisions for one new token (as vLLM does):
  1. a stop token id, or EOS (unless ignore_eos): "stop", the token's text is not emitted;
  2. a stop string in the text: "stop", the text is cut before it;
  3. max_tokens reached, or the context full: "length".
Until min_tokens tokens are generated, 1 and 2 are held off: EOS and stop token ids are
masked out of sampling, and stop strings are not matched.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from app.engine.output import CompletionDelta, RequestOutput, Usage
from app.engine.request import RequestKind, RequestState, Sequence
from app.engine.runner import Draw, OutputPlan, RunnerOutput
from app.engine.scheduler import SchedulerOutput
from app.sampling import SampleRow
from app.sampling_params import TokenLogprob
from app.tokenizer import IncrementalDetokenizer, Tokenizer

if TYPE_CHECKING:
    from app.structured import Matcher


class StopText:
    """Turns a completion's detokenized text into safe deltas, finding stop strings even
    across token boundaries. Text that might be the start of a stop string is held back
    until the next tokens decide; the stop string itself is never emitted."""

    def __init__(self, detokenizer: IncrementalDetokenizer, stop: tuple[str, ...]) -> None:
        self.detokenizer = detokenizer
        self.stop = stop
        self.held = ""  # decoded but not yet emitted: a possible start of a stop string

    def push(self, token_ids: list[int], match_stop: bool = True) -> tuple[str, bool]:
        """-> (text now safe to emit, whether a stop string was found). With match_stop
        false (min_tokens not reached) stop strings are not matched."""
        new = self.detokenizer.push(token_ids)
        if not new:
            return "", False
        earlier = len(self.held)
        text = self.held + new
        if match_stop and self.stop:
            # Only occurrences that end in the new text: earlier ones were checked already.
            found = [i for i in (text.find(s, max(0, earlier - len(s) + 1))
                                 for s in self.stop) if i >= 0]
            if found:
                self.held = ""
                return text[:min(found)], True
        keep = self._held_back(text)
        self.held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep], False

    def _held_back(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of a stop
        string. Only the last len(stop) - 1 characters can be one, so the cost per token
        is bounded by the stop strings' lengths, not by the text's."""
        longest = 0
        for stop in self.stop:
            i = text.find(stop[0], max(0, len(text) - len(stop) + 1))
            while i >= 0:
                if stop.startswith(text[i:]):
                    longest = max(longest, len(text) - i)
                    break  # the first match is this stop string's longest suffix
                i = text.find(stop[0], i + 1)
        return longest

    def finish(self) -> str:
        """End of stream without a stop string: everything left, held-back text included."""
        rest, self.held = self.held + self.detokenizer.flush(), ""
        return rest


class OutputProcessor:
    def __init__(self, tokenizer: Tokenizer, eos_ids: tuple[int, ...], max_model_len: int
                 ) -> None:
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.max_model_len = max_model_len

    # ------------------------------------------------------------------ before the step

    def plan(self, out: SchedulerOutput, requests: Mapping[str, RequestState]) -> OutputPlan:
        """Snapshots of what the sampler needs for every sequence whose next token is due."""
        draws: list[Draw] = []
        distributions: dict[int, tuple[float, int]] = {}
        for item in out.scheduled:
            state = requests.get(item.request_id)
            seq = state.sequence(item.seq_id) if state is not None else None
            if state is None or seq is None or not item.completes_prefill:
                continue
            p = state.params
            if item.kind is RequestKind.PREDICT:
                distributions[item.seq_id] = (p.temperature, p.top_logprobs)
            if item.kind is not RequestKind.GENERATE:
                continue
            banned = self.held_off_ids(seq)
            prompt_ids = tuple(state.prompt_ids) if p.repetition_penalty != 1.0 else ()
            output_ids = tuple(seq.output_ids) if p.needs_penalties else ()
            # A request's first sequence draws for all n completions when its prompt is
            # done; the siblings fork from it after the step.
            indices = range(p.n) if seq.pending_forks else (seq.index,)
            for index in indices:
                row = SampleRow(p, prompt_ids, output_ids, banned,
                                None if p.greedy else self._generator(state, index))
                matcher: Matcher | None = None
                if state.constraint is not None:
                    if index not in state.matchers:
                        state.matchers[index] = state.constraint.new_matcher()
                    matcher = state.matchers[index]
                draws.append(Draw(item.request_id, item.seq_id, index, row, matcher))
        return OutputPlan(tuple(draws), distributions)

    @staticmethod
    def _generator(state: RequestState, index: int) -> torch.Generator:
        """Completion `index`'s own random stream: seeded requests give the same tokens
        whatever else shares the batch."""
        if index not in state.generators:
            seed = state.params.seed
            if seed is None:
                seed = random.getrandbits(63)
            state.generators[index] = torch.Generator().manual_seed(seed + index)
        generator: torch.Generator = state.generators[index]
        return generator

    def held_off_ids(self, seq: Sequence) -> tuple[int, ...]:
        """Token ids that may not be sampled yet: EOS and stop ids before min_tokens."""
        p = seq.params
        if seq.num_output_tokens >= p.min_tokens:
            return ()
        return (*(() if p.ignore_eos else self.eos_ids), *p.stop_token_ids)

    # ------------------------------------------------------------------ after the step

    def append(self, state: RequestState, seq: Sequence, token: int,
               logprob: TokenLogprob | None) -> CompletionDelta:
        """Add a sampled token to `seq`; the delta says what to stream and, when the
        sequence is done, why (the caller finishes it in the scheduler)."""
        p = state.params
        seq.token_ids.append(token)
        state.generated_tokens += 1
        text_state = state.texts.get(seq.index)
        if text_state is None:
            detok = IncrementalDetokenizer(self.tokenizer, state.prompt_ids,
                                           skip_special_tokens=p.skip_special_tokens)
            text_state = state.texts[seq.index] = StopText(detok, p.stop)
        reason: str | None = None
        stops_allowed = seq.num_output_tokens >= p.min_tokens
        is_stop_token = stops_allowed and (
            token in p.stop_token_ids or (not p.ignore_eos and token in self.eos_ids))
        if is_stop_token:
            text, reason = "", "stop"
        else:
            text, hit = text_state.push([token], match_stop=stops_allowed)
            if hit:
                reason = "stop"
        if reason is None and (seq.num_output_tokens >= p.max_tokens
                               or len(seq.token_ids) >= self.max_model_len):
            reason = "length"
        if reason == "length" or is_stop_token:
            text += text_state.finish()
        return CompletionDelta(index=seq.index, token_ids=[token], text=text,
                               logprobs=[logprob] if logprob is not None else None,
                               finish_reason=reason)

    @staticmethod
    def record_token_time(state: RequestState, index: int, now: float) -> None:
        t = state.times
        if t.first_token is None:
            t.first_token = now
        elif index == 0 and t.last_token is not None:
            t.inter_token.append(now - t.last_token)
        if index == 0:
            t.last_token = now

    def prefill_output(self, state: RequestState, seq: Sequence, result: RunnerOutput
                       ) -> RequestOutput:
        """The one output of a prefill-only request (PREDICT, CLASSIFY, SCORE, EMBED)."""
        output = self.output(state, finished=True)
        if seq.kind is RequestKind.CLASSIFY:
            output.class_scores = result.class_scores[seq.seq_id]
        elif seq.kind is RequestKind.PREDICT:
            output.distribution = result.distributions[seq.seq_id]
        elif seq.kind is RequestKind.EMBED:
            output.embedding_sum, output.embedding_last = state.embed_sum, state.embed_last
        else:
            start = seq.score_from or 1
            output.score_logprobs = [state.score_logprobs[p] for p in range(start, len(seq))]
            if state.score_top:
                output.score_top = [state.score_top[p] for p in range(start, len(seq))]
        return output

    @staticmethod
    def output(state: RequestState, completions: list[CompletionDelta] | None = None,
               finished: bool = False) -> RequestOutput:
        usage = Usage(len(state.prompt_ids), state.generated_tokens, state.cached_tokens)
        return RequestOutput(request_id=state.request_id, usage=usage,
                             completions=completions or [], finished=finished,
                             times=state.times)
