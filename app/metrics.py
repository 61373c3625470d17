"""Every Prometheus metric of the service, defined once.

Names follow Prometheus conventions (base units, `_total` counters, `_seconds`). Counters
and histograms are recorded as things happen (engine observers, HTTP middleware); gauges
are read from the engines at scrape time, so they can never drift from the truth.

With `compat="vllm"` the same figures are also exposed under vLLM's names with a
`model_name` label, so existing vLLM dashboards and autoscaling rules work unchanged.
Nothing is registered globally: each app builds its own registry.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3,
                   0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0)
TOKEN_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075,
                         0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0)
TOKEN_COUNT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384,
                       32768)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256)


@dataclass(frozen=True)
class EngineSnapshot:
    """What the gauges read from one engine at scrape time."""

    model: str
    running: int
    waiting: int
    blocks_total: int
    blocks_used: int
    rejections: int
    preemptions: int
    prefix_queries: int
    prefix_hits: int
    dtype: str
    device: str
    architecture: str
    alive: bool
    quantization: str = "none"
    block_size: int = 16
    prefix_caching: bool = True
    spec_drafts: int = 0
    spec_draft_tokens: int = 0
    spec_accepted_tokens: int = 0
    spec_accepted_per_position: tuple[int, ...] = ()
    # LoRA (max_loras 0: off for this model): the adapters of running and of waiting
    # requests, when the step loop last ran, and per loaded adapter (name, running
    # requests, waiting requests, resident in a slot)
    max_loras: int = 0
    running_adapters: tuple[str, ...] = ()
    waiting_adapters: tuple[str, ...] = ()
    lora_updated: float = 0.0
    adapters: tuple[tuple[str, int, int, bool], ...] = ()


class _Pair:
    """One figure recorded under our name and, with vLLM compatibility, vLLM's."""

    def __init__(self, ours: Any, theirs: Any | None) -> None:
        self.ours, self.theirs = ours, theirs

    def inc(self, model: str, amount: float = 1, **labels: str) -> None:
        if amount <= 0:
            return
        self.ours.labels(model=model, **labels).inc(amount)
        if self.theirs is not None:
            self.theirs.labels(model_name=model, **_vllm_labels(labels)).inc(amount)

    def observe(self, model: str, value: float, **labels: str) -> None:
        self.ours.labels(model=model, **labels).observe(value)
        if self.theirs is not None:
            self.theirs.labels(model_name=model, **_vllm_labels(labels)).observe(value)


def _vllm_labels(labels: dict[str, str]) -> dict[str, str]:
    return {("finished_reason" if k == "finish_reason" else k): v for k, v in labels.items()}


