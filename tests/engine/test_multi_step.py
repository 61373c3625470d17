"""Multi-step decoding (SchedulerConfig.num_scheduler_steps): the worker runs several
decode steps per schedule. With it, the same tokens, text, finish reasons and logprobs
as one step per schedule, for every architecture; every block back after an abort
inside the steps; streams get the tokens several at a time. And the scheduler's rules
for when it applies (no torch)."""

from __future__ import annotations

import asyncio
import math
import random
import threading
from typing import Any

import pytest

from app.engine.block_manager import BlockManager
from app.engine.engine import Engine
from app.engine.request import RequestKind, TokenSequence
from app.engine.scheduler import Scheduler, SchedulerConfig
from app.engine.speculative import Proposer, SpeculativeConfig
from app.engine.stats import StepStats
from app.sampling_params import SamplingParams
from tests.engine.conftest import reference_greedy
from tests.waiting import until

ARCH = "llama_gqa_llama3"


def prompts(vocab: int, lengths: list[int], seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(5, vocab) for _ in range(n)] for n in lengths]


def mixed_params(stop: str, stop_token: int) -> list[SamplingParams]:
    """Requests that end at different steps, inside a multi-step step or at its end, and
    for different reasons; two of them (penalties, min_tokens) keep the steps single
    while they run."""
    return [
        SamplingParams(max_tokens=21, temperature=0.0, ignore_eos=True),
        SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True),
        SamplingParams(max_tokens=25, temperature=1.1, top_k=40, seed=3, ignore_eos=True,
                       logprobs=True, top_logprobs=2),
        SamplingParams(max_tokens=30, temperature=0.0),  # may end at EOS
        SamplingParams(max_tokens=16, temperature=0.9, seed=11, n=2, ignore_eos=True),
        SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True, stop=(stop,)),
        SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True,
                       stop_token_ids=(stop_token,), min_tokens=2),
        SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True,
                       repetition_penalty=1.3),
    ]


