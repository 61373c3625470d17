"""The scheduler's LoRA rule: never more than max_loras distinct adapters among running
sequences (so in any step); a sequence whose adapter would be one too many waits in its
place, later adapter sequences wait behind it, base-model sequences go on. No torch."""

from __future__ import annotations

import random

from app.engine.block_manager import BlockManager
from app.engine.request import RequestKind, TokenSequence
from app.engine.scheduler import Scheduler, SchedulerConfig
from app.sampling_params import SamplingParams


def make(max_loras: int, **cfg: int) -> Scheduler:
    config = SchedulerConfig(max_loras=max_loras, **{"max_num_seqs": 16,
                                                     "max_num_batched_tokens": 256, **cfg})
    return Scheduler(config, BlockManager(256, 4))


def seq(request_id: str, adapter: str | None, arrival: float, n: int = 5) -> TokenSequence:
    base = 1000 * sum(map(ord, request_id))
    return TokenSequence(request_id=request_id, kind=RequestKind.GENERATE,
                         token_ids=list(range(base, base + n)), num_prompt_tokens=n,
                         params=SamplingParams(max_tokens=4), arrival=arrival,
                         adapter=adapter)


def step(s: Scheduler) -> list[str]:
    out = s.schedule()
    s.step_done(out)
    live = {x.seq_id: x for x in s.running}
    for item in out.scheduled:
        if item.completes_prefill:
            live[item.seq_id].token_ids.append(7)
    return [i.request_id for i in out.scheduled]


def test_one_adapter_too_many_waits_in_place_and_the_base_model_goes_on() -> None:
    s = make(max_loras=2)
    for i, (rid, adapter) in enumerate([("a", "A"), ("b", "B"), ("c", "C"), ("d", None),
                                        ("e", "A"), ("f", None)]):
        s.add([seq(rid, adapter, arrival=i)])
    assert step(s) == ["a", "b", "d", "f"]
    # c waits (a third adapter); e too, though A runs: behind c, it would keep A's slot
    # busy and starve c. Both keep their places.
    assert [x.request_id for x in s.waiting] == ["c", "e"]
    assert step(s) == ["a", "b", "d", "f"]  # decodes; c and e still wait
    for x in list(s.running):
        if x.request_id in ("a", "b"):
            s.finish(x)
    # A and B gone: c first, then e (two adapters, C and A)
    assert step(s)[-2:] == ["c", "e"]
    assert not s.waiting


def test_no_step_ever_holds_more_than_max_loras_adapters() -> None:
    rng = random.Random(0)
    s = make(max_loras=3, max_num_seqs=8)
    adapters = [None, "A", "B", "C", "D", "E"]
    arrival = 0.0
    done = 0
    for _ in range(200):
        if rng.random() < 0.6 and len(s.waiting) < 20:
            arrival += 1
            s.add([seq(f"r{arrival:.0f}", rng.choice(adapters), arrival,
                       n=rng.randint(1, 12))])
        out = s.schedule()
        s.step_done(out)
        live = {x.seq_id: x for x in s.running}
        in_step = {live[i.seq_id].adapter for i in out.scheduled} - {None}
        assert len(in_step) <= 3
        running = {x.adapter for x in s.running} - {None}
        assert len(running) <= 3
        for item in out.scheduled:
            x = live[item.seq_id]
            if item.completes_prefill:
                x.token_ids.append(7)
            if x.num_output_tokens >= 3:
                s.finish(x)
                done += 1
    assert done > 50  # the rule never wedged the queue
