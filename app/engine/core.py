"""EngineCore: the synchronous half of the engine (vLLM v1's EngineCore). It builds and
owns the KV block manager, scheduler, runner, sampling planner and output processor, and
keeps the three views of every request in flight, each keyed by request id:

  - what the scheduler sees (request.EngineRequest: prompt, parameters, sequences),
  - what the sampler draws with (sampling_plan.SamplingPlanner: generators, matchers),
  - what the reader gets (output_processor.RequestProgress: text, accumulators, collector).

It runs on the event loop only (the runner's forward runs in the engine's worker thread,
called by Engine). Engine, the async half, owns the loop, the lifecycle, the failure
policy and the observers.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from app.engine.block_manager import BlockManager
from app.engine.config import EngineConfig
from app.engine.draft_runner import DraftModel, DraftRunner, check_draft
from app.engine.output import RequestOutput, RequestSummary
from app.engine.output_processor import OutputProcessor, RequestProgress
from app.engine.request import EngineRequest, RequestKind
from app.engine.runner import ModelRunner, kv_cache_blocks
from app.engine.runner_output import RunnerOutput
from app.engine.sampling_plan import SamplingPlan, SamplingPlanner
from app.engine.scheduler import Scheduler, SchedulerOutput
from app.engine.speculative import Proposer
from app.engine.step_update import StepUpdate, StepUpdater
from app.engine.validation import RequestLimits
from app.modeling.loaded import LoadedModel
from app.tokenizer import Tokenizer

if TYPE_CHECKING:
    from app.structured import Constraint


class EngineCore:
    def __init__(self, loaded: LoadedModel, tokenizer: Tokenizer, config: EngineConfig,
                 name: str, draft: DraftModel | None = None) -> None:
        self.max_model_len = min(config.max_model_len or loaded.config.max_model_len,
                                 loaded.config.max_model_len)
        sched = config.scheduler
        num_blocks = config.num_kv_blocks or kv_cache_blocks(
            loaded, config.block_size, sched.max_num_seqs * self.max_model_len,
            config.kv_cache_memory_fraction)
        self.blocks = BlockManager(num_blocks, config.block_size, config.enable_prefix_caching)
        self.proposer = Proposer(config.speculative) if config.speculative else None
        # the scheduler's LoRA cap is the runner's resident slots: one figure, set here
        self.scheduler = Scheduler(replace(sched, max_loras=config.max_loras), self.blocks,
                                   self.proposer, self.max_model_len)
        self.runner = ModelRunner(loaded, num_blocks, config.block_size, config.compile,
                                  config.prepack, max_loras=config.max_loras,
                                  max_lora_rank=config.max_lora_rank)
        self.drafter = self._drafter(loaded, tokenizer, config, draft, num_blocks)
        eos_ids = tuple(dict.fromkeys((*tokenizer.eos_ids, *loaded.eos_token_ids)))
        self.processor = OutputProcessor(tokenizer, eos_ids, self.max_model_len)
        self.planner = SamplingPlanner(eos_ids)
        self.updater = StepUpdater(self.scheduler, self.blocks, self.processor)
        self.limits = RequestLimits(
            model_name=name, model=loaded.config, max_model_len=self.max_model_len,
            kv_cache_tokens=num_blocks * config.block_size, block_size=config.block_size,
            max_top_logprobs=config.max_top_logprobs, max_num_seqs=sched.max_num_seqs)
        self.requests: dict[str, EngineRequest] = {}

    def _drafter(self, loaded: LoadedModel, tokenizer: Tokenizer, config: EngineConfig,
                 draft: DraftModel | None, num_blocks: int) -> DraftRunner | None:
        """The draft model's runner (speculative method draft_model), its fit checked."""
        spec = config.speculative
        if spec is None or not spec.uses_draft_model:
            if draft is not None:
                raise ValueError("a draft model was given, but the speculative method is "
                                 f"{spec.method if spec else 'off'!r}")
            return None
        if draft is None:
            raise ValueError(f"speculative method {spec.method!r}: the draft model "
                             f"{spec.model} was not loaded")
        check_draft(loaded, tokenizer, draft, self.max_model_len)
        return DraftRunner(draft, num_blocks, config.block_size, spec.num_speculative_tokens,
                           spec.max_batch, self.max_model_len)

    def add(self, request: EngineRequest, progress: RequestProgress,
            constraint: Constraint | None = None) -> None:
        """A request the scheduler has queued: its sampler's and reader's views join."""
        self.requests[request.request_id] = request
        p = request.params
        speculate = (self.proposer is not None and request.kind is RequestKind.GENERATE
                     and p.speculate)
        for seq in request.sequences:  # (forks inherit both: step_update._fork)
            seq.speculate, seq.constrained = speculate, constraint is not None
        self.processor.add(progress)
        self.planner.add(request.request_id, request.params.seed, constraint)

    def end(self, request: EngineRequest, reason: str, *, output: RequestOutput | None = None,
            error: BaseException | None = None) -> RequestSummary | None:
        """Finish the request's sequences, drop its views, and hand its reader the last
        output or the error; None when it had already ended."""
        if self.requests.pop(request.request_id, None) is None:
            return None
        for seq in request.sequences:
            if not seq.is_finished:
                self.scheduler.finish(seq)
        self.planner.remove(request.request_id)
        return self.processor.finish(request.request_id, reason, request.cached_tokens,
                                     output=output, error=error)

    def plan(self, out: SchedulerOutput) -> SamplingPlan:
        return self.planner.plan(out, self.requests)

    def update(self, out: SchedulerOutput, plan: SamplingPlan, result: RunnerOutput,
               now: float) -> StepUpdate:
        """The runner computed `out`: advance the sequences and apply its results; the
        requests that ended are for the caller to end()."""
        self.scheduler.step_done(out)
        return self.updater.apply(out, plan, result, self.requests, now)