def test_outputs_equal_with_one_step_per_schedule(with_engine: Any) -> None:
    seen: dict[int, Any] = {}

    async def body(engine: Engine) -> None:
        steps: list[StepStats] = []
        engine.step_observers.append(steps.append)
        vocab = engine.model_config.vocab_size
        batch = prompts(vocab, [9, 4, 13, 7, 10, 5, 8, 6], seed=2)
        probe = await engine.generate(batch[5], SamplingParams(max_tokens=24, temperature=0.0,
                                                               ignore_eos=True))
        text, ids = probe.completions[0].text, probe.completions[0].token_ids
        params = mixed_params(text[len(text) // 2:len(text) // 2 + 2], ids[9])
        results = await asyncio.gather(*(engine.generate(p, q)
                                         for p, q in zip(batch, params, strict=True)))
        seen[engine.scheduler.config.num_scheduler_steps] = (
            [[(c.token_ids, c.text, c.finish_reason) for c in r.completions]
             for r in results],
            [lp.logprob for lp in results[2].completions[0].logprobs or []],
            max(s.generated_tokens / s.num_seqs for s in steps))
        assert engine.blocks.num_used == 0 and engine.num_requests == 0

    with_engine(ARCH, body, num_scheduler_steps=4, max_num_seqs=16)
    with_engine(ARCH, body, num_scheduler_steps=1, max_num_seqs=16)
    (multi, logprobs_multi, most_multi), (single, logprobs_single, most_single) = (
        seen[4], seen[1])
    assert most_multi == 4 and most_single < 2  # it did run several steps at once (n=2: 2 draws)
    assert multi == single
    assert {c[2] for r in multi for c in r} >= {"length", "stop"}
    assert len(logprobs_multi) == 25
    assert all(math.isclose(a, b, abs_tol=1e-4)
               for a, b in zip(logprobs_multi, logprobs_single, strict=True))


@pytest.mark.parametrize("arch", ["llama_gqa_llama3", "gpt2", "qwen2"])
def test_greedy_equals_the_full_forward(arch: str, with_engine: Any) -> None:
    async def body(engine: Engine) -> None:
        batch = prompts(engine.model_config.vocab_size, [5, 11, 3])
        params = SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True)
        results = await asyncio.gather(*(engine.generate(p, params) for p in batch))
        for p, r in zip(batch, results, strict=True):
            assert r.completions[0].token_ids == reference_greedy(engine.loaded.model, p, 30)

    with_engine(arch, body, num_scheduler_steps=5)


def test_streams_get_several_tokens_at_a_time(with_engine: Any) -> None:
    async def body(engine: Engine) -> None:
        p = prompts(engine.model_config.vocab_size, [6])[0]
        params = SamplingParams(max_tokens=33, temperature=0.0, ignore_eos=True)
        stream = engine.submit(p, params)
        events = [[t for c in out.completions for t in c.token_ids] async for out in stream]
        tokens = [t for e in events for t in e]
        assert tokens == reference_greedy(engine.loaded.model, p, 33)
        # the prompt's step gives the first token; then 4 a step: 32 = 8 x 4
        assert [len(e) for e in events] == [1] + [4] * 8

    with_engine(ARCH, body, num_scheduler_steps=4)


def test_abort_inside_the_steps_returns_every_block(with_engine: Any) -> None:
    async def body(engine: Engine) -> None:
        batch = prompts(engine.model_config.vocab_size, [9, 13, 21])
        streams = [engine.submit(p, SamplingParams(max_tokens=60, temperature=0.0,
                                                   ignore_eos=True)) for p in batch]
        readers = [aiter(s) for s in streams]
        firsts = await asyncio.gather(*(anext(r) for r in readers))  # each holds blocks
        await readers[0].aclose()  # the reader goes away: abort
        engine.abort(streams[1].request_id)
        later = [out async for out in readers[2]]
        survivor = [t for out in (firsts[2], *later) for c in out.completions
                    for t in c.token_ids]
        await until(lambda: engine.num_requests == 0, "the aborted requests to end")
        engine.blocks.check_invariants()
        assert engine.blocks.num_used == 0 and not engine.scheduler.has_work()
        assert survivor == reference_greedy(engine.loaded.model, batch[2], 60)

    with_engine(ARCH, body, num_scheduler_steps=8)


def test_a_request_arriving_inside_the_steps_cuts_them_short(with_engine: Any) -> None:
    """A request that arrives while the worker runs 8 steps for another waits for the step
    in progress only: the worker stops there, and the next schedule takes its prompt.
    One arriving when no seat is free does not cut the steps short. Tokens stay exact."""

    async def body(engine: Engine) -> None:
        loop = asyncio.get_running_loop()
        vocab = engine.model_config.vocab_size
        first, second, third = prompts(vocab, [7, 5, 6], seed=4)
        params = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)
        steps: list[StepStats] = []
        engine.step_observers.append(steps.append)
        late: list[Any] = []
        submitted = threading.Event()

        def submit_late() -> None:
            late.append(engine.submit(second, params))
            submitted.set()

        def hook(out: Any) -> None:  # the worker thread, before a schedule's first step
            if not late and out.scheduled[0].steps > 1:
                loop.call_soon_threadsafe(submit_late)
                assert submitted.wait(10)  # queued, before the worker's later steps

        engine.fault_hook = hook
        early = await engine.generate(first, params)
        later = [out async for out in late[0]]
        tokens = [t for out in later for c in out.completions for t in c.token_ids]
        assert early.completions[0].token_ids == reference_greedy(engine.loaded.model, first, 40)
        assert tokens == reference_greedy(engine.loaded.model, second, 40)
        # the prompt's step, then the 8-step schedule cut after its first step, and the
        # newcomer's prompt in the schedule right after it
        assert [s.generated_tokens for s in steps[:3]] == [1, 1, 2]
        assert steps[2].num_prefill_tokens == len(second)

        # no free seat: the newcomer could not join, so the steps run in full
        steps.clear()
        held = [engine.submit(p, params) for p in (first, second)]
        during: list[int] = []  # the schedule in progress when the third arrived

        def submit_third() -> None:
            during.append(len(steps))
            late.append(engine.submit(third, params))

        engine.fault_hook = lambda out: (
            out.scheduled[0].steps > 1 and not during
            and loop.call_soon_threadsafe(submit_third))
        await asyncio.gather(*(s.collect() for s in held))
        assert during and steps[during[0]].generated_tokens == 2 * 8
        await late[1].collect()

    with_engine(ARCH, body, num_scheduler_steps=8, max_num_seqs=2)


# ---------------------------------------------------------------- the scheduler's rules


