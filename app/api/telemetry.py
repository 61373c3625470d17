"""Wiring between what happens and what is measured: engine observers feed the metrics,
an ASGI middleware counts and times HTTP requests and writes one log line per request."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from app.api.middleware import ASGIApp, Message, Receive, Scope, Send
from app.api.state import ServerState
from app.engine.engine import Engine
from app.engine.output import RequestSummary
from app.engine.stats import StepStats
from app.metrics import EngineSnapshot, Metrics
from app.tokenizer import Tokenizer

log = logging.getLogger("app.request")


def attach(metrics: Metrics, engine: Engine) -> None:
    """Record every step and every finished request of `engine`."""
    model = engine.name

    def on_step(stats: StepStats) -> None:
        metrics.batch_seqs.observe(model, stats.num_seqs)
        metrics.batch_tokens.observe(model, stats.num_tokens)
        metrics.step_time.observe(model, stats.seconds)
        metrics.generation_tokens.inc(model, stats.generated_tokens)

    def on_finished(request: RequestSummary) -> None:
        reason = request.finish_reason or "stop"
        t = request.times
        metrics.prompt_tokens.inc(model, request.prompt_tokens)
        metrics.requests_finished.inc(model, finish_reason=reason)
        if reason == "abort":
            metrics.aborts.inc(model)
        metrics.prompt_len.observe(model, request.prompt_tokens)
        if t.finished is not None:
            metrics.e2e.observe(model, t.finished - t.arrival)
        if t.first_scheduled is not None:
            metrics.queue_time.observe(model, t.first_scheduled - t.arrival)
            end_of_prefill = t.first_token or t.finished
            if end_of_prefill is not None:
                metrics.prefill_time.observe(model, end_of_prefill - t.first_scheduled)
        if t.first_token is None:
            return
        metrics.generation_len.observe(model, request.completion_tokens)
        metrics.ttft.observe(model, t.first_token - t.arrival)
        for gap in t.inter_token:
            metrics.itl.observe(model, gap)
        if t.last_token is not None:
            metrics.decode_time.observe(model, t.last_token - t.first_token)
            tpot = t.time_per_output_token()
            if tpot is not None:
                metrics.tpot.observe(model, tpot)

    engine.step_observers.append(on_step)
    engine.finish_observers.append(on_finished)


def snapshots(state: ServerState) -> Iterable[EngineSnapshot]:
    for name, m in state.models.items():
        e = m.engine.stats()
        yield EngineSnapshot(
            model=name, running=e.running_requests, waiting=e.waiting_requests,
            blocks_total=e.kv_blocks_total, blocks_used=e.kv_blocks_used,
            rejections=e.rejections, preemptions=e.preemptions,
            prefix_queries=e.prefix_queries, prefix_hits=e.prefix_hits,
            spec_drafts=e.spec_drafts, spec_draft_tokens=e.spec_draft_tokens,
            spec_accepted_tokens=e.spec_accepted_tokens,
            spec_accepted_per_position=e.spec_accepted_per_position,
            dtype=str(m.loaded.dtype).removeprefix("torch."), device=str(m.loaded.device),
            architecture=m.loaded.config.architecture, alive=e.alive,
            quantization=m.loaded.model.quantization, block_size=e.block_size,
            prefix_caching=state.settings.enable_prefix_caching, max_loras=e.max_loras,
            running_adapters=e.running_adapters, waiting_adapters=e.waiting_adapters,
            lora_updated=e.lora_updated, adapters=_adapter_rows(m.engine))


def _adapter_rows(engine: Engine) -> tuple[tuple[str, int, int, bool], ...]:
    """(name, running requests, waiting requests, resident) per loaded adapter."""
    if not engine.config.max_loras:
        return ()
    counts = engine.adapter_requests()
    resident = set(engine.resident_adapters())
    return tuple((a.name, *counts.get(a.name, (0, 0)), a.name in resident)
                 for a in engine.adapters.entries())


def _tokenizer(scope: Scope, model: str) -> Tokenizer | None:
    server: ServerState | None = getattr(getattr(scope.get("app"), "state", None), "server",
                                         None)
    served = server.models.get(model) if server is not None else None
    return served.tokenizer if served is not None else None


def _endpoint(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    # Unmatched paths share one label, so random 404 URLs cannot explode cardinality.
    return str(path) if path else "unmatched"


class ObservabilityMiddleware:
    """Per HTTP request: the request counter and duration histogram, and one structured
    log line at completion (ids, model, endpoint, status, tokens, timings, client)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, log_prompts: bool) -> None:
        self.app = app
        self.metrics = metrics
        self.log_prompts = log_prompts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = {"code": 500}
        logged = {"done": False}

        async def send_and_watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                self._finish(scope, status["code"], started)
                logged["done"] = True

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            if not logged["done"]:  # the client left before the body ended
                self._finish(scope, 499 if status["code"] < 400 else status["code"], started)

    def _finish(self, scope: Scope, status: int, started: float) -> None:
        seconds = time.monotonic() - started
        endpoint, method = _endpoint(scope), str(scope.get("method", ""))
        self.metrics.http_requests.labels(endpoint=endpoint, method=method,
                                          status=str(status)).inc()
        if endpoint in ("/metrics", "/livez", "/readyz", "/startupz", "/health"):
            return  # probes and scrapes are counted, not logged: they would drown the log
        self.metrics.http_duration.labels(endpoint=endpoint, method=method).observe(seconds)
        state: dict[str, Any] = scope.get("state", {})
        entry: dict[str, Any] = {
            "endpoint": endpoint, "method": method, "status": status,
            "total_ms": round(1000 * seconds, 1),
            "client": (scope.get("client") or ("-",))[0],
        }
        streams = state.get("streams") or []
        if streams:
            summaries = [s.summary() for s in streams]
            entry["model"] = streams[0].model
            if state.get("adapter"):
                entry["adapter"] = state["adapter"]
            entry["prompt_tokens"] = sum(s.prompt_tokens for s in summaries)
            entry["generated_tokens"] = sum(s.completion_tokens for s in summaries)
            entry["finish_reasons"] = sorted({r for s in summaries for r in s.finish_reasons})
            t = summaries[0].times
            if t.first_scheduled is not None:
                entry["queue_ms"] = round(1000 * (t.first_scheduled - t.arrival), 1)
            if t.first_token is not None:
                entry["ttft_ms"] = round(1000 * (t.first_token - t.arrival), 1)
            if self.log_prompts:
                tokenizer = _tokenizer(scope, streams[0].model)
                if tokenizer is not None:
                    entry["prompts"] = [tokenizer.decode(s.prompt_ids) for s in summaries]
        log.info("request", extra=entry)