class Metrics:
    def __init__(self, compat: str = "none", version: str = "0") -> None:
        # Counters and histograms, updated as things happen; the engine's gauges, read at
        # scrape time; and both, which is what /metrics exposes.
        self.instrumented = CollectorRegistry(auto_describe=True)
        self.live = CollectorRegistry(auto_describe=True)
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(self.instrumented)
        self.registry.register(self.live)
        self._cached: tuple[float, bytes] | None = None
        self.version = version
        self.vllm = compat == "vllm"
        r = self.instrumented

        def counter(name: str, doc: str, labels: tuple[str, ...] = (),
                    vllm: str | None = None) -> _Pair:
            ours = Counter(name, doc, ("model", *labels), registry=r)
            theirs = None
            if self.vllm and vllm:
                theirs = Counter(vllm, doc, ("model_name", *(_vllm_labels(
                    dict.fromkeys(labels, "")).keys())), registry=r)
            return _Pair(ours, theirs)

        def histogram(name: str, doc: str, buckets: tuple[float, ...],
                      vllm: str | None = None) -> _Pair:
            ours = Histogram(name, doc, ("model",), buckets=buckets, registry=r)
            theirs = None
            if self.vllm and vllm:
                theirs = Histogram(vllm, doc, ("model_name",), buckets=buckets, registry=r)
            return _Pair(ours, theirs)

        # --- counters
        self.prompt_tokens = counter("llm_prompt_tokens_total", "Prompt tokens processed",
                                     vllm="vllm:prompt_tokens")
        self.generation_tokens = counter("llm_generation_tokens_total", "Tokens generated",
                                         vllm="vllm:generation_tokens")
        self.requests_finished = counter(
            "llm_requests_finished_total", "Engine requests finished, by finish reason",
            ("finish_reason",), vllm="vllm:request_success")
        self.tool_call_requests = counter(
            "llm_tool_call_requests_total", "Chat requests that offered tools, by tool_choice "
            "(none, auto, required; a named function counts as required)", ("tool_choice",))
        self.tool_call_parse_failures = counter(
            "llm_tool_call_parse_failures_total", "Tool calls a model began (its family's "
            "marker) that did not parse: returned as content instead")
        self.aborts = counter("llm_request_aborts_total",
                              "Requests aborted (client went away or cancelled)")
        self.errors = Counter("llm_errors_total", "Error responses, by error type",
                              ("type",), registry=r)
        self.http_requests = Counter("llm_http_requests_total", "HTTP requests",
                                     ("endpoint", "method", "status"), registry=r)
        # /v1/responses' store (app/api/response_store.py), set as it changes
        self.responses_stored = Gauge("llm_responses_stored", "/v1/responses answers held "
                                      "for GET and previous_response_id", registry=r)
        self.responses_stored_bytes = Gauge("llm_responses_stored_bytes", "Their size, as "
                                            "JSON", registry=r)
        # --- histograms
        self.e2e = histogram("llm_e2e_request_latency_seconds",
                             "Arrival to last token, per engine request", LATENCY_BUCKETS,
                             vllm="vllm:e2e_request_latency_seconds")
        self.ttft = histogram("llm_time_to_first_token_seconds",
                              "Arrival to first generated token", LATENCY_BUCKETS,
                              vllm="vllm:time_to_first_token_seconds")
        self.itl = histogram("llm_inter_token_latency_seconds",
                             "Time between the steps that give a sequence tokens (a "
                             "step of several tokens, multi-step or speculative, is one)",
                             TOKEN_LATENCY_BUCKETS, vllm="vllm:inter_token_latency_seconds")
        self.tpot = histogram("llm_time_per_output_token_seconds",
                              "(last token - first token) / (generated - 1), per "
                              "request",
                              TOKEN_LATENCY_BUCKETS, vllm="vllm:time_per_output_token_seconds")
        self.queue_time = histogram("llm_request_queue_time_seconds",
                                    "Arrival to first scheduled", LATENCY_BUCKETS,
                                    vllm="vllm:request_queue_time_seconds")
        self.prefill_time = histogram("llm_request_prefill_time_seconds",
                                      "First scheduled to first token (or result)",
                                      LATENCY_BUCKETS, vllm="vllm:request_prefill_time_seconds")
        self.decode_time = histogram("llm_request_decode_time_seconds",
                                     "First token to last token", LATENCY_BUCKETS,
                                     vllm="vllm:request_decode_time_seconds")
        self.prompt_len = histogram("llm_request_prompt_tokens", "Prompt length in tokens",
                                    TOKEN_COUNT_BUCKETS, vllm="vllm:request_prompt_tokens")
        self.generation_len = histogram("llm_request_generation_tokens",
                                        "Generated tokens per request", TOKEN_COUNT_BUCKETS,
                                        vllm="vllm:request_generation_tokens")
        self.batch_seqs = histogram("llm_batch_size_sequences", "Sequences per engine step",
                                    BATCH_BUCKETS)
        self.batch_tokens = histogram("llm_batch_size_tokens", "Tokens per engine step",
                                      TOKEN_COUNT_BUCKETS)
        self.step_time = histogram("llm_engine_step_seconds", "Duration of one engine step",
                                   LATENCY_BUCKETS)
        self.http_duration = Histogram("llm_http_request_duration_seconds",
                                       "HTTP request duration (to the last body byte)",
                                       ("endpoint", "method"), buckets=LATENCY_BUCKETS,
                                       registry=r)
        self._snapshots: Callable[[], Iterable[EngineSnapshot]] = list

    def watch(self, snapshots: Callable[[], Iterable[EngineSnapshot]]) -> None:
        """Gauges read engine state through this function at scrape time."""
        self._snapshots = snapshots
        self.live.register(_EngineGauges(self))

    def exposition(self, max_age: float = 0.0) -> bytes:
        """The text exposition. With max_age > 0 the counters and histograms (about 3 ms of
        formatting for a few hundred series, on the event loop) are formatted at most once
        per max_age seconds and reused in between; the engine's gauges (queue, running, KV
        cache, info series: what load-aware routers read) are always read fresh."""
        if max_age <= 0:
            return generate_latest(self.registry)
        now = time.monotonic()
        if self._cached is None or now - self._cached[0] >= max_age:
            self._cached = (now, generate_latest(self.instrumented))
        return self._cached[1] + generate_latest(self.live)