def scheduler(steps: int = 4, num_blocks: int = 64, max_num_seqs: int = 8,
              max_model_len: int = 64) -> Scheduler:
    return Scheduler(SchedulerConfig(num_scheduler_steps=steps, max_num_seqs=max_num_seqs),
                     BlockManager(num_blocks, 4), max_model_len=max_model_len)


def decoding(s: Scheduler, *lengths: int, **params: Any) -> list[TokenSequence]:
    """Sequences whose prompts have run and whose first token is out."""
    seqs = [TokenSequence(request_id=f"r{i}", kind=RequestKind.GENERATE,
                          token_ids=list(range(100 * i + 10, 100 * i + 10 + n)),
                          num_prompt_tokens=n, params=SamplingParams(**params))
            for i, n in enumerate(lengths)]
    s.add(seqs)
    first = s.schedule()
    s.step_done(first)
    for seq in seqs:
        seq.token_ids.append(7)
    return seqs


def test_plain_decodes_get_the_steps_and_their_slots() -> None:
    s = scheduler()
    seqs = decoding(s, 5, 7, max_tokens=10)
    out = s.schedule()
    assert [i.steps for i in out.scheduled] == [4, 4]
    # slots for the 4 positions each step feeds: 6..9 and 8..11, in blocks of 4
    assert [len(seq.block_table) for seq in seqs] == [3, 3]
    s.blocks.check_invariants()


@pytest.mark.parametrize("why", ["waiting", "penalties", "min_tokens", "grammar", "forks",
                                 "blocks", "draft model", "guesses"])
def test_one_step_where_a_token_decides_the_next(why: str) -> None:
    s = scheduler(num_blocks=5 if why == "blocks" else 64)
    params: dict[str, Any] = {"max_tokens": 10}
    if why == "penalties":
        params["presence_penalty"] = 0.5
    if why == "min_tokens":
        params["min_tokens"] = 3
    seqs = decoding(s, 5, 7, **params)
    if why == "waiting":
        s.add([TokenSequence(request_id="late", kind=RequestKind.GENERATE,
                             token_ids=[1] * 40, num_prompt_tokens=40,
                             params=SamplingParams())])
    if why == "grammar":
        seqs[1].constrained = True
    if why == "guesses":  # n-gram lookup finds what follows "7": a verification step
        s.proposer = Proposer(SpeculativeConfig(prompt_lookup_min=1, prompt_lookup_max=1))
        for seq in seqs:
            seq.speculate = True
            seq.token_ids[2] = 7
    if why == "forks":
        seqs[0].pending_forks = 1
    if why == "draft model":  # it must see every step's tokens
        s.proposer = Proposer(SpeculativeConfig(method="draft_model", model="draft"))
    out = s.schedule()
    assert [i.steps for i in out.scheduled if i.seq_id in {q.seq_id for q in seqs}] == [1, 1]


def test_n_gram_speculation_with_nothing_to_guess_runs_several_steps() -> None:
    s = scheduler()
    s.proposer = Proposer(SpeculativeConfig(prompt_lookup_min=1, prompt_lookup_max=1))
    seqs = decoding(s, 5, 7, max_tokens=10)
    for seq in seqs:
        seq.speculate = True  # (their tokens never repeat: nothing to look up)
    out = s.schedule()
    assert [(i.steps, i.draft) for i in out.scheduled] == [(4, ()), (4, ())]


def test_steps_stop_at_what_max_tokens_and_the_context_leave() -> None:
    s = scheduler(steps=8, max_model_len=12)
    decoding(s, 5, max_tokens=4)  # 1 out: 3 more allowed
    assert [i.steps for i in s.schedule().scheduled] == [3]
    s = scheduler(steps=8, max_model_len=12)
    decoding(s, 7, max_tokens=20)  # 8 of 12 tokens: 4 more fit the context
    assert [i.steps for i in s.schedule().scheduled] == [4]


def test_a_full_batch_with_a_queue_still_runs_several_steps() -> None:
    s = scheduler(max_num_seqs=2)
    decoding(s, 5, 7, max_tokens=10)
    s.add([TokenSequence(request_id="late", kind=RequestKind.GENERATE, token_ids=[1, 2],
                         num_prompt_tokens=2, params=SamplingParams())])
    # no seat for it until one ends, so the steps cost it nothing
    assert [i.steps for i in s.schedule().scheduled] == [4, 4]
