"""KV-cache events (app/engine/kv_events.py): the block manager records a BlockStored
when blocks become reusable and a BlockRemoved when one is evicted, only when asked; and
the publisher's wire format is vLLM's (msgpack arrays, tagged events)."""

from __future__ import annotations

import msgpack

from app.engine.block_manager import BlockManager
from app.engine.kv_events import AllBlocksCleared, BlockRemoved, BlockStored
from app.engine.request import RequestKind, TokenSequence
from app.kv_event_publisher import encode_batch
from app.sampling_params import SamplingParams
from tests.engine.test_block_manager import compute, seq


def test_stored_then_removed_on_eviction_and_nothing_when_off() -> None:
    off = BlockManager(num_blocks=4, block_size=4)
    compute(off, seq(list(range(9))), 9)
    assert off.events.drain() == []  # not recording unless a publisher asked

    bm = BlockManager(num_blocks=4, block_size=4)
    bm.events.enabled = True
    a = seq(list(range(9)))
    compute(bm, a, 9)  # two full blocks hashed, the third partial
    [stored] = bm.events.drain()
    assert isinstance(stored, BlockStored)
    assert stored.token_ids == list(range(8)) and stored.block_size == 4
    assert stored.parent_block_hash is None and len(stored.block_hashes) == 2
    assert stored.block_hashes == [bm.blocks[b].hash for b in a.block_table[:2]]
    compute(bm, a, 0)
    assert bm.events.drain() == []  # nothing new: no event
    a.token_ids.extend(range(9, 12))
    compute(bm, a, 3)  # the third block fills: one more, chained to the second
    [more] = bm.events.drain()
    assert isinstance(more, BlockStored)
    assert more.parent_block_hash == stored.block_hashes[-1]
    assert more.token_ids == [8, 9, 10, 11]
    bm.free(a)  # cached, not removed
    assert bm.events.drain() == []
    b = seq([100 + i for i in range(16)], "b")
    compute(bm, b, 16)  # needs every block: the cached ones are evicted
    events = bm.events.drain()
    removed = [h for e in events if isinstance(e, BlockRemoved) for h in e.block_hashes]
    assert sorted(removed) == sorted([*stored.block_hashes, *more.block_hashes])


def test_wire_format_is_vllms() -> None:
    events = [BlockStored([11, 12], None, list(range(8)), 4), BlockRemoved([11]),
              AllBlocksCleared()]
    decoded = msgpack.unpackb(encode_batch(events, "CPU", when=1.5))
    assert decoded == [1.5, [["BlockStored", [11, 12], None, list(range(8)), 4, None, "CPU"],
                             ["BlockRemoved", [11], "CPU"], ["AllBlocksCleared"]], 0]


def test_an_adapters_blocks_carry_its_lora_id() -> None:
    """vLLM's lora_id: the blocks a LoRA adapter's sequence stores name its load's id;
    the base model's stay null."""
    bm = BlockManager(16, 4)
    bm.events.enabled = True
    for adapter in ("tuned", None):
        seq = TokenSequence(request_id=str(adapter), kind=RequestKind.GENERATE,
                            token_ids=list(range(8)), num_prompt_tokens=8,
                            params=SamplingParams(), adapter=adapter,
                            cache_salt=None if adapter is None else "lora:7:tuned")
        compute(bm, seq, 8)
    stored = [e for e in bm.events.drain() if isinstance(e, BlockStored)]
    assert [e.adapter for e in stored] == ["tuned", None]
    decoded = msgpack.unpackb(encode_batch(stored, "CPU", when=1.0,
                                           lora_id={"tuned": 7}.get))
    assert [event[5] for event in decoded[1]] == [7, None]