def _lora_labels(s: EngineSnapshot) -> list[str]:
    """vllm:lora_requests_info's max_lora, running and waiting adapters (comma-joined)."""
    return [str(s.max_loras), ",".join(s.running_adapters), ",".join(s.waiting_adapters)]


def _lora_gauges(s: EngineSnapshot,
                 gauge: Callable[[str, str, tuple[str, ...]], GaugeMetricFamily]) -> None:
    """Our own LoRA series: vLLM's info series under our prefix, and per adapter its
    requests and whether its weights are resident (a label per adapter, not a list)."""
    gauge("llm_lora_requests_info", "LoRA adapters of running and waiting requests "
          "(comma-joined; the value is when the step loop last ran, as in vLLM's)",
          ("model", "max_lora", "running_lora_adapters", "waiting_lora_adapters")
          ).add_metric([s.model, *_lora_labels(s)], s.lora_updated)
    labels = ("model", "adapter")
    for name, running, waiting, resident in s.adapters:
        gauge("llm_lora_requests_running", "Requests in the running batch, per LoRA "
              "adapter", labels).add_metric([s.model, name], running)
        gauge("llm_lora_requests_waiting", "Requests queued for admission, per LoRA "
              "adapter", labels).add_metric([s.model, name], waiting)
        gauge("llm_lora_adapter_resident", "1 while the adapter's weights sit in one of "
              "the --max-loras slots", labels).add_metric([s.model, name],
                                                         1.0 if resident else 0.0)


