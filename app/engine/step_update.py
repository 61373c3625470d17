"""The step's update from its output (vLLM v1's update_from_output): after the runner
returns, sampled tokens are appended to their sequences (forking a request's siblings
first), finished sequences leave the scheduler, prefill-only requests get their one
output, and every request that moved gets its delta. Which requests ended is handed
back to the engine, which owns ending them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from app.engine.block_manager import BlockManager
from app.engine.output import CompletionDelta, RequestOutput
from app.engine.output_processor import OutputProcessor, RequestProgress
from app.engine.request import EngineRequest, RequestKind, SequenceStatus, TokenSequence
from app.engine.runner_output import RunnerOutput
from app.engine.scheduler import Scheduler, SchedulerOutput
from app.sampling_params import Sampled

if TYPE_CHECKING:
    from app.engine.sampling_plan import SamplingPlan


@dataclass(frozen=True)
class EndedRequest:
    request: EngineRequest
    reason: str
    output: RequestOutput


@dataclass
class StepUpdate:
    generated: int = 0  # tokens sampled in the step
    ended: list[EndedRequest] = field(default_factory=list)  # in the order they ended


class StepUpdater:
    def __init__(self, scheduler: Scheduler, blocks: BlockManager,
                 processor: OutputProcessor) -> None:
        self.scheduler = scheduler
        self.blocks = blocks
        self.processor = processor

    def _live(self, requests: Mapping[str, EngineRequest], request_id: str, seq_id: int
              ) -> tuple[EngineRequest, RequestProgress, TokenSequence] | None:
        """The request, its progress and its running sequence `seq_id`; None when the
        request ended or the sequence stopped while the step ran."""
        request = requests.get(request_id)
        progress = self.processor.get(request_id)
        seq = request.sequence(seq_id) if request is not None else None
        if (request is None or progress is None or seq is None
                or seq.status is not SequenceStatus.RUNNING):
            return None
        return request, progress, seq

    def apply(self, out: SchedulerOutput, plan: SamplingPlan, result: RunnerOutput,
              requests: Mapping[str, EngineRequest], now: float) -> StepUpdate:
        """Apply the step's results to `requests` (live ones only: a request may have
        ended while the step ran)."""
        update = StepUpdate(generated=len(result.sampled) + sum(
            len(extra) for extra in result.extra_tokens.values()))
        for item in out.scheduled:
            live = self._live(requests, item.request_id, item.seq_id)
            if live is None:
                continue
            request, progress, seq = live
            self.processor.started(progress, now, request.cached_tokens)
            self.processor.gather_chunk(progress, item, result)
            if item.completes_prefill and item.kind is not RequestKind.GENERATE:
                update.ended.append(EndedRequest(
                    request, "stop", self.processor.prefill_output(progress, seq, result)))
        # Resolve every draw to its sequence first: a parent's siblings fork from its
        # prompt blocks before its own token can finish it (and free them).
        targets: list[tuple[EngineRequest, RequestProgress, TokenSequence, Sampled]] = []
        for draw, sampled in zip(plan.draws, result.sampled, strict=True):
            live = self._live(requests, draw.request_id, draw.seq_id)
            if live is None:
                continue
            request, progress, parent = live
            seq = parent if draw.index == parent.index else self._fork(request, parent,
                                                                       draw.index)
            targets.append((request, progress, seq, sampled))
        moved: dict[str, tuple[EngineRequest, RequestProgress, list[CompletionDelta]]] = {}
        for request, progress, seq, sampled in targets:
            seq.token_ids.append(sampled.token_id)
            delta = self.processor.append(progress, seq, sampled.logprob)
            deltas = moved.setdefault(request.request_id, (request, progress, []))[2]
            # speculative decoding: the kept guesses and the target's own token after
            # them; multi-step decoding: the later steps' tokens. One at a time, so stop
            # strings, EOS and max_tokens end it exactly
            count = 1
            for extra in result.extra_tokens.get(seq.seq_id, ()):
                if delta.finish_reason is not None:
                    break
                seq.token_ids.append(extra.token_id)
                delta.extend(self.processor.append(progress, seq, extra.logprob))
                count += 1
            deltas.append(delta)
            self.processor.record_token_time(progress, seq.index, now, count)
            if seq.seq_id in result.drafts:
                proposed, kept = result.drafts[seq.seq_id]
                if self.scheduler.proposer is not None:
                    self.scheduler.proposer.observe(seq.seq_id, proposed, kept)
            if delta.finish_reason is None and (seq.seq_id in result.drafts
                                                or seq.seq_id in result.extra_tokens):
                # the kept guesses' K/V, or those of the tokens a multi-step step fed,
                # are valid: all but the newest token is computed
                seq.num_computed = len(seq.token_ids) - 1
                self.blocks.commit(seq)
            if delta.finish_reason is not None:
                self.scheduler.finish(seq)
            elif seq.seq_id in result.guesses and self.scheduler.proposer is not None:
                self.scheduler.proposer.offer(seq.seq_id, *result.guesses[seq.seq_id])
        for request, progress, completions in moved.values():
            output = self.processor.output(progress, completions)
            if request.is_done:
                output.finished = True
                update.ended.append(EndedRequest(request, progress.finish_reasons[-1], output))
            else:
                progress.collector.put(output)
        return update

    def _fork(self, request: EngineRequest, parent: TokenSequence, index: int
              ) -> TokenSequence:
        """A sibling completion of `parent`, sharing its prompt's computed full blocks;
        its seat was reserved by the parent's pending_forks."""
        child = TokenSequence(
            request_id=parent.request_id, kind=parent.kind,
            token_ids=list(request.prompt_ids), num_prompt_tokens=len(request.prompt_ids),
            params=parent.params, index=index, priority=parent.priority,
            arrival=parent.arrival, group=parent.group, cache_salt=parent.cache_salt,
            speculate=parent.speculate, adapter=parent.adapter,
            constrained=parent.constrained)
        self.blocks.fork(parent, child)
        parent.pending_forks -= 1
        self.scheduler.add_running(child)
        request.sequences.append(child)
        return child
