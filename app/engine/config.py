"""EngineConfig: how an engine sizes its KV cache, schedules and prepares its model. A
frozen value built from the server's settings (app.config) and never changed."""

from __future__ import annotations

from dataclasses import dataclass, field

from app.engine.scheduler import SchedulerConfig
from app.engine.speculative import SpeculativeConfig


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
    speculative: SpeculativeConfig | None = None  # speculative decoding (off: None)
    shutdown_timeout: float = 30.0  # how long shutdown() waits for a step in flight
    max_loras: int = 0  # LoRA adapters resident at once and per step (0: LoRA off)
    max_lora_rank: int = 16  # largest adapter rank accepted
