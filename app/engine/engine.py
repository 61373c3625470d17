"""The async engine (vLLM v1's AsyncLLM half): one loop owns the model; requests talk to
it through submit()/abort(), and the server reads it through stats(). The parts and the
per-request views live in EngineCore (core.py).

Each iteration: schedule (scheduler.py: frozen snapshots of the step) -> run the batched
forward and sampling in a worker thread (runner.py; torch releases the GIL, so the event
loop keeps serving HTTP) -> update on the loop (step_update.py: forks, finished
sequences; output_processor.py: tokens to text deltas and stop decisions, outputs to
each request's collector).

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
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from app.engine.adapters import EngineAdapters
from app.engine.compute import compute_thread
from app.engine.config import EngineConfig
from app.engine.core import EngineCore
from app.engine.draft_runner import DraftModel
from app.engine.errors import (
    EngineDead,
    EngineError,
    EngineStopped,
    InvalidRequest,
    QueueFull,
    RequestCancelled,
    StepFailed,
)
from app.engine.lora_admin import LoraAdministration
from app.engine.output import RequestOutput, RequestSummary, RequestTimes, merge_outputs
from app.engine.output_processor import RequestProgress
from app.engine.request import EngineRequest, RequestKind, new_request
from app.engine.runner_output import RunnerOutput
from app.engine.runner_warmup import verification_cost
from app.engine.sampling_plan import SamplingPlan
from app.engine.scheduler import SchedulerOutput
from app.engine.stats import EngineStats, StepStats
from app.engine.stream import RequestStream
from app.engine.validation import InvalidPrompt, check_request, classified_tokens
from app.modeling.config import Task
from app.modeling.loaded import LoadedModel
from app.sampling_params import SamplingParams
from app.tokenizer import Tokenizer

if TYPE_CHECKING:
    from app.structured import Constraint

log = logging.getLogger(__name__)

T = TypeVar("T")


class Engine(LoraAdministration):
    def __init__(self, loaded: LoadedModel, tokenizer: Tokenizer, config: EngineConfig,
                 name: str = "default", executor: ThreadPoolExecutor | None = None,
                 draft: DraftModel | None = None) -> None:
        """`executor`: the one thread that runs torch work (see app.engine.compute); an
        engine without one makes its own. `draft`: the draft model, for speculative
        decoding's draft_model method (DraftMismatch when it cannot serve this model)."""
        self.name = name
        self.loaded = loaded
        self.tokenizer = tokenizer
        self.config = config
        self.model_config = loaded.config
        self.core = EngineCore(loaded, tokenizer, config, name, draft)
        # The core's parts, named here for the server and tests that read them.
        self.max_model_len, self.limits = self.core.max_model_len, self.core.limits
        self.blocks, self.scheduler = self.core.blocks, self.core.scheduler
        self.runner, self._requests = self.core.runner, self.core.requests
        self._aborts: set[str] = set()
        self._wake = asyncio.Event()
        # Set when a request arrives (with a seat free for it) or is aborted while the
        # worker runs a multi-step schedule: the worker stops after the step in progress
        # (ModelRunner.execute), so the newcomer waits one step for its prefill, not up to
        # num_scheduler_steps - 1 more (four 32-row steps of the 134M Llama are ~80 ms).
        # Set on the loop, read by the worker: a threading.Event, not an asyncio one.
        self._cut_short = threading.Event()
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
        self.speculation_off: str | None = None  # why a configured speculation is off
        self.speculation_cost = ""  # the startup measurement that kept it on
        self.step_observers: list[Callable[[StepStats], None]] = []
        self.finish_observers: list[Callable[[RequestSummary], None]] = []
        self.death_observers: list[Callable[[str], None]] = []
        # LoRA adapters (none unless config.max_loras > 0), and when the step loop last ran,
        # which vllm:lora_requests_info reports (vLLM sets it to the time at each step)
        self.adapters = EngineAdapters()
        self.last_step_time = time.time()

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
            quantization=self.runner.quantization, **self._spec_stats(),
            **self._lora_stats())

    def _spec_stats(self) -> dict[str, Any]:
        proposer = self.core.proposer
        if proposer is None:
            return {"speculative": self.speculation_off} if self.speculation_off else {}
        c = proposer.config
        return {"speculative": c.describe()
                              + (f" ({self.speculation_cost})" if self.speculation_cost else ""),
                "spec_drafts": proposer.num_drafts,
                "spec_draft_tokens": proposer.num_draft_tokens,
                "spec_accepted_tokens": proposer.num_accepted_tokens,
                "spec_accepted_per_position": tuple(proposer.accepted_per_position)}

    async def start(self) -> None:
        """Prepare the model (compile and warm up, in the worker thread) and start the loop."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self.runner.prepare)
        if self.core.drafter is not None:
            await loop.run_in_executor(self._executor, self.core.drafter.prepare,
                                       self.runner.step is not None)
        if self.core.proposer is not None and self.model_config.task is Task.CAUSAL_LM:
            await loop.run_in_executor(self._executor, self._check_speculation)
        self._task = asyncio.create_task(self._loop(), name=f"engine-{self.name}")
        self._task.add_done_callback(self._loop_ended)

    def _check_speculation(self) -> None:
        """Keep speculative decoding only where a speculative step costs little more
        than a plain one on this model, CPU and execution mode. A step pays when the
        tokens it keeps outnumber its cost in one-token steps; the limits per method
        (`max_verify_cost`, DEFAULT_VERIFY_COST by default) come from measurements on the
        shipped model (docs/PERFORMANCE.md). A draft model's k forwards (eager) count
        too. Off, and said with the figures, above the limit."""
        proposer = self.core.proposer
        limit = None if proposer is None else proposer.config.verify_cost_limit()
        if proposer is None or limit is None:
            return
        k = proposer.config.num_speculative_tokens
        plain, verify = verification_cost(self.runner, k)
        drafter = self.core.drafter
        guessing = k * drafter.forward_cost() if drafter is not None else 0.0
        ratio = (verify + guessing) / plain
        measured = (f"a step scoring {k + 1} tokens"
                    + (f" after {k} draft forwards" if drafter is not None else "")
                    + f" costs {ratio:.2f}x a one-token step ({(verify + guessing) * 1e3:.2f} "
                    f"vs {plain * 1e3:.2f} ms)")
        if ratio <= limit:
            self.speculation_cost = measured
            log.info("speculative decoding on: %s", measured)
            return
        self.speculation_off = f"off: {measured}, above max_verify_cost {limit}"
        log.warning("speculative decoding %s", self.speculation_off)
        self.core.proposer = self.scheduler.proposer = None
        self.core.drafter = None

    def _loop_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        self._die(f"engine loop crashed: {type(exc).__name__}: {exc}", exc)

    def _die(self, reason: str, exc: BaseException | None = None) -> None:
        self.dead_reason = reason
        log.critical("engine %s is dead: %s", self.name, reason, exc_info=exc)
        self._end_all(EngineDead(reason))
        _notify(self.death_observers, "death", reason)

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
               constraint: Constraint | None = None, adapter: str | None = None
               ) -> RequestStream:
        """Validate and queue one request; see submit_batch."""
        return self.submit_batch([prompt_ids], params, kind, priority=priority,
                                 score_from=[score_from], cache_salt=cache_salt,
                                 constraint=constraint, adapter=adapter)[0]

    def submit_batch(self, prompts: Sequence[list[int]], params: SamplingParams,
                     kind: RequestKind = RequestKind.GENERATE, *, priority: int = 0,
                     score_from: Sequence[int | None] | None = None,
                     cache_salt: str | None = None,
                     constraint: Constraint | None = None,
                     adapter: str | None = None) -> list[RequestStream]:
        """Queue several prompts as one admission (the waiting queue counts them once),
        each its own request with its own stream; all or none. Raises InvalidRequest,
        QueueFull, EngineDead or EngineStopped at once, never after queueing. Request ids
        are always made here: callers' ids (X-Request-ID) are for logs, not identity.
        `constraint` (app.structured.Constraint, GENERATE only): every completion's
        tokens are masked to what it allows. `adapter`: the LoRA adapter every prompt runs
        with (AdapterNotFound unless loaded); its prefix-cache blocks are its own."""
        if self.dead_reason is not None:
            raise EngineDead(f"model {self.name!r} is unavailable: {self.dead_reason}")
        if not self.is_accepting:
            raise EngineStopped("the server is shutting down and takes no new requests")
        if not prompts:
            raise InvalidPrompt("no prompts given")
        for prompt_ids in prompts:
            check_request(self.limits, prompt_ids, params, kind)
        if adapter is not None:
            cache_salt = self.adapters.entry(adapter).cache_salt(cache_salt)
        now = time.monotonic()
        requests = [new_request(
            uuid.uuid4().hex, kind, params, list(prompt_ids),
            classified_tokens(prompt_ids, self.model_config.pad_token_id)
            if kind is RequestKind.CLASSIFY else list(prompt_ids),
            priority=priority, arrival=now, cache_salt=cache_salt, adapter=adapter,
            score_from=None if score_from is None else score_from[i])
            for i, prompt_ids in enumerate(prompts)]
        try:
            self.scheduler.add([r.sequences[0] for r in requests])
        except QueueFull:
            self._num_rejected += 1
            raise
        if adapter is not None:
            self.adapters.acquire(adapter, len(requests))
        streams: list[RequestStream] = []
        for request in requests:
            progress = RequestProgress(request.request_id, self.name, kind, params,
                                       request.prompt_ids, RequestTimes(arrival=now))
            self.core.add(request, progress, constraint)
            streams.append(RequestStream(request.request_id, self.name, progress.collector,
                                         self.abort, progress.summary))
        self._idle.clear()
        self._wake.set()
        if self.scheduler.num_running_seats < self.scheduler.config.max_num_seqs:
            self._cut_short.set()  # else it could not join the next step anyway
        return streams

    def abort(self, request_id: str) -> None:
        """Cancel a request; it ends (and its blocks return) before the next step. A no-op
        for a request that has already finished."""
        if request_id in self._requests:
            self._aborts.add(request_id)
            self._wake.set()
            self._cut_short.set()  # its seat and blocks return sooner

    def _apply_aborts(self) -> None:
        while self._aborts:
            request = self._requests.get(self._aborts.pop())
            if request is not None:
                self._end(request, "abort", error=RequestCancelled("request aborted"))

    def _end(self, request: EngineRequest, reason: str, *,
             output: RequestOutput | None = None, error: BaseException | None = None) -> None:
        """A request is over: finish its sequences, hand its reader the last output or
        the error, and tell the observers. Every way out of the engine goes through here."""
        if request.adapter is not None and request.request_id in self._requests:
            self.adapters.release(request.adapter)  # (an unload may wait for this)
        summary = self.core.end(request, reason, output=output, error=error)
        if not self._requests:
            self._idle.set()
        if summary is not None:
            _notify(self.finish_observers, "finish", summary)

    def _end_all(self, error: EngineError) -> None:
        for request in list(self._requests.values()):
            self._end(request, "error", error=error)

    # ------------------------------------------------------------------ the loop

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            self._apply_aborts()
            if not self.scheduler.has_work():
                self._wake.clear()
                await self._wake.wait()
                continue
            self._cut_short.clear()  # what arrived until now, this schedule sees
            out = self.scheduler.schedule()
            if out.is_empty:
                self._unschedulable()
                await asyncio.sleep(0)
                continue
            plan = self.core.plan(out)
            started = time.monotonic()
            self.last_step_time = time.time()
            try:
                result = await loop.run_in_executor(self._executor, self._execute, out, plan)
                update = self.core.update(out, plan, result, time.monotonic())
                for ended in update.ended:
                    self._end(ended.request, ended.reason, output=ended.output)
            except Exception as exc:
                self._step_failed(out, exc)
                continue
            self._consecutive_failures = 0
            _notify(self.step_observers, "step",
                    StepStats.of(out, time.monotonic() - started, update.generated))

    def _execute(self, out: SchedulerOutput, plan: SamplingPlan) -> RunnerOutput:
        if self.fault_hook is not None:
            self.fault_hook(out)
        result = self.runner.execute(out, plan, cut_short=self._cut_short.is_set)
        if self.core.drafter is not None:  # the draft model's guesses for the next step
            self.core.drafter.step(out, plan, result)
        return result

    def _unschedulable(self) -> None:
        # Nothing could run: with nothing running, the head of the queue cannot fit even
        # in an empty cache. Validation prevents this; fail it rather than spin forever.
        if not self.scheduler.running and self.scheduler.waiting:
            request = self._requests.get(self.scheduler.waiting[0].request_id)
            if request is not None:
                self._end(request, "error",
                          error=InvalidRequest("request does not fit in the KV cache"))

    def _step_failed(self, out: SchedulerOutput, exc: Exception) -> None:
        self._consecutive_failures += 1
        log.error("engine %s: step failed (%d in a row): %r", self.name,
                  self._consecutive_failures, exc, exc_info=exc)
        error = StepFailed(f"inference step failed: {type(exc).__name__}: {exc}")
        for request_id in {item.request_id for item in out.scheduled}:
            request = self._requests.get(request_id)
            if request is not None:
                self._end(request, "error", error=error)
        if self._consecutive_failures >= self.config.max_consecutive_failures:
            self._die(f"{self._consecutive_failures} consecutive inference steps failed; "
                      f"last: {type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------ convenience

    async def generate(self, prompt_ids: list[int], params: SamplingParams,
                       **kwargs: object) -> RequestOutput:
        """Run a request to completion and merge its outputs (used by tests and CLI)."""
        stream = self.submit(prompt_ids, params, **kwargs)  # type: ignore[arg-type]
        return merge_outputs(await stream.collect())


def _notify(observers: list[Callable[[T], None]], what: str, value: T) -> None:
    for observer in observers:
        try:
            observer(value)
        except Exception:  # an observer must never break the engine
            log.exception("%s observer failed", what)


__all__ = ["Engine", "EngineConfig", "EngineError", "EngineStats", "RequestStream",
           "StepStats"]
