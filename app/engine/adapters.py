"""The LoRA adapters of one engine as the event loop sees them: which are loaded, the
prefix-cache namespace of each, and how many requests each has in flight (so an unload
can wait for them). No torch: the weights live in the runner's AdapterSlots, changed only
on the compute thread (Engine.load_adapter / unload_adapter).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from app.engine.errors import AdapterNotFound

# Each load gets a new number: an adapter unloaded and loaded again under the same name
# (other weights, perhaps) never meets the cached KV blocks of the one before.
_loads = itertools.count(1)


@dataclass(frozen=True)
class AdapterEntry:
    name: str
    path: Path
    rank: int
    created: int = field(default_factory=lambda: int(time.time()))
    load_id: int = field(default_factory=lambda: next(_loads))

    def cache_salt(self, salt: str | None) -> str:
        """The prefix-cache namespace of a request with this adapter: its K/V differ from
        the base model's (the adapter changes every layer's projections), so blocks are
        never shared across adapters, nor across loads of one name."""
        return f"lora:{self.load_id}:{self.name}\x00{salt or ''}"


class EngineAdapters:
    def __init__(self) -> None:
        self._entries: dict[str, AdapterEntry] = {}
        self._closing: set[str] = set()  # unloads waiting for their requests
        self._in_flight: Counter[str] = Counter()
        self._idle: dict[str, asyncio.Event] = {}

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def entries(self) -> list[AdapterEntry]:
        return list(self._entries.values())

    def serving(self, name: str) -> bool:
        """Loaded and taking requests (not being unloaded)."""
        return name in self._entries and name not in self._closing

    def entry(self, name: str) -> AdapterEntry:
        """The adapter a new request may use; AdapterNotFound when there is none (or it is
        being unloaded)."""
        if not self.serving(name):
            raise AdapterNotFound(f"LoRA adapter {name!r} is not loaded")
        return self._entries[name]

    def add(self, entry: AdapterEntry) -> None:
        self._entries[entry.name] = entry

    def remove(self, name: str) -> None:
        self._entries.pop(name, None)
        self._closing.discard(name)
        self._idle.pop(name, None)

    def in_flight(self, name: str) -> int:
        return self._in_flight[name]

    def acquire(self, name: str, count: int = 1) -> None:
        self._in_flight[name] += count

    def release(self, name: str) -> None:
        self._in_flight[name] -= 1
        if self._in_flight[name] <= 0:
            del self._in_flight[name]
            idle = self._idle.get(name)
            if idle is not None:
                idle.set()

    async def close(self, name: str) -> None:
        """Refuse new requests for `name` at once, then wait until its requests in flight
        have ended (each ends however it ends: finished, aborted, failed)."""
        self.entry(name)  # AdapterNotFound for an unknown or already closing name
        self._closing.add(name)
        if self._in_flight[name]:
            idle = self._idle.setdefault(name, asyncio.Event())
            await idle.wait()
