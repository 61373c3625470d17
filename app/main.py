"""create_app(settings): the FastAPI application and its lifespan.

Models load in the background after the server starts, so probes can answer while a
large checkpoint loads: /startupz and /readyz say 503 until every model is loaded and its
engine runs. A model that fails to load, or an engine that dies, is fatal: the phase and
reason are reported by the probes and `on_fatal` (set by the serve command) stops the
process with a non-zero exit code so the orchestrator restarts it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import torch
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from prometheus_client import disable_created_metrics

from app import app_version
from app.api import docs, errors
from app.api.errors import ApiError
from app.api.lora_admin import load_adapter
from app.api.middleware import RequestContextMiddleware
from app.api.router import build_router
from app.api.routes import playground
from app.api.state import Phase, ServedModel, ServerState
from app.api.telemetry import ObservabilityMiddleware, attach, snapshots
from app.checkpoint import load_model
from app.config import Settings, draft_path, lora_specs, model_specs
from app.engine.compute import compute_thread
from app.engine.draft_runner import DraftModel
from app.engine.engine import Engine, EngineConfig
from app.engine.errors import EngineError
from app.engine.scheduler import SchedulerConfig
from app.engine.speculative import SpeculativeConfig
from app.kv_event_publisher import KVEventPublisher
from app.metrics import Metrics
from app.modeling.config import Task
from app.modeling.lora import AdapterError
from app.modeling.quant_kernels import offer_integer_kernels
from app.tokenizer import Tokenizer

log = logging.getLogger("app")

DESCRIPTION = """
An LLM inference service: next-token prediction, text generation (streaming),
classification, OpenAI-compatible completions and chat, over a continuously batched,
paged and prefix-cached KV cache. Errors always have the shape
`{"error": {"message", "type", "param", "code"}}`. A browser playground for every
endpoint is at [`/`](/) (unless the server runs with `--no-playground`).
"""


def engine_config(settings: Settings) -> EngineConfig:
    return EngineConfig(
        block_size=settings.block_size,
        num_kv_blocks=settings.num_kv_blocks,
        kv_cache_memory_fraction=settings.kv_cache_memory_fraction,
        max_model_len=settings.max_model_len,
        enable_prefix_caching=settings.enable_prefix_caching,
        max_top_logprobs=settings.max_top_logprobs,
        compile=settings.compile,
        prepack=settings.prepack,
        speculative=(SpeculativeConfig.parse(settings.speculative_config)
                     if settings.speculative_config else None),
        # without --lora or --allow-runtime-lora no adapter can ever run: no LoRA slots,
        # and nothing added to the forward
        max_loras=settings.max_loras if settings.lora_enabled else 0,
        max_lora_rank=settings.max_lora_rank,
        scheduler=SchedulerConfig(
            max_num_seqs=settings.max_num_seqs,
            max_num_batched_tokens=settings.max_num_batched_tokens,
            num_scheduler_steps=settings.num_scheduler_steps,
            max_waiting_requests=settings.max_waiting_requests,
            max_waiting_tokens=settings.max_waiting_tokens,
        ),
    )


async def _load_draft(path: Path, settings: Settings, compute: ThreadPoolExecutor
                      ) -> DraftModel:
    """A speculative draft model, loaded like the served ones (unquantized)."""
    log.info("loading speculative draft model", extra={"path": str(path)})
    loaded = await asyncio.get_running_loop().run_in_executor(
        compute, load_model, path, settings.dtype, settings.device)
    tokenizer = await asyncio.to_thread(Tokenizer.from_dir, path, loaded.eos_token_ids)
    return DraftModel(loaded, tokenizer)


def _set_threads(threads: int) -> None:
    if threads:
        torch.set_num_threads(threads)


async def load_models(state: ServerState, metrics: Metrics, on_fatal: Callable[[str], None],
                      compute: ThreadPoolExecutor,
                      kv_events: KVEventPublisher | None = None) -> None:
    """Load every model on the compute thread (see app.engine.compute), which then runs
    all their steps."""
    settings = state.settings
    loop = asyncio.get_running_loop()
    drafts: dict[Path, DraftModel] = {}  # speculative drafts, loaded once for all models
    try:
        await loop.run_in_executor(compute, _set_threads, settings.threads)
        offer_integer_kernels(settings.integer_kernels)
        for spec in model_specs(settings):
            log.info("loading model", extra={"model": spec.name, "path": str(spec.path)})
            loaded = await loop.run_in_executor(compute, load_model, spec.path, settings.dtype,
                                                settings.device, spec.quantization,
                                                settings.int4_group_size)
            tokenizer = await asyncio.to_thread(Tokenizer.from_dir, spec.path,
                                                loaded.eos_token_ids)
            config = engine_config(settings)
            if loaded.config.task is not Task.CAUSAL_LM:  # a classifier never generates
                config = replace(config, speculative=None)
            draft = None
            if config.speculative is not None and config.speculative.uses_draft_model:
                path, served = draft_path(settings, config.speculative.model or "")
                if served == spec.name:  # the draft itself, also served: plain decoding
                    config = replace(config, speculative=None)
                else:
                    draft = drafts.get(path) or await _load_draft(path, settings, compute)
                    drafts[path] = draft
            engine = Engine(loaded, tokenizer, config, name=spec.name, executor=compute,
                            draft=draft)
            engine.death_observers.append(on_fatal)
            attach(metrics, engine)
            if kv_events is not None:
                kv_events.attach(engine)
            await engine.start()
            state.models[spec.name] = ServedModel(spec.name, spec.path, loaded, tokenizer, engine)
            stats = engine.stats()
            log.info("model ready", extra={"model": spec.name, "dtype": str(loaded.dtype),
                                           "device": str(loaded.device),
                                           "kv_blocks": stats.kv_blocks_total,
                                           "compile": stats.compile, "weights": stats.weights,
                                           "quantization": stats.quantization})
        await load_startup_adapters(state)
    except Exception as exc:
        state.phase = Phase.FAILED
        state.failure = f"{type(exc).__name__}: {exc}"
        log.critical("model loading failed: %s", state.failure)
        on_fatal(state.failure)
        return
    if state.phase is Phase.STARTING:
        state.phase = Phase.READY
        log.info("server ready", extra={"models": list(state.models)})


async def load_startup_adapters(state: ServerState) -> None:
    """The --lora adapters, once every model is loaded; any problem stops the startup,
    the failure naming the flag's entry and what is wrong with it."""
    for spec in lora_specs(state.settings):
        entry = f"--lora {spec.name}={spec.path}"
        try:
            model, _ = await load_adapter(state, spec.name, spec.path, spec.base)
        except ApiError as exc:
            raise ValueError(f"{entry}: {exc.message}") from exc
        except (AdapterError, EngineError) as exc:
            raise ValueError(f"{entry}: {exc}") from exc
        log.info("adapter ready", extra={"adapter": spec.name, "model": model.name,
                                         "path": str(spec.path)})


