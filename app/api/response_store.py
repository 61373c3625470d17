"""The bounded in-memory store behind /v1/responses' `store`, `previous_response_id`, GET
and DELETE: each stored answer keeps its Response body (for GET) and the conversation it
ends (input items, then output items, for the next turn's replay). Bounded three ways
(--responses-store-entries, --responses-store-bytes, --responses-store-ttl): the least
recently used entries leave first, and expired ones are gone when the next answer is kept
or when they are looked up. Lost
on restart, as a cache is: a client that needs its history keeps it and sends it back as
input items."""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StoredResponse:
    response: dict[str, Any]  # the Response body, as GET returns it
    conversation: list[dict[str, Any]]  # input items then output items, as sent/answered
    size: int  # bytes as JSON, counted against the store's byte cap
    expires: float  # monotonic time after which it is gone


class ResponseStore:
    def __init__(self, max_entries: int, max_bytes: int, ttl_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[str, StoredResponse] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes

    def put(self, response: dict[str, Any], conversation: Sequence[dict[str, Any]]) -> bool:
        """Keep `response` under its id; False when it alone is over the caps (nothing is
        kept then, and nothing else is evicted for it)."""
        size = len(json.dumps([response, list(conversation)], ensure_ascii=False).encode())
        if self.max_entries < 1 or size > self.max_bytes:
            return False
        key = str(response["id"])
        self._drop(key)
        self._expire()
        self._entries[key] = StoredResponse(response, list(conversation), size,
                                            self._clock() + self.ttl_s)
        self._bytes += size
        # least recently used first out, until both caps hold again
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))
        return True

    def _expire(self) -> None:
        """Drop every expired entry, so what is held is what can still be read (the
        entries are at most --responses-store-entries: one pass per store is cheap)."""
        now = self._clock()
        for key in [k for k, e in self._entries.items() if e.expires <= now]:
            self._drop(key)

    def get(self, key: str) -> StoredResponse | None:
        """The stored answer, or None when it was never stored, was deleted, evicted or
        has expired. A read counts as a use (it moves to the back of the eviction line)."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires <= self._clock():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry

    def delete(self, key: str) -> bool:
        return self.get(key) is not None and self._drop(key)

    def _drop(self, key: str) -> bool:
        entry = self._entries.pop(key, None)
        if entry is None:
            return False
        self._bytes -= entry.size
        return True
