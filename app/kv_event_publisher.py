"""Publishes a model's KV-cache events (app/engine/kv_events.py) over ZeroMQ in vLLM's
wire format, so a prefix-aware router (vllm-router's kv_aware policy, llm-d's scheduler)
can follow this replica's prefix cache: a PUB socket, one multipart message per engine
step that changed the cache, [topic, sequence number (8 bytes, big-endian), payload],
the payload a msgpack array `[timestamp, [event, ...], data_parallel_rank]` where each
event is an array whose first item names it (msgspec's array-like tagged structs):
`["BlockStored", block_hashes, parent_block_hash, token_ids, block_size, lora_id,
medium]` (lora_id: a LoRA adapter's number, one per load; null for the base model),
`["BlockRemoved", block_hashes, medium]`, `["AllBlocksCleared"]`.
Off unless --kv-events-endpoint is set."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import msgpack
import zmq

from app.engine.engine import Engine
from app.engine.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, KVEvent
from app.engine.stats import StepStats

log = logging.getLogger(__name__)
MEDIUM = "CPU"  # where the blocks live: this server's KV cache is in host memory on CPU


def encode_event(event: KVEvent, medium: str,
                 lora_id: Callable[[str], int | None] = lambda _: None) -> list[Any]:
    """One event as vLLM sends it; a LoRA adapter's blocks carry its id (vLLM's
    lora_int_id: a number per load of an adapter) from `lora_id`."""
    if isinstance(event, BlockStored):
        return ["BlockStored", event.block_hashes, event.parent_block_hash, event.token_ids,
                event.block_size, None if event.adapter is None else lora_id(event.adapter),
                medium]
    if isinstance(event, BlockRemoved):
        return ["BlockRemoved", event.block_hashes, medium]
    if isinstance(event, AllBlocksCleared):
        return ["AllBlocksCleared"]
    raise TypeError(f"not a KV event: {event!r}")


def encode_batch(events: list[KVEvent], medium: str, when: float | None = None,
                 lora_id: Callable[[str], int | None] = lambda _: None) -> bytes:
    body = [time.time() if when is None else when,
            [encode_event(e, medium, lora_id) for e in events], 0]
    return bytes(msgpack.packb(body, use_bin_type=True))


class KVEventPublisher:
    """One PUB socket for the whole server; each model's engine reports after its steps."""

    def __init__(self, endpoint: str, topic: str = "") -> None:
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self.socket = self.context.socket(zmq.PUB)
        self.socket.setsockopt(zmq.SNDHWM, 100_000)  # a slow subscriber drops, never blocks
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(endpoint)
        self.topic = topic.encode()
        self.sequence = 0

    def attach(self, engine: Engine) -> None:
        """Record `engine`'s KV events and publish them after each of its steps."""
        events = engine.blocks.events
        events.enabled = True
        device = str(getattr(engine.runner, "device", "cpu"))
        medium = "GPU" if device.startswith("cuda") else MEDIUM

        def after_step(_: StepStats) -> None:
            drained = events.drain()
            if drained:
                self.publish(drained, medium, engine.adapters.lora_id)

        engine.step_observers.append(after_step)

    def publish(self, events: list[KVEvent], medium: str = MEDIUM,
                lora_id: Callable[[str], int | None] = lambda _: None) -> None:
        payload = encode_batch(events, medium, lora_id=lora_id)
        try:
            self.socket.send_multipart(
                [self.topic, self.sequence.to_bytes(8, "big"), payload], flags=zmq.NOBLOCK)
        except zmq.Again:  # the high-water mark is reached: drop rather than stall steps
            log.warning("KV event batch %d dropped (subscriber too slow)", self.sequence)
        self.sequence += 1

    def close(self) -> None:
        self.socket.close(linger=0)
