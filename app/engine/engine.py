"""The async engine: one loop owns the model; requests talk to it through submit()/abort(),
and the server reads it through stats().

Each iteration: schedule (scheduler.py: frozen snapshots of the step) -> run the batched
forward and sampling in a worker thread (runner.py; torch releases the GIL, so the event
loop keeps serving HTTP) -> postprocess on the loop (output_processor.py: tokens to text
deltas and stop decisions; then forks, finished sequences, outputs to each request's
collector).

Only the event loop changes scheduler, block-manager and request state, and only between
steps: aborts and shutdown take effect at the top of the loop, never while a step is in
flight.

Failure policy: an exception inside a step fails only the requests in that step
(StepFailed). After `max_consecutive_failures` failing steps in a row the engine is marked
dead: every request fails with EngineDead and readiness reports it, so the orchestrator
restarts the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from app.engine.block_manager import BlockManager
from app.engine.compute import compute_thread
from app.engine.errors import (
    EngineDead,
    EngineError,
    EngineStopped,
    InvalidRequest,
    QueueFull,
    RequestCancelled,
    StepFailed,
)
from app.engine.output import (
    CompletionDelta,
    RequestOutput,
    RequestSummary,
    RequestTimes,
    merge_outputs,
)
from app.engine.output_processor import OutputProcessor
from app.engine.request import RequestKind, RequestState, SequenceStatus
from app.engine.request import Sequence as Seq
from app.engine.runner import ModelRunner, OutputPlan, RunnerOutput, kv_cache_blocks
from app.engine.scheduler import Scheduler, SchedulerConfig, SchedulerOutput
from app.engine.stats import EngineStats, StepStats
from app.engine.stream import OutputCollector, RequestStream
from app.engine.validation import RequestLimits, check_request, classified_tokens
from app.modeling.loaded import LoadedModel
from app.sampling import Sampled
from app.sampling_params import SamplingParams
from app.tokenizer import Tokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineConfig:
    block_size: int = 16
    num_kv_blocks: int = 0  # 0: enough for max_num_seqs full-length sequences, memory allowing
    kv_cache_memory_fraction: float = 0.25  # of available memory, when sizing automatically
    max_model_len: int = 0  # 0: the model's own limit
    enable_prefix_caching: bool = True
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    max_top_logprobs: int = 20
    max_consecutive_failures: int = 3
    compile: str = "off"  # auto | on | off: see app.modeling.compile
    prepack: str = "off"  # auto | off: see app.modeling.packed
    shutdown_timeout: float = 30.0  # how long shutdown() waits for a step in flight


class Engine:
    def __init__(self, loaded: LoadedModel, tokenizer: Tokenizer, config: EngineConfig,
                 name: str = "default", executor: ThreadPoolExecutor | None = None) -> None:
        """`executor`: the one thread that runs torch work (see app.engine.compute); an
        engine without one makes its own."""
        self.name = name
        self.loaded = loaded
        self.tokenizer = tokenizer
        self.config = config
        self.model_config = loaded.config
        self.max_model_len = min(config.max_model_len or loaded.config.max_model_len,
                                 loaded.config.max_model_len)
        sched = config.scheduler
        num_blocks = config.num_kv_blocks or kv_cache_blocks(
            loaded, config.block_size, sched.max_num_seqs * self.max_model_len,
            config.kv_cache_memory_fraction)
        self.blocks = BlockManager(num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(sched, self.blocks)
        self.runner = ModelRunner(loaded, num_blocks, config.block_size, config.compile,
                                  config.prepack)
        eos_ids = tuple(dict.fromkeys((*tokenizer.eos_ids, *loaded.eos_token_ids)))
        self.processor = OutputProcessor(tokenizer, eos_ids, self.max_model_len)
        self.limits = RequestLimits(
            model_name=name, model=loaded.config, max_model_len=self.max_model_len,
            kv_cache_tokens=num_blocks * config.block_size, block_size=config.block_size,
            max_top_logprobs=config.max_top_logprobs, max_num_seqs=sched.max_num_seqs)
        self._requests: dict[str, RequestState] = {}
        self._aborts: set[str] = set()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._owns_executor = executor is None
        self._executor = executor or compute_thread(f"engine-{name}")
        self._task: asyncio.Task[None] | None = None
        self._accepting = True
        self._stopping = False
        self.dead_reason: str | None = None
        self._consecutive_failures = 0
        self._num_rejected = 0
        # Test hook: called in the worker thread before each forward; may raise.
        self.fault_hook: Callable[[SchedulerOutput], None] | None = None
        self.step_observers: list[Callable[[StepStats], None]] = []
        self.finish_observers: list[Callable[[RequestSummary], None]] = []
        self.death_observers: list[Callable[[str], None]] = []

    @property
    def eos_ids(self) -> tuple[int, ...]:
        return self.processor.eos_ids

    # ------------------------------------------------------------------ lifecycle

    @property
    def is_running(self) -> bool:
        return self._task is not None and not self._task.done() and self.dead_reason is None

    @property
    def is_accepting(self) -> bool:
        return self._accepting and self.is_running

    @property
    def num_requests(self) -> int:
        return len(self._requests)

    def stats(self) -> EngineStats:
        running = {s.request_id for s in self.scheduler.running}
        waiting = {s.request_id for s in self.scheduler.waiting} - running
        return EngineStats(
            model=self.name, running_requests=len(running), waiting_requests=len(waiting),
            running_seqs=len(self.scheduler.running), waiting_seqs=len(self.scheduler.waiting),
            kv_blocks_total=self.blocks.num_blocks, kv_blocks_used=self.blocks.num_used,
            kv_blocks_cached=self.blocks.num_cached, block_size=self.blocks.block_size,
            rejections=self._num_rejected, preemptions=self.scheduler.num_preemptions,
            prefix_queries=self.blocks.prefix_queries, prefix_hits=self.blocks.prefix_hits,
            alive=self.is_running, accepting=self.is_accepting, dead_reason=self.dead_reason,
            compile=self.runner.compile_reason, weights=self.runner.pack_reason,
            quantization=self.runner.quantization)

    async def start(self) -> None:
        """Prepare the model (compile and warm up, in the worker thread) and start the loop."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self.runner.prepare)
        self._task = asyncio.create_task(self._loop(), name=f"engine-{self.name}")
        self._task.add_done_callback(self._loop_ended)

    def _loop_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        self._die(f"engine loop crashed: {type(exc).__name__}: {exc}", exc)

    def _die(self, reason: str, exc: BaseException | None = None) -> None:
        self.dead_reason = reason
        log.critical("engine %s is dead: %s", self.name, reason, exc_info=exc)
        self._end_all(EngineDead(reason))
        for observer in self.death_observers:
            try:
                observer(reason)
            except Exception:
                log.exception("death observer failed")

    async def drain(self, timeout: float) -> bool:
        """Stop taking work and wait for in-flight requests; True if all finished."""
        self._accepting = False
        if self._requests and self.is_running:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout)
        return not self._requests

    async def shutdown(self) -> None:
        """Stop the loop after the step in flight (if any), then fail what is left. Never
        blocks the event loop on the worker thread."""
        self._accepting = False
        self._stopping = True
        self._wake.set()
        task = self._task
        if task is not None and not task.done():
            done, _ = await asyncio.wait({task}, timeout=self.config.shutdown_timeout)
            if not done:  # a step hangs: stop waiting for it
                log.error("engine %s: a step did not finish within %.0f s of shutdown",
                          self.name, self.config.shutdown_timeout)
                task.cancel()
        self._end_all(EngineStopped("the server is shutting down"))
        self.runner.release()
        if self._owns_executor:
            self._executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ requests

    def submit(self, prompt_ids: list[int], params: SamplingParams,
               kind: RequestKind = RequestKind.GENERATE, *, priority: int = 0,
               score_from: int | None = None, cache_salt: str | None = None,
               constraint: Any = None) -> RequestStream:
        """Validate and queue one request; see submit_batch."""
        return self.submit_batch([prompt_ids], params, kind, priority=priority,
                                 score_from=[score_from], cache_salt=cache_salt,
                                 constraint=constraint)[0]

    def submit_batch(self, prompts: Sequence[list[int]], params: SamplingParams,
                     kind: RequestKind = RequestKind.GENERATE, *, priority: int = 0,
                     score_from: Sequence[int | None] | None = None,
                     cache_salt: str | None = None,
                     constraint: Any = None) -> list[RequestStream]:
        """Queue several prompts as one admission (the waiting queue counts them once),
        each its own request with its own stream; all or none. Raises InvalidRequest,
        QueueFull, EngineDead or EngineStopped at once, never after queueing. Request ids
        are always made here: callers' ids (X-Request-ID) are for logs, not identity.
        `constraint` (app.structured.Constraint, GENERATE only): every completion's
        tokens are masked to what it allows."""
        if self.dead_reason is not None:
            raise EngineDead(f"model {self.name!r} is unavailable: {self.dead_reason}")
        if not self.is_accepting:
            raise EngineStopped("the server is shutting down and takes no new requests")
        if not prompts:
            raise InvalidRequest("no prompts given", param="prompt")
        for prompt_ids in prompts:
            check_request(self.limits, prompt_ids, params, kind)
        now = time.monotonic()
        states: list[RequestState] = []
        for i, prompt_ids in enumerate(prompts):
            request_id = uuid.uuid4().hex
            tokens = (classified_tokens(prompt_ids, self.model_config.pad_token_id)
                      if kind is RequestKind.CLASSIFY else list(prompt_ids))
            seq = Seq(request_id=request_id, kind=kind, token_ids=tokens,
                      num_prompt_tokens=len(tokens), params=params, priority=priority,
                      arrival=now, cache_salt=cache_salt,
                      pending_forks=params.n - 1 if kind is RequestKind.GENERATE else 0,
                      # EMBED pools every position: none may come from the prefix cache.
                      score_from=1 if kind is RequestKind.EMBED else
                      None if score_from is None else score_from[i])
            states.append(RequestState(
                request_id=request_id, model=self.name, kind=kind, params=params,
                prompt_ids=list(prompt_ids), collector=OutputCollector(),
                times=RequestTimes(arrival=now), sequences=[seq], constraint=constraint))
        try:
            self.scheduler.add([s.sequences[0] for s in states])
        except QueueFull:
            self._num_rejected += 1
            raise
        for state in states:
            self._requests[state.request_id] = state
        self._idle.clear()
        self._wake.set()
        return [RequestStream(s.request_id, self.name, s.collector, self.abort, s.summary)
                for s in states]

    def abort(self, request_id: str) -> None:
        """Cancel a request; it ends (and its blocks return) before the next step. A no-op
        for a request that has already finished."""
        if request_id in self._requests:
            self._aborts.add(request_id)
            self._wake.set()

    def _apply_aborts(self) -> None:
        while self._aborts:
            state = self._requests.get(self._aborts.pop())
            if state is not None:
                self._end(state, "abort", error=RequestCancelled("request aborted"))

    def _end(self, state: RequestState, reason: str, *, output: RequestOutput | None = None,
             error: BaseException | None = None) -> None:
        """A request is over: finish its sequences, hand its reader the last output or
        the error, and tell the observers. Every way out of the engine goes through here."""
        if self._requests.pop(state.request_id, None) is None:
            return
        for seq in state.sequences:
            if not seq.is_finished:
                self.scheduler.finish(seq, reason)
        state.finished = True
        if error is not None or not state.finish_reasons:
            state.finish_reasons.append(reason)
        state.times.finished = time.monotonic()
        if error is not None:
            state.collector.fail(error)
        else:
            state.collector.put(output or self.processor.output(state, finished=True))
        if not self._requests:
            self._idle.set()
        summary = state.summary()
        for observer in self.finish_observers:
            try:
                observer(summary)
            except Exception:  # an observer must never break the engine
                log.exception("finish observer failed")

    def _end_all(self, error: EngineError) -> None:
        for state in list(self._requests.values()):
            self._end(state, "error", error=error)

    # ------------------------------------------------------------------ the loop

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            self._apply_aborts()
            if not self.scheduler.has_work():
                self._wake.clear()
                await self._wake.wait()
                continue
            out = self.scheduler.schedule()
            if out.is_empty:
                self._unschedulable()
                await asyncio.sleep(0)
                continue
            plan = self.processor.plan(out, self._requests)
            started = time.monotonic()
            try:
                result = await loop.run_in_executor(self._executor, self._execute, out, plan)
                self.scheduler.step_done(out)
                generated = self._postprocess(out, plan, result)
            except Exception as exc:
                self._step_failed(out, exc)
                continue
            self._consecutive_failures = 0
            self._observe_step(out, time.monotonic() - started, generated)

    def _execute(self, out: SchedulerOutput, plan: OutputPlan) -> RunnerOutput:
        if self.fault_hook is not None:
            self.fault_hook(out)
        return self.runner.execute(out, plan)

    def _unschedulable(self) -> None:
        # Nothing could run: with nothing running, the head of the queue cannot fit even
        # in an empty cache. Validation prevents this; fail it rather than spin forever.
        if not self.scheduler.running and self.scheduler.waiting:
            state = self._requests.get(self.scheduler.waiting[0].request_id)
            if state is not None:
                self._end(state, "error",
                          error=InvalidRequest("request does not fit in the KV cache"))

    def _step_failed(self, out: SchedulerOutput, exc: Exception) -> None:
        self._consecutive_failures += 1
        log.error("engine %s: step failed (%d in a row): %r", self.name,
                  self._consecutive_failures, exc, exc_info=exc)
        error = StepFailed(f"inference step failed: {type(exc).__name__}: {exc}")
        for request_id in {item.request_id for item in out.scheduled}:
            state = self._requests.get(request_id)
            if state is not None:
                self._end(state, "error", error=error)
        if self._consecutive_failures >= self.config.max_consecutive_failures:
            self._die(f"{self._consecutive_failures} consecutive inference steps failed; "
                      f"last: {type(exc).__name__}: {exc}")

    def _observe_step(self, out: SchedulerOutput, seconds: float, generated: int) -> None:
        stats = StepStats(
            num_seqs=len(out.scheduled),
            num_tokens=out.num_batched_tokens,
            num_prefill_tokens=sum(i.num_new_tokens for i in out.scheduled if i.is_prefill),
            num_decode_seqs=sum(1 for i in out.scheduled if not i.is_prefill),
            seconds=seconds,
            preemptions=out.num_preempted,
            generated_tokens=generated,
        )
        for observer in self.step_observers:
            try:
                observer(stats)
            except Exception:
                log.exception("step observer failed")

    # ------------------------------------------------------------------ after the step

    def _postprocess(self, out: SchedulerOutput, plan: OutputPlan, result: RunnerOutput
                     ) -> int:
        """Apply the step's results; returns the number of tokens generated."""
        now = time.monotonic()
        for item in out.scheduled:
            state = self._requests.get(item.request_id)
            seq = state.sequence(item.seq_id) if state is not None else None
            if state is None or seq is None or seq.status is not SequenceStatus.RUNNING:
                continue
            if state.times.first_scheduled is None:
                state.times.first_scheduled = now
            if item.kind is RequestKind.SCORE:
                state.score_logprobs.update(result.score_logprobs.get(item.seq_id, {}))
                state.score_top.update(result.score_top.get(item.seq_id, {}))
            elif item.kind is RequestKind.EMBED and item.seq_id in result.embeddings:
                chunk_sum, last = result.embeddings[item.seq_id]
                # A chunk at position 0 starts the sequence (again, after a preemption).
                if item.start == 0 or state.embed_sum is None:
                    state.embed_sum = chunk_sum
                else:
                    state.embed_sum = [a + b for a, b in zip(state.embed_sum, chunk_sum,
                                                             strict=True)]
                state.embed_last = last
            if item.completes_prefill and item.kind is not RequestKind.GENERATE:
                self._end(state, "stop", output=self.processor.prefill_output(state, seq, result))
        # Resolve every draw to its sequence first: a parent's siblings fork from its
        # prompt blocks before its own token can finish it (and free them).
        targets: list[tuple[RequestState, Seq, Sampled]] = []
        for draw, sampled in zip(plan.draws, result.sampled, strict=True):
            state = self._requests.get(draw.request_id)
            parent = state.sequence(draw.seq_id) if state is not None else None
            if state is None or parent is None or parent.status is not SequenceStatus.RUNNING:
                continue
            seq = parent if draw.index == parent.index else self._fork(state, parent,
                                                                       draw.index)
            targets.append((state, seq, sampled))
        deltas: dict[str, list[CompletionDelta]] = {}
        for state, seq, sampled in targets:
            delta = self.processor.append(state, seq, sampled.token_id, sampled.logprob)
            if delta.finish_reason is not None:
                self.scheduler.finish(seq, delta.finish_reason)
                state.finish_reasons.append(delta.finish_reason)
            deltas.setdefault(state.request_id, []).append(delta)
            self.processor.record_token_time(state, seq.index, now)
        for request_id, completions in deltas.items():
            state = self._requests[request_id]
            output = self.processor.output(state, completions)
            done = len(state.sequences) == state.params.n and all(
                s.is_finished for s in state.sequences)
            if done:
                output.finished = True
                self._end(state, state.finish_reasons[-1], output=output)
            else:
                state.collector.put(output)
        return len(result.sampled)

    def _fork(self, state: RequestState, parent: Seq, index: int) -> Seq:
        """A sibling completion of `parent`, sharing its prompt's computed full blocks;
        its seat was reserved by the parent's pending_forks."""
        child = Seq(request_id=parent.request_id, kind=parent.kind,
                    token_ids=list(state.prompt_ids), num_prompt_tokens=len(state.prompt_ids),
                    params=parent.params, index=index, priority=parent.priority,
                    arrival=parent.arrival, group=parent.group, cache_salt=parent.cache_salt)
        self.blocks.fork(parent, child)
        parent.pending_forks -= 1
        self.scheduler.add_running(child)
        state.sequences.append(child)
        return child

    # ------------------------------------------------------------------ convenience

    async def generate(self, prompt_ids: list[int], params: SamplingParams,
                       **kwargs: object) -> RequestOutput:
        """Run a request to completion and merge its outputs (used by tests and CLI)."""
        stream = self.submit(prompt_ids, params, **kwargs)  # type: ignore[arg-type]
        return merge_outputs(await stream.collect())


__all__ = ["Engine", "EngineConfig", "EngineError", "EngineStats", "RequestStream",
           "StepStats"]