def create_app(settings: Settings, on_fatal: Callable[[str], None] | None = None) -> FastAPI:
    def fatal(reason: str) -> None:
        if on_fatal is not None:
            on_fatal(reason)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = ServerState(settings=settings, api_keys=settings.api_keys())
        app.state.server = state
        metrics.watch(lambda: snapshots(state))
        compute = compute_thread()
        kv_events = (KVEventPublisher(settings.kv_events_endpoint, settings.kv_events_topic)
                     if settings.kv_events_endpoint else None)
        loader = asyncio.create_task(load_models(state, metrics, fatal, compute, kv_events),
                                     name="load-models")
        try:
            yield
        finally:
            loader.cancel()
            state.phase = Phase.STOPPED
            for model in state.models.values():
                await model.engine.shutdown()
                if model.compiler is not None:  # its compile check's child process
                    await asyncio.to_thread(model.compiler.close)
            compute.shutdown(wait=False, cancel_futures=True)
            if kv_events is not None:
                kv_events.close()

    disable_created_metrics()  # no *_created series: they only add noise to dashboards
    metrics = Metrics(compat=settings.metrics_compat, version=app_version())
    # /docs and /redoc come from app.api.docs, with assets served here (no CDN).
    app = FastAPI(title="LLM inference service", version=app_version(),
                  description=DESCRIPTION, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.metrics = metrics
    errors.install(app)
    docs.install(app)
    app.include_router(build_router(settings))
    if settings.playground:
        playground.install(app)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                           allow_methods=["GET", "POST"], allow_headers=["*"])
    app.add_middleware(ObservabilityMiddleware, metrics=metrics, log_prompts=settings.log_prompts)
    # Outermost: sets the request id that the log line above carries.
    app.add_middleware(RequestContextMiddleware, max_body_bytes=settings.max_body_bytes)
    return app
