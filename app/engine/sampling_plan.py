"""What the worker must sample in a step (the SamplingPlan), and the per-request sampling
objects it draws with: each completion's random generator and grammar matcher, keyed by
request id. Runner side: these are torch and worker objects, built on the event loop
before the step and read by the runner, so neither the scheduler's request nor the
output processor holds one.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from app.engine.request import EngineRequest, RequestKind, TokenSequence
from app.engine.scheduler import SchedulerOutput
from app.sampling import SampleRow

if TYPE_CHECKING:
    from app.structured import Constraint, Matcher


@dataclass(frozen=True)
class Draw:
    """One token to sample for a request's completion `index` from the logits of
    sequence `seq_id` (the n completions of a forking request draw from one row)."""

    request_id: str
    seq_id: int
    index: int
    row: SampleRow
    # app.structured: the completion's matcher (the worker masks with it and feeds it the
    # sampled token; only the worker touches it while a step runs).
    matcher: Matcher | None = None
    draft: tuple[int, ...] = ()  # speculative decoding: the guesses scored in this step


@dataclass(frozen=True)
class SamplingPlan:
    """What the worker computes from this step's logits besides the forward: the draws
    of generating sequences and the distributions of PREDICT ones. Built on the event
    loop from the requests, so the worker reads no live object."""

    draws: tuple[Draw, ...] = ()
    # PREDICT: seq_id -> (temperature, how many of the most likely tokens).
    distributions: dict[int, tuple[float, int]] = field(default_factory=dict)


@dataclass
class _Samplers:
    """One request's sampling objects, made at its first draw of each completion."""

    seed: int | None
    constraint: Constraint | None
    generators: dict[int, torch.Generator] = field(default_factory=dict)  # by index
    matchers: dict[int, Matcher] = field(default_factory=dict)  # by index


class SamplingPlanner:
    def __init__(self, eos_ids: tuple[int, ...]) -> None:
        self.eos_ids = eos_ids
        self._samplers: dict[str, _Samplers] = {}

    def add(self, request_id: str, seed: int | None, constraint: Constraint | None = None) -> None:
        self._samplers[request_id] = _Samplers(seed, constraint)

    def remove(self, request_id: str) -> None:
        self._samplers.pop(request_id, None)

    def plan(self, out: SchedulerOutput, requests: Mapping[str, EngineRequest]
             ) -> SamplingPlan:
        """Snapshots of what the sampler needs for every sequence whose next token is due."""
        draws: list[Draw] = []
        distributions: dict[int, tuple[float, int]] = {}
        for item in out.scheduled:
            request = requests.get(item.request_id)
            seq = request.sequence(item.seq_id) if request is not None else None
            samplers = self._samplers.get(item.request_id)
            if request is None or seq is None or samplers is None or not item.completes_prefill:
                continue
            p = request.params
            if item.kind is RequestKind.PREDICT:
                distributions[item.seq_id] = (p.temperature, p.top_logprobs)
            if item.kind is not RequestKind.GENERATE:
                continue
            banned = self.held_off_ids(seq)
            prompt_ids = tuple(request.prompt_ids) if p.repetition_penalty != 1.0 else ()
            output_ids = tuple(seq.output_ids) if p.needs_penalties else ()
            # A request's first sequence draws for all n completions when its prompt is
            # done; the siblings fork from it after the step.
            indices = range(p.n) if seq.pending_forks else (seq.index,)
            for index in indices:
                row = SampleRow(p, prompt_ids, output_ids, banned,
                                None if p.greedy else self._generator(samplers, index),
                                max(0, p.min_tokens - seq.num_output_tokens) if banned else 0)
                draws.append(Draw(item.request_id, item.seq_id, index, row,
                                  self._matcher(samplers, index), item.draft))
        return SamplingPlan(tuple(draws), distributions)

    @staticmethod
    def _generator(samplers: _Samplers, index: int) -> torch.Generator:
        """Completion `index`'s own random stream: seeded requests give the same tokens
        whatever else shares the batch."""
        if index not in samplers.generators:
            seed = samplers.seed if samplers.seed is not None else random.getrandbits(63)
            samplers.generators[index] = torch.Generator().manual_seed(seed + index)
        return samplers.generators[index]

    @staticmethod
    def _matcher(samplers: _Samplers, index: int) -> Matcher | None:
        if samplers.constraint is None:
            return None
        if index not in samplers.matchers:
            samplers.matchers[index] = samplers.constraint.new_matcher()
        return samplers.matchers[index]

    def held_off_ids(self, seq: TokenSequence) -> tuple[int, ...]:
        """Token ids that may not be sampled yet: EOS and stop ids before min_tokens."""
        p = seq.params
        if seq.num_output_tokens >= p.min_tokens:
            return ()
        return (*(() if p.ignore_eos else self.eos_ids), *p.stop_token_ids)
