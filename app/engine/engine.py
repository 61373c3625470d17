"""The async engine: one loop owns the model; requests talk to it through submit()/abort().

Each iteration: schedule (scheduler.py) -> run one batched forward in a worker thread
(runner.py; torch releases the GIL, so the event loop keeps serving HTTP) -> postprocess
(sample, detokenize, check stop conditions, stream outputs, free finished sequences).

Failure policy: an exception inside a step fails only the requests in that step
(StepFailed). After `max_consecutive_failures` failing steps in a row the engine is marked
dead: every request fails with EngineDead and readiness reports it, so the orchestrator
restarts the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from app.checkpoint import LoadedModel
from app.engine.block_manager import BlockManager
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
    RequestTimes,
    StopText,
    merge_outputs,
)
from app.engine.request import RequestKind, SamplingParams, Sequence, SequenceStatus
from app.engine.runner import ModelRunner, RunnerOutput, kv_cache_blocks
from app.engine.scheduler import ScheduledSeq, Scheduler, SchedulerConfig, SchedulerOutput
from app.modeling.config import Task
from app.sampling import SampleRow, TokenLogprob, sample_batch
from app.tokenizer import IncrementalDetokenizer, Tokenizer

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


@dataclass
class StepStats:
    """What one engine iteration did; handed to observers (metrics)."""

    num_seqs: int
    num_tokens: int
    num_prefill_tokens: int
    num_decode_seqs: int
    seconds: float
    preemptions: int
    generated_tokens: int


@dataclass
class RequestState:
    request_id: str
    kind: RequestKind
    params: SamplingParams
    prompt_ids: list[int]
    queue: asyncio.Queue[RequestOutput | BaseException]
    times: RequestTimes
    sequences: list[Sequence] = field(default_factory=list)
    texts: dict[int, StopText] = field(default_factory=dict)
    generators: dict[int, torch.Generator] = field(default_factory=dict)
    forked: bool = False
    # SCORE: position -> log P(token | prefix); keyed so a recomputed step overwrites.
    score_logprobs: dict[int, float] = field(default_factory=dict)
    finished: bool = False
    generated_tokens: int = 0
    finish_reasons: list[str] = field(default_factory=list)


class RequestStream:
    """Async iterator over a request's outputs. Closing it early aborts the request."""

    def __init__(self, engine: Engine, state: RequestState) -> None:
        self.engine = engine
        self.state = state
        self.request_id = state.request_id

    def __aiter__(self) -> AsyncIterator[RequestOutput]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[RequestOutput]:
        done = False
        try:
            while True:
                item = await self.state.queue.get()
                if isinstance(item, BaseException):
                    done = True
                    raise item
                yield item
                if item.finished:
                    done = True
                    return
        finally:
            if not done:  # consumer went away (disconnect, cancellation, break)
                self.engine.abort(self.request_id)

    async def collect(self) -> list[RequestOutput]:
        return [out async for out in self]


