"""KV-cache events published by a running server (--kv-events-endpoint), read by a
ZeroMQ subscriber as a prefix-aware router would: [topic, sequence, msgpack batch]; the
prompt's full blocks arrive as BlockStored with its tokens, and blocks evicted for a
later prompt as BlockRemoved with the hashes stored before."""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack
import zmq
import zmq.asyncio

from tests.app_helpers import running_app, settings_for
from tests.live import free_port


def test_subscriber_follows_the_prefix_cache(checkpoints: dict[str, Any]) -> None:
    async def main() -> None:
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        settings = settings_for(f"lm={checkpoints['lm']}", num_kv_blocks=12, block_size=4,
                                kv_events_endpoint=endpoint, kv_events_topic="kv")
        context = zmq.asyncio.Context()
        sub = context.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"kv")
        try:
            async with running_app(settings) as (app, client):
                sub.connect(endpoint)
                await asyncio.sleep(0.3)  # a PUB socket drops what it sends before this
                engine = app.state.server.models["lm"].engine
                ids = [5 + i for i in range(13)]
                r = await client.post("/v1/completions", json={"model": "lm",
                    "prompt": ids, "max_tokens": 2, "temperature": 0})
                assert r.status_code == 200, r.text
                stored: list[list[Any]] = []
                sequences: list[int] = []
                while not stored:
                    topic, seq, payload = await asyncio.wait_for(sub.recv_multipart(), 10)
                    assert topic == b"kv"
                    sequences.append(int.from_bytes(seq, "big"))
                    _, events, rank = msgpack.unpackb(payload)
                    assert rank == 0
                    stored += [e for e in events if e[0] == "BlockStored"]
                first = stored[0]
                hashes, parent, tokens, size = first[1], first[2], first[3], first[4]
                assert parent is None and size == 4 and tokens == ids[:4 * len(hashes)]
                assert first[6] == "CPU"
                # a different prompt that needs every block evicts the cached ones
                await client.post("/v1/completions", json={"model": "lm",
                    "prompt": [200 + i for i in range(40)], "max_tokens": 2,
                    "temperature": 0, "ignore_eos": True})
                removed: set[int] = set()
                seen = {h for e in stored for h in e[1]}
                while not seen & removed:
                    topic, seq, payload = await asyncio.wait_for(sub.recv_multipart(), 10)
                    sequences.append(int.from_bytes(seq, "big"))
                    for event in msgpack.unpackb(payload)[1]:
                        if event[0] == "BlockRemoved":
                            removed.update(event[1])
                        elif event[0] == "BlockStored":
                            seen.update(event[1])
                assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
                assert engine.blocks.num_used == 0
        finally:
            sub.close(linger=0)
            context.term()

    asyncio.run(main())
