"""What the running server holds: its settings, its phase, and the models it serves."""

from __future__ import annotations

import enum
import hashlib
import time
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from app import app_version
from app.api.response_store import ResponseStore
from app.config import Settings
from app.engine.engine import Engine
from app.modeling.config import Task
from app.modeling.loaded import LoadedModel
from app.tokenizer import Tokenizer

if TYPE_CHECKING:
    from app.structured import ConstraintCompiler


class Phase(enum.StrEnum):
    STARTING = "starting"  # loading models
    READY = "ready"
    DRAINING = "draining"  # SIGTERM received: finishing in-flight work, refusing new work
    FAILED = "failed"  # a model failed to load; the process exits non-zero
    STOPPED = "stopped"


@dataclass
class ServedModel:
    name: str
    path: Path
    loaded: LoadedModel
    tokenizer: Tokenizer
    engine: Engine
    created: int = field(default_factory=lambda: int(time.time()))
    # Structured output: constraints compiled against this model's tokenizer (lazily).
    compiler: ConstraintCompiler | None = None
    # A LoRA adapter addressed by its own name: this view of the base model runs every
    # request with `adapter`, and answers under the adapter's name (see for_adapter).
    adapter: str | None = None
    base: ServedModel | None = None

    def for_adapter(self, name: str) -> ServedModel:
        """This model as the adapter `name` serves it: the same engine, tokenizer and
        weights, requests tagged with the adapter, answers naming it."""
        return replace(self, name=name, adapter=name, base=self)

    @property
    def owner(self) -> ServedModel:
        """The served model itself (not an adapter's view): what holds lazily built state."""
        return self.base or self

    @property
    def is_lm(self) -> bool:
        return self.loaded.config.task is Task.CAUSAL_LM

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    @cached_property
    def fingerprint(self) -> str:
        """OpenAI's system_fingerprint: the same while the code, weights, dtype and
        device that produce answers stay the same."""
        cfg = self.loaded.config
        parts = (app_version(), self.name, cfg.architecture, str(cfg.vocab_size),
                 str(cfg.num_layers), str(cfg.hidden_size), str(self.loaded.dtype),
                 str(self.loaded.device))
        return "fp_" + hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]


@dataclass
class ServerState:
    settings: Settings
    api_keys: list[str]
    phase: Phase = Phase.STARTING
    failure: str | None = None
    models: dict[str, ServedModel] = field(default_factory=dict)
    # LoRA adapters by name -> the served model they run on; a name is here from the
    # moment its load starts (so two loads of one name cannot race) until it is unloaded.
    adapters: dict[str, str] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    # /v1/responses' stored answers (store, previous_response_id, GET, DELETE)
    responses: ResponseStore = field(init=False)

    def __post_init__(self) -> None:
        s = self.settings
        self.responses = ResponseStore(s.responses_store_entries, s.responses_store_bytes,
                                       s.responses_store_ttl)

    def dead_models(self) -> dict[str, str]:
        return {name: m.engine.dead_reason for name, m in self.models.items()
                if m.engine.dead_reason is not None}

    @property
    def is_ready(self) -> bool:
        return self.phase is Phase.READY and not self.dead_models() and all(
            m.engine.is_running for m in self.models.values())