class Engine:
    def __init__(self, loaded: LoadedModel, tokenizer: Tokenizer, config: EngineConfig,
                 name: str = "default") -> None:
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
        self.runner = ModelRunner(loaded, num_blocks, config.block_size)
        self.eos_ids = tuple(dict.fromkeys((*tokenizer.eos_ids, *loaded.config.eos_token_ids)))
        self._requests: dict[str, RequestState] = {}
        self._aborts: set[str] = set()
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"engine-{name}")
        self._task: asyncio.Task[None] | None = None
        self._accepting = True
        self.dead_reason: str | None = None
        self._consecutive_failures = 0
        self.num_rejected = 0  # admission refusals (QueueFull -> 429)
        self._generated_this_step = 0
        # Test hook: called in the worker thread before each forward; may raise.
        self.fault_hook: Callable[[SchedulerOutput], None] | None = None
        self.step_observers: list[Callable[[StepStats], None]] = []
        self.finish_observers: list[Callable[[RequestState], None]] = []
        self.death_observers: list[Callable[[str], None]] = []

    # ------------------------------------------------------------------ lifecycle

    @property
    def is_running(self) -> bool:
        return self._task is not None and not self._task.done() and self.dead_reason is None

    @property
    def is_accepting(self) -> bool:
        return self._accepting and self.is_running

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    @property
    def num_requests(self) -> int:
        return len(self._requests)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"engine-{self.name}")
        self._task.add_done_callback(self._loop_ended)

    def _loop_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        self.dead_reason = f"engine loop crashed: {type(exc).__name__}: {exc}"
        log.critical("engine %s is dead: %s", self.name, self.dead_reason, exc_info=exc)
        self._died()

    def _died(self) -> None:
        assert self.dead_reason is not None
        for request_id in list(self._requests):
            self._fail(request_id, EngineDead(self.dead_reason))
        for observer in self.death_observers:
            try:
                observer(self.dead_reason)
            except Exception:
                log.exception("death observer failed")

    async def drain(self, timeout: float) -> bool:
        """Stop taking work and wait for in-flight requests; True if all finished."""
        self._accepting = False
        deadline = time.monotonic() + timeout
        while self._requests and time.monotonic() < deadline and self.is_running:
            await asyncio.sleep(0.05)
        return not self._requests

    async def shutdown(self) -> None:
        self._accepting = False
        for request_id in list(self._requests):
            self._fail(request_id, EngineStopped("the server is shutting down"))
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self._executor.shutdown(wait=True)

    # ------------------------------------------------------------------ requests

    def submit(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        kind: RequestKind = RequestKind.GENERATE,
        request_id: str | None = None,
        priority: int = 0,
        score_from: int | None = None,
    ) -> RequestStream:
        """Validate and queue a request; raises InvalidRequest, QueueFull, EngineDead or
        EngineStopped at once (never after queueing)."""
        if self.dead_reason is not None:
            raise EngineDead(f"model {self.name!r} is unavailable: {self.dead_reason}")
        if not self.is_accepting:
            raise EngineStopped("the server is shutting down and takes no new requests")
        self._validate(prompt_ids, params, kind)
        request_id = request_id or uuid.uuid4().hex
        if request_id in self._requests:
            raise InvalidRequest(f"request id {request_id!r} is already in flight")
        seq = Sequence(request_id=request_id, kind=kind, token_ids=list(prompt_ids),
                       num_prompt_tokens=len(prompt_ids), params=params, priority=priority,
                       score_from=score_from)
        state = RequestState(request_id=request_id, kind=kind, params=params,
                             prompt_ids=list(prompt_ids), queue=asyncio.Queue(),
                             times=RequestTimes(arrival=time.monotonic()), sequences=[seq])
        try:
            self.scheduler.add(seq)
        except QueueFull:
            self.num_rejected += 1
            raise
        self._requests[request_id] = state
        self._wake.set()
        return RequestStream(self, state)

    def _validate(self, prompt_ids: list[int], params: SamplingParams, kind: RequestKind) -> None:
        cfg = self.model_config
        is_lm = cfg.task is Task.CAUSAL_LM
        if (kind is RequestKind.CLASSIFY) == is_lm:
            need = "a classification" if kind is RequestKind.CLASSIFY else "a language"
            raise InvalidRequest(f"model {self.name!r} is not {need} model", param="model")
        if not prompt_ids:
            raise InvalidRequest("the prompt is empty (it encodes to no tokens)", param="prompt")
        if min(prompt_ids) < 0 or max(prompt_ids) >= cfg.vocab_size:
            raise InvalidRequest(f"token ids must be in [0, {cfg.vocab_size})", param="prompt")
        # PREDICT may ask for the whole distribution; the API bounds it by its own limit.
        top_bound = cfg.vocab_size if kind is RequestKind.PREDICT else self.config.max_top_logprobs
        params.validate(cfg.vocab_size, top_bound)
        generated = params.max_tokens if kind is RequestKind.GENERATE else 0
        total = len(prompt_ids) + generated
        if total > self.max_model_len:
            param = "max_tokens" if len(prompt_ids) < self.max_model_len else "prompt"
            raise InvalidRequest(
                f"prompt ({len(prompt_ids)} tokens) + max_tokens ({generated}) = {total} "
                f"exceeds the model's context of {self.max_model_len} tokens", param=param)
        if -(-total // self.blocks.block_size) > self.blocks.num_blocks:
            raise InvalidRequest(f"request needs {total} tokens of KV cache; the cache holds "
                                 f"{self.blocks.num_blocks * self.blocks.block_size}",
                                 param="max_tokens")
        if params.n > self.config.scheduler.max_num_seqs:
            raise InvalidRequest(f"n must be <= {self.config.scheduler.max_num_seqs}", param="n")

    def abort(self, request_id: str) -> None:
        """Cancel a request; its blocks are returned before the next step."""
        if request_id in self._requests:
            self._aborts.add(request_id)
            self._wake.set()

    def _apply_aborts(self) -> None:
        while self._aborts:
            request_id = self._aborts.pop()
            if request_id in self._requests:
                self._fail(request_id, RequestCancelled("request aborted"), reason="abort")

    def _fail(self, request_id: str, error: BaseException, reason: str = "error") -> None:
        state = self._requests.pop(request_id, None)
        if state is None:
            return
        for seq in state.sequences:
            if not seq.is_finished:
                self.scheduler.finish(seq, reason)
        state.finished = True
        state.finish_reasons.append(reason)
        state.times.finished = time.monotonic()
        state.queue.put_nowait(error)
        self._notify_finished(state)

    def _notify_finished(self, state: RequestState) -> None:
        for observer in self.finish_observers:
            try:
                observer(state)
            except Exception:  # an observer must never break the engine
                log.exception("finish observer failed")

    # ------------------------------------------------------------------ the loop

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._apply_aborts()
            if not self.scheduler.has_work():
                self._wake.clear()
                await self._wake.wait()
                continue
            preemptions_before = self.scheduler.num_preemptions
            out = self.scheduler.schedule()
            if out.is_empty:
                self._unschedulable()
                await asyncio.sleep(0.001)
                continue
            started = time.monotonic()
            self._generated_this_step = 0
            try:
                result = await loop.run_in_executor(self._executor, self._execute, out)
                self.scheduler.step_done(out)
                self._postprocess(out, result)
            except Exception as exc:
                self._step_failed(out, exc)
                continue
            self._consecutive_failures = 0
            self._observe_step(out, time.monotonic() - started,
                               self.scheduler.num_preemptions - preemptions_before)

    def _execute(self, out: SchedulerOutput) -> RunnerOutput:
        if self.fault_hook is not None:
            self.fault_hook(out)
        return self.runner.execute(out)

    def _unschedulable(self) -> None:
        # Nothing could run: with nothing running, the head of the queue cannot fit even
        # in an empty cache. Validation prevents this; fail it rather than spin forever.
        if not self.scheduler.running and self.scheduler.waiting:
            head = self.scheduler.waiting[0]
            self._fail(head.request_id, InvalidRequest("request does not fit in the KV cache"))

    def _step_failed(self, out: SchedulerOutput, exc: Exception) -> None:
        self._consecutive_failures += 1
        log.error("engine %s: step failed (%d in a row): %r", self.name,
                  self._consecutive_failures, exc, exc_info=exc)
        message = f"inference step failed: {type(exc).__name__}: {exc}"
        for request_id in {item.seq.request_id for item in out.scheduled}:
            self._fail(request_id, StepFailed(message))
        if self._consecutive_failures >= self.config.max_consecutive_failures:
            self.dead_reason = (f"{self._consecutive_failures} consecutive inference steps "
                                f"failed; last: {type(exc).__name__}: {exc}")
            log.critical("engine %s is dead: %s", self.name, self.dead_reason)
            self._died()

    def _observe_step(self, out: SchedulerOutput, seconds: float, preemptions: int) -> None:
        decodes = sum(1 for i in out.scheduled if i.num_new_tokens == 1
                      and i.start >= i.seq.num_prompt_tokens)
        stats = StepStats(
            num_seqs=len(out.scheduled),
            num_tokens=out.num_batched_tokens,
            num_prefill_tokens=sum(i.num_new_tokens for i in out.scheduled
                                   if i.start < i.seq.num_prompt_tokens),
            num_decode_seqs=decodes,
            seconds=seconds,
            preemptions=preemptions,
            generated_tokens=self._generated_this_step,
        )
        for observer in self.step_observers:
            try:
                observer(stats)
            except Exception:
                log.exception("step observer failed")

    # ------------------------------------------------------------------ postprocess

    def _postprocess(self, out: SchedulerOutput, result: RunnerOutput) -> None:
        now = time.monotonic()
        to_sample: list[tuple[RequestState, ScheduledSeq]] = []
        for item in out.scheduled:
            seq = item.seq
            state = self._requests.get(seq.request_id)
            if state is None or seq.status is not SequenceStatus.RUNNING:
                continue
            if state.times.first_scheduled is None:
                state.times.first_scheduled = now
            if seq.kind is RequestKind.SCORE:
                state.score_logprobs.update(result.score_logprobs.get(seq.seq_id, {}))
            if not item.completes_prefill:
                continue
            if seq.kind is RequestKind.GENERATE:
                to_sample.append((state, item))
            else:
                self._finish_prefill_only(state, seq, result)
        if to_sample:
            self._sample_and_emit(to_sample, result, now)

    def _finish_prefill_only(self, state: RequestState, seq: Sequence,
                             result: RunnerOutput) -> None:
        output = RequestOutput(request_id=state.request_id, prompt_tokens=len(state.prompt_ids),
                               finished=True, cached_tokens=seq.num_cached_hit,
                               times=state.times)
        if seq.kind is RequestKind.CLASSIFY:
            output.class_scores = result.class_scores[seq.seq_id]
        elif seq.kind is RequestKind.PREDICT:
            assert result.logits is not None
            output.distribution = next_token_distribution(
                result.logits[result.rows[seq.seq_id]], state.params)
        else:
            start = seq.score_from or 1
            output.score_logprobs = [state.score_logprobs[p] for p in range(start, len(seq))]
        self.scheduler.finish(seq, "stop")
        self._complete(state, output, "stop")

    def _complete(self, state: RequestState, output: RequestOutput, reason: str) -> None:
        state.finished = True
        state.finish_reasons.append(reason)
        state.times.finished = time.monotonic()
        self._requests.pop(state.request_id, None)
        state.queue.put_nowait(output)
        self._notify_finished(state)

    def _generator(self, state: RequestState, index: int) -> torch.Generator:
        if index not in state.generators:
            seed = state.params.seed
            if seed is None:
                seed = random.getrandbits(63)
            state.generators[index] = torch.Generator().manual_seed(seed + index)
        return state.generators[index]

    def _sample_rows(self, batch: list[tuple[RequestState, ScheduledSeq]], result: RunnerOutput
                     ) -> tuple[list[SampleRow], list[tuple[RequestState, Sequence, int]]]:
        rows: list[SampleRow] = []
        owners: list[tuple[RequestState, Sequence, int]] = []
        for state, item in batch:
            seq = item.seq
            p = state.params
            fork = p.n > 1 and not state.forked and seq.index == 0
            banned: tuple[int, ...] = ()
            if seq.num_output_tokens < p.min_tokens:
                banned = (*(() if p.ignore_eos else self.eos_ids), *p.stop_token_ids)
            for index in range(p.n) if fork else [seq.index]:
                rows.append(SampleRow(
                    logits_index=result.rows[seq.seq_id], params=p,
                    prompt_ids=state.prompt_ids, output_ids=seq.output_ids, banned_ids=banned,
                    generator=None if p.greedy else self._generator(state, index)))
                owners.append((state, seq, index))
        return rows, owners

    def _sample_and_emit(self, batch: list[tuple[RequestState, ScheduledSeq]],
                         result: RunnerOutput, now: float) -> None:
        assert result.logits is not None
        rows, owners = self._sample_rows(batch, result)
        sampled = sample_batch(result.logits, rows)
        outputs: dict[str, RequestOutput] = {}
        for (state, seq, index), choice in zip(owners, sampled, strict=True):
            if index != seq.index:  # n > 1: a new sibling forked from the parent's prompt
                seq = self._fork(state, seq, index)
            output = outputs.setdefault(state.request_id, RequestOutput(
                request_id=state.request_id, prompt_tokens=len(state.prompt_ids),
                cached_tokens=state.sequences[0].num_cached_hit, times=state.times))
            output.completions.append(self._append_token(state, seq, choice.token_id,
                                                         choice.logprob))
            if state.times.first_token is None:
                state.times.first_token = now
            elif index == 0 and state.times.last_token is not None:
                state.times.inter_token.append(now - state.times.last_token)
            if index == 0:
                state.times.last_token = now
        for state, item in batch:
            if item.seq.params.n > 1 and item.seq.index == 0:
                state.forked = True
        for request_id, output in outputs.items():
            state = self._requests[request_id]
            if all(s.is_finished for s in state.sequences) and len(state.sequences) == (
                    state.params.n):
                output.finished = True
                self._complete(state, output, state.finish_reasons[-1] if state.finish_reasons
                               else "stop")
            else:
                state.queue.put_nowait(output)

    def _fork(self, state: RequestState, parent: Sequence, index: int) -> Sequence:
        child = Sequence(request_id=parent.request_id, kind=parent.kind,
                         token_ids=list(state.prompt_ids), num_prompt_tokens=len(state.prompt_ids),
                         params=parent.params, index=index, priority=parent.priority,
                         arrival=parent.arrival)
        self.blocks.fork(parent, child)
        self.scheduler.add_running(child)
        state.sequences.append(child)
        return child

    def _append_token(self, state: RequestState, seq: Sequence, token: int,
                      logprob: TokenLogprob | None) -> CompletionDelta:
        p = state.params
        seq.token_ids.append(token)
        state.generated_tokens += 1
        self._generated_this_step += 1
        if seq.index not in state.texts:
            detok = IncrementalDetokenizer(self.tokenizer, state.prompt_ids,
                                           skip_special_tokens=p.skip_special_tokens)
            state.texts[seq.index] = StopText(detok, p.stop)
        text_state = state.texts[seq.index]
        reason: str | None = None
        is_stop_token = token in p.stop_token_ids or (not p.ignore_eos and token in self.eos_ids)
        if is_stop_token:
            text, reason = "", "stop"
        else:
            text, hit = text_state.push([token])
            if hit:
                reason = "stop"
        if reason is None and (seq.num_output_tokens >= p.max_tokens
                               or len(seq.token_ids) >= self.max_model_len):
            reason = "length"
        if reason is not None:
            if reason == "length" or is_stop_token:
                text += text_state.finish()
            self.scheduler.finish(seq, reason)
            state.finish_reasons.append(reason)
        return CompletionDelta(index=seq.index, token_ids=[token], text=text,
                               logprobs=[logprob] if logprob is not None else None,
                               finish_reason=reason)

    # ------------------------------------------------------------------ convenience

    async def generate(self, prompt_ids: list[int], params: SamplingParams,
                       **kwargs: object) -> RequestOutput:
        """Run a request to completion and merge its outputs (used by tests and CLI)."""
        stream = self.submit(prompt_ids, params, **kwargs)  # type: ignore[arg-type]
        return merge_outputs(await stream.collect())


def next_token_distribution(logits: torch.Tensor, params: SamplingParams
                            ) -> list[tuple[int, float, float]]:
    """The top-k of softmax(logits / temperature): [(token_id, prob, logprob)]."""
    # Tiny temperatures would overflow the division; below 1e-4 the result is one-hot anyway.
    temperature = max(params.temperature, 1e-4) if params.temperature > 0 else 1.0
    logprobs = torch.log_softmax(logits.float() / temperature, dim=-1)
    k = min(params.top_logprobs or 1, logprobs.shape[-1])
    values, ids = torch.topk(logprobs, k)
    return [(int(i), float(v.exp()), float(v)) for i, v in zip(ids, values, strict=True)]


__all__ = ["Engine", "EngineConfig", "EngineError", "RequestStream", "StepStats"]
