"""The engine's LoRA adapter administration (Engine's part for /v1/load_lora_adapter,
/v1/unload_lora_adapter, /v1/models and the adapter metrics): which adapters requests
may name, loading and unloading them on the compute thread, and their request counts.
The adapters' weights and slots are the runner's (app/engine/lora_slots.py); the served
names and their in-flight counts are EngineAdapters' (app/engine/adapters.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from app.engine.adapters import AdapterEntry, EngineAdapters
from app.engine.config import EngineConfig
from app.engine.errors import InvalidRequest
from app.engine.request import EngineRequest, SequenceStatus
from app.engine.runner import ModelRunner
from app.modeling.lora import LoraAdapter

log = logging.getLogger(__name__)


class LoraAdministration:
    """Mixed into Engine, which sets these attributes."""

    name: str
    config: EngineConfig
    adapters: EngineAdapters
    runner: ModelRunner
    last_step_time: float
    _executor: ThreadPoolExecutor
    _requests: dict[str, EngineRequest]

    def _lora_stats(self) -> dict[str, Any]:
        if not self.config.max_loras:
            return {}
        counts = self.adapter_requests()
        return {"max_loras": self.config.max_loras,
                "running_adapters": tuple(sorted(n for n, c in counts.items() if c[0])),
                "waiting_adapters": tuple(sorted(n for n, c in counts.items() if c[1])),
                "lora_updated": self.last_step_time}

    def adapter_requests(self) -> dict[str, tuple[int, int]]:
        """Per adapter with requests in flight: (running, waiting) requests; a request is
        running once any of its sequences is in the running batch."""
        counts: dict[str, list[int]] = {}
        for request in self._requests.values():
            if request.adapter is not None:
                started = any(s.status is SequenceStatus.RUNNING for s in request.sequences)
                counts.setdefault(request.adapter, [0, 0])[0 if started else 1] += 1
        return {name: (c[0], c[1]) for name, c in counts.items()}

    def has_adapter(self, name: str) -> bool:
        """Whether requests may name the adapter now (loaded, not being unloaded)."""
        return self.adapters.serving(name)

    def resident_adapters(self) -> list[str]:
        """The adapters whose weights sit in the runner's slots now (the rest are loaded
        and wait, evicted or never yet used, to be copied in by a step that needs them)."""
        try:
            return list(self.runner.adapters.resident())
        except RuntimeError:  # changed by the compute thread while read: read again later
            return []

    async def load_adapter(self, name: str, read: Callable[[], LoraAdapter]) -> AdapterEntry:
        """Read an adapter with `read` (the server's: app.checkpoint.lora.read_peft_adapter
        bound to its path) and register it with the runner, both on the compute thread:
        never beside a forward, and its tensor work in the one OpenMP team
        (app/engine/compute.py). Raises AdapterError (app.modeling.lora) for anything
        wrong with it, saying what."""
        if not self.config.max_loras:
            raise InvalidRequest(f"model {self.name!r} serves no LoRA adapters (started "
                                 "without --lora and --allow-runtime-lora)")
        if name in self.adapters:
            raise InvalidRequest(f"LoRA adapter {name!r} is already loaded")

        def read_and_register() -> LoraAdapter:
            adapter = read()
            self.runner.adapters.register(adapter)
            return adapter

        adapter = await asyncio.get_running_loop().run_in_executor(self._executor,
                                                                   read_and_register)
        entry = AdapterEntry(name, adapter.path, adapter.rank)
        self.adapters.add(entry)
        log.info("LoRA adapter loaded", extra={"model": self.name, "adapter": name,
                                               "path": str(adapter.path),
                                               "rank": adapter.rank})
        return entry

    async def unload_adapter(self, name: str) -> None:
        """New requests for the adapter are refused at once (AdapterNotFound); those in
        flight finish first, then its weights go. Runs to the end even if the caller stops
        waiting (a client that hangs up does not leave it half unloaded)."""
        await asyncio.shield(asyncio.ensure_future(self._unload(name)))

    async def _unload(self, name: str) -> None:
        await self.adapters.close(name)  # AdapterNotFound before anything changes
        try:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._executor, self.runner.adapters.unregister, name)
        finally:
            self.adapters.remove(name)
        log.info("LoRA adapter unloaded", extra={"model": self.name, "adapter": name})
