"""KV-cache events: what a prefix-aware router needs to know of this replica's prefix
cache, as vLLM publishes it (`--kv-events-config`): a block of tokens became reusable
(BlockStored: its chain hash, its parent's, its tokens), a cached block was evicted
(BlockRemoved), the cache was emptied (AllBlocksCleared). The block manager records them
here (pure Python, no I/O); app/kv_event_publisher.py sends them after each step."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class BlockStored:
    block_hashes: list[int]  # consecutive blocks of one sequence, each chained to the last
    parent_block_hash: int | None  # the block before the first (None: a prefix's start)
    token_ids: list[int]  # the blocks' tokens, block_size of them per hash
    block_size: int
    adapter: str | None = None  # the LoRA adapter whose K/V they hold (None: the base)


@dataclass(frozen=True)
class BlockRemoved:
    block_hashes: list[int]


@dataclass(frozen=True)
class AllBlocksCleared:
    pass


KVEvent = BlockStored | BlockRemoved | AllBlocksCleared


@dataclass
class KVEventLog:
    """Events since the last drain(), in order. Off (recording nothing) unless a
    publisher asked for them, so the block manager pays nothing by default."""

    enabled: bool = False
    events: list[KVEvent] = field(default_factory=list)

    def record(self, event: KVEvent) -> None:
        if self.enabled:
            self.events.append(event)

    def drain(self) -> list[KVEvent]:
        events, self.events = self.events, []
        return events