class _EngineGauges(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        m = self.metrics
        snaps = list(m._snapshots())
        families: dict[str, GaugeMetricFamily] = {}
        counters: dict[str, CounterMetricFamily] = {}

        def counter(name: str, doc: str, label: str = "model") -> CounterMetricFamily:
            if name not in counters:
                counters[name] = CounterMetricFamily(name, doc, labels=[label])
            return counters[name]

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ("model",)
                  ) -> GaugeMetricFamily:
            if name not in families:
                families[name] = GaugeMetricFamily(name, doc, labels=list(labels))
            return families[name]

        for s in snaps:
            usage = s.blocks_used / s.blocks_total if s.blocks_total else 0.0
            gauge("llm_requests_running", "Requests in the running batch").add_metric(
                [s.model], s.running)
            gauge("llm_requests_waiting", "Requests queued for admission").add_metric(
                [s.model], s.waiting)
            gauge("llm_kv_cache_usage_ratio", "Fraction of KV-cache blocks in use").add_metric(
                [s.model], usage)
            gauge("llm_kv_cache_blocks", "KV-cache blocks in total").add_metric(
                [s.model], s.blocks_total)
            gauge("llm_kv_cache_blocks_used", "KV-cache blocks held by requests").add_metric(
                [s.model], s.blocks_used)
            gauge("llm_engine_alive", "1 while the model's engine runs").add_metric(
                [s.model], 1.0 if s.alive else 0.0)
            gauge("llm_model_info", "Served model (value 1)",
                  ("model", "architecture", "dtype", "device", "quantization",
                   "version")).add_metric(
                [s.model, s.architecture, s.dtype, s.device, s.quantization, m.version], 1.0)
            # Counters the engine keeps itself, read here so they are always exact.
            owned: list[tuple[str, str, int, str | None]] = [
                ("llm_admission_rejections", "Requests refused with 429 (queue full)",
                 s.rejections, None),
                ("llm_preemptions", "Sequences preempted (blocks freed, recomputed later)",
                 s.preemptions, "vllm:num_preemptions"),
                ("llm_prefix_cache_queries_tokens", "Prompt tokens looked up in the prefix cache",
                 s.prefix_queries, "vllm:prefix_cache_queries"),
                ("llm_prefix_cache_hits_tokens", "Prompt tokens served from the prefix cache",
                 s.prefix_hits, "vllm:prefix_cache_hits"),
            ]
            if s.spec_drafts or s.spec_accepted_per_position:  # speculating models only
                owned += [
                    ("llm_spec_decode_drafts", "Speculative proposals verified",
                     s.spec_drafts, "vllm:spec_decode_num_drafts"),
                    ("llm_spec_decode_draft_tokens", "Guessed tokens scored",
                     s.spec_draft_tokens, "vllm:spec_decode_num_draft_tokens"),
                    ("llm_spec_decode_accepted_tokens", "Guessed tokens kept",
                     s.spec_accepted_tokens, "vllm:spec_decode_num_accepted_tokens")]
                per_position = [("llm_spec_decode_accepted_tokens_per_pos", "model")]
                if m.vllm:
                    per_position.append(
                        ("vllm:spec_decode_num_accepted_tokens_per_pos", "model_name"))
                for name, label in per_position:
                    family = CounterMetricFamily(
                        name, "Guessed tokens kept, by position in the proposal",
                        labels=[label, "position"])
                    for position, kept in enumerate(s.spec_accepted_per_position):
                        family.add_metric([s.model, str(position)], kept)
                    counters[name] = family
            for name, doc, value, vllm_name in owned:
                counter(name, doc).add_metric([s.model], value)
                if m.vllm and vllm_name:
                    counter(vllm_name, doc, "model_name").add_metric([s.model], value)
            if m.vllm:
                vllm_gauges: tuple[tuple[str, float], ...] = (
                    ("vllm:num_requests_running", s.running),
                    ("vllm:num_requests_waiting", s.waiting),
                    ("vllm:kv_cache_usage_perc", usage),
                    ("vllm:gpu_cache_usage_perc", usage))
                for gauge_name, gauge_value in vllm_gauges:
                    gauge(gauge_name, f"vLLM-compatible {gauge_name}", ("model_name",)
                          ).add_metric([s.model], gauge_value)
                # Info series in vLLM's shape (value 1; the figures are labels), which the
                # Gateway API Inference Extension's endpoint picker reads: the KV cache's
                # size, and the LoRA adapters of running and waiting requests (comma-
                # joined names; the value is when the step loop last ran, as vLLM sets
                # it at each step: the picker keeps the newest series).
                gauge("vllm:cache_config_info", "vLLM-compatible KV cache configuration",
                      ("model_name", "block_size", "num_gpu_blocks", "enable_prefix_caching",
                       "cache_dtype")).add_metric(
                    [s.model, str(s.block_size), str(s.blocks_total),
                     str(s.prefix_caching), s.dtype], 1.0)
                gauge("vllm:lora_requests_info", "vLLM-compatible LoRA adapters in use",
                      ("model_name", "max_lora", "running_lora_adapters",
                       "waiting_lora_adapters")).add_metric(
                    [s.model, *_lora_labels(s)], s.lora_updated or time.time())
            if s.max_loras:
                _lora_gauges(s, gauge)
        yield from families.values()
        yield from counters.values()
