"""What the engine reports about itself: per-step figures (StepStats, handed to step
observers) and a point-in-time snapshot (EngineStats, read by probes, /v1/info and the
metrics gauges). Plain values: readers never touch the scheduler or block manager."""

from __future__ import annotations

from dataclasses import dataclass

from app.engine.scheduler import SchedulerOutput


@dataclass(frozen=True)
class StepStats:
    """What one engine iteration did; handed to step observers (metrics)."""

    num_seqs: int
    num_tokens: int
    num_prefill_tokens: int
    num_decode_seqs: int
    seconds: float
    preemptions: int
    generated_tokens: int

    @classmethod
    def of(cls, out: SchedulerOutput, seconds: float, generated_tokens: int) -> StepStats:
        return cls(
            num_seqs=len(out.scheduled),
            num_tokens=out.num_batched_tokens,
            num_prefill_tokens=sum(i.num_new_tokens for i in out.scheduled if i.is_prefill),
            num_decode_seqs=sum(1 for i in out.scheduled if not i.is_prefill),
            seconds=seconds,
            preemptions=out.num_preempted,
            generated_tokens=generated_tokens,
        )


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of the engine for probes, /v1/info and the metrics gauges."""

    model: str
    running_requests: int  # requests with a sequence in the running batch
    waiting_requests: int  # requests in flight with nothing running yet
    running_seqs: int
    waiting_seqs: int
    kv_blocks_total: int
    kv_blocks_used: int
    kv_blocks_cached: int
    block_size: int
    rejections: int  # admissions refused as transient overload (429)
    preemptions: int
    prefix_queries: int  # prompt tokens looked up in the prefix cache, at first admission
    prefix_hits: int  # of which served from the cache
    alive: bool
    accepting: bool
    dead_reason: str | None
    compile: str  # how the forward pass runs (app.modeling.compile), and why
    weights: str  # whether weights are prepacked (app.modeling.packed), and why
    quantization: str  # none, or the format and the kernels chosen (app.modeling.quantized_*)
    speculative: str = "off"  # speculative decoding (app/engine/speculative.py), or off
    spec_drafts: int = 0  # proposals verified
    spec_draft_tokens: int = 0  # guessed tokens scored
    spec_accepted_tokens: int = 0  # of which kept
    spec_accepted_per_position: tuple[int, ...] = ()  # kept, by position in the proposal
    max_loras: int = 0  # LoRA adapters resident at once, and per step (0: LoRA off)
    running_adapters: tuple[str, ...] = ()  # adapters of requests in the running batch
    waiting_adapters: tuple[str, ...] = ()  # adapters of requests with nothing running
    lora_updated: float = 0.0  # wall time the step loop last ran (vLLM's info value)
