"""The engine on tiny random checkpoints: exactness against full forward passes, prefix
caching, preemption, abort accounting, sampling, stop strings, n > 1, faults."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
import torch

from app.engine.engine import Engine
from app.engine.errors import EngineDead, InvalidRequest, QueueFull, StepFailed
from app.engine.request import RequestKind
from app.sampling_params import SamplingParams
from tests.engine.conftest import reference_greedy
from tests.waiting import until

GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)


def prompts(vocab: int, lengths: list[int], seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(5, vocab) for _ in range(n)] for n in lengths]


async def generate_all(engine: Engine, batch: list[list[int]], params: SamplingParams
                       ) -> list[list[int]]:
    outs = await asyncio.gather(*(engine.generate(p, params) for p in batch))
    return [o.completions[0].token_ids for o in outs]


@pytest.mark.parametrize("arch", ["llama_gqa_llama3", "gpt2", "qwen2"])
def test_greedy_equals_full_forward_reference(arch: str, with_engine: Any) -> None:
    async def body(engine: Engine) -> None:
        batch = prompts(engine.model_config.vocab_size, [3, 17, 9, 30, 1])
        got = await generate_all(engine, batch, GREEDY)
        for p, tokens in zip(batch, got, strict=True):
            assert tokens == reference_greedy(engine.loaded.model, p, 12)
        assert engine.blocks.num_used == 0

    # A small token budget forces chunked prefill of the longer prompts.
    with_engine(arch, body, max_num_batched_tokens=8)


def test_prefix_cache_hits_give_identical_outputs(with_engine: Any) -> None:
    async def body(engine: Engine) -> None:
        system = prompts(engine.model_config.vocab_size, [24])[0]
        batch = [system + tail for tail in prompts(engine.model_config.vocab_size, [3, 5, 7], 1)]
        first = await generate_all(engine, batch[:1], GREEDY)
        hits_before = engine.blocks.prefix_hits
        again = await generate_all(engine, batch, GREEDY)
        assert engine.blocks.prefix_hits - hits_before >= 3 * 24
        assert again[0] == first[0]
        for p, tokens in zip(batch, again, strict=True):
            assert tokens == reference_greedy(engine.loaded.model, p, 12)

    with_engine("llama_gqa_llama3", body)


def test_preempted_requests_resume_with_identical_output(with_engine: Any) -> None:
    async def body(engine: Engine) -> None:
        batch = prompts(engine.model_config.vocab_size, [10, 12, 14, 16])
        params = SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True)
        got = await generate_all(engine, batch, params)
        assert engine.scheduler.num_preemptions > 0
        for p, tokens in zip(batch, got, strict=True):
            assert tokens == reference_greedy(engine.loaded.model, p, 20)

    # 24 blocks of 4 tokens = 96 slots for 4 sequences that grow to 30-36 tokens each.
    with_engine("llama_gqa_llama3", body, num_kv_blocks=24, watermark=0.0)


def test_abort_mid_generation_returns_every_block(with_engine: Any) -> None:
    async def body(engine: Engine) -> None:
        batch = prompts(engine.model_config.vocab_size, [9, 13, 21])
        params = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)
        streams = [engine.submit(p, params) for p in batch]
        iterators = [s.__aiter__() for s in streams]
        for it in iterators:
            await it.__anext__()  # each has produced a token, so holds blocks
        assert engine.blocks.num_used > 0
        for it in iterators[:2]:
            await it.aclose()  # consumer goes away -> abort
        engine.abort(streams[2].request_id)  # explicit abort
        await until(lambda: engine.num_requests == 0, "the aborted requests to end")
        engine.blocks.check_invariants()
        assert engine.num_requests == 0 and engine.blocks.num_used == 0
        assert not engine.scheduler.has_work()

    with_engine("llama_gqa_llama3", body)


def test_seeded_sampling_is_reproducible_and_batch_independent(with_engine: Any) -> None:
    async def body(engine: Engine) -> None:
        vocab = engine.model_config.vocab_size
        p = prompts(vocab, [6])[0]
        params = SamplingParams(max_tokens=15, temperature=1.3, top_k=50, top_p=0.95,
                                min_p=0.01, seed=1234, ignore_eos=True)
        alone = (await engine.generate(p, params)).completions[0].token_ids
        others = [engine.generate(q, SamplingParams(max_tokens=15, temperature=0.8, seed=i,
                                                    ignore_eos=True))
                  for i, q in enumerate(prompts(vocab, [4, 11, 7], 3))]
        results = await asyncio.gather(engine.generate(p, params), *others)
        assert results[0].completions[0].token_ids == alone
        other_seed = await engine.generate(p, SamplingParams(**{**params.__dict__, "seed": 99}))
        assert other_seed.completions[0].token_ids != alone

    with_engine("llama_gqa_llama3", body)


def test_stop_strings_across_token_boundaries(with_engine: Any, tokenizer: Any) -> None:
    async def body(engine: Engine) -> None:
        p = prompts(engine.model_config.vocab_size, [5])[0]
        full = await engine.generate(p, GREEDY)
        text = full.completions[0].text
        assert len(text) >= 6
        # A stop string that starts inside one token's text and ends inside a later one.
        ids = full.completions[0].token_ids
        pieces = [tokenizer.decode(ids[:i]) for i in range(1, len(ids) + 1)]
        boundary = next(len(x) for x in pieces if 2 <= len(x) < len(text) - 2)
        stop = text[boundary - 1: boundary + 2]
        cut = text.index(stop)
        out = await engine.generate(p, SamplingParams(**{**GREEDY.__dict__, "stop": (stop,)}))
        done = out.completions[0]
        assert done.finish_reason == "stop"
        assert done.text == text[:cut]
        assert stop not in done.text

    with_engine("llama_gqa_llama3", body)


def test_stop_token_ids_min_tokens_and_length(with_engine: Any) -> None:
    async def body(engine: Engine) -> None:
        p = prompts(engine.model_config.vocab_size, [5])[0]
        ids = (await engine.generate(p, GREEDY)).completions[0].token_ids
        stop_at = ids[3]
        first = ids.index(stop_at)
        out = await engine.generate(p, SamplingParams(**{**GREEDY.__dict__,
                                                        "stop_token_ids": (stop_at,)}))
        assert out.completions[0].finish_reason == "stop"
        assert out.completions[0].token_ids == ids[:first + 1]
        # min_tokens bans the stop token until enough tokens are out.
        out = await engine.generate(p, SamplingParams(**{**GREEDY.__dict__, "min_tokens": 12,
                                                        "stop_token_ids": (stop_at,)}))
        assert len(out.completions[0].token_ids) == 12
        assert out.completions[0].finish_reason == "length"

    with_engine("llama_gqa_llama3", body)


def test_n_completions_share_the_prompt(with_engine: Any) -> None:
    async def body(engine: Engine) -> None:
        p = prompts(engine.model_config.vocab_size, [10])[0]
        params = SamplingParams(max_tokens=8, temperature=1.0, n=4, seed=7, ignore_eos=True,
                                logprobs=True, top_logprobs=3)
        out = await engine.generate(p, params)
        assert [c.index for c in out.completions] == [0, 1, 2, 3]
        assert all(len(c.token_ids) == 8 and c.finish_reason == "length"
                   for c in out.completions)
        assert len({tuple(c.token_ids) for c in out.completions}) > 1
        for c in out.completions:
            assert c.logprobs is not None and len(c.logprobs) == 8
            assert all(len(lp.top) == 3 and lp.logprob <= 0 for lp in c.logprobs)
        again = await engine.generate(p, params)
        assert [c.token_ids for c in again.completions] == [c.token_ids for c in out.completions]
        greedy = await engine.generate(p, SamplingParams(max_tokens=8, temperature=0.0, n=3,
                                                         ignore_eos=True))
        assert len({tuple(c.token_ids) for c in greedy.completions}) == 1

    with_engine("llama_gqa_llama3", body)


def test_predict_matches_softmax_of_reference(with_engine: Any) -> None:
    async def body(engine: Engine) -> None:
        p = prompts(engine.model_config.vocab_size, [11])[0]
        out = await engine.generate(p, SamplingParams(max_tokens=1, top_logprobs=10),
                                    kind=RequestKind.PREDICT)
        with torch.no_grad():
            ref = torch.softmax(engine.loaded.model.causal_lm_logits(torch.tensor([p]))[0, -1], -1)
        assert out.distribution is not None and len(out.distribution) == 10
        values, ids = torch.topk(ref, 10)
        assert [d[0] for d in out.distribution] == ids.tolist()
        assert max(abs(d[1] - v) for d, v in zip(out.distribution, values.tolist(),
                                                 strict=True)) <= 1e-5
        assert engine.blocks.num_used == 0

    with_engine("gpt2", body)


def test_score_returns_continuation_logprobs(with_engine: Any) -> None:
    async def body(engine: Engine) -> None:
        context, label = prompts(engine.model_config.vocab_size, [9, 4])
        out = await engine.generate(context + label, SamplingParams(max_tokens=1),
                                    kind=RequestKind.SCORE, score_from=len(context))
        with torch.no_grad():
            logits = engine.loaded.model.causal_lm_logits(torch.tensor([context + label]))[0]
            ref = torch.log_softmax(logits, -1)
        expected = [float(ref[len(context) - 1 + i, t]) for i, t in enumerate(label)]
        assert out.score_logprobs is not None
        assert max(abs(a - b) for a, b in zip(out.score_logprobs, expected, strict=True)) < 1e-4
        # Again: the context now sits in the prefix cache, the scored tokens must not.
        again = await engine.generate(context + label, SamplingParams(max_tokens=1),
                                      kind=RequestKind.SCORE, score_from=len(context))
        assert again.score_logprobs is not None and len(again.score_logprobs) == len(label)
        assert max(abs(a - b) for a, b in zip(again.score_logprobs, expected, strict=True)) < 1e-4

    with_engine("llama_gqa_llama3", body, max_num_batched_tokens=5)  # spans chunks


def test_classify_on_a_classifier_checkpoint(with_engine: Any, hf_checkpoint: Any) -> None:
    _, ref = hf_checkpoint("gpt2_cls")

    async def body(engine: Engine) -> None:
        batch = prompts(engine.model_config.vocab_size, [7, 19, 3])
        outs = await asyncio.gather(*(engine.generate(p, SamplingParams(max_tokens=1),
                                                      kind=RequestKind.CLASSIFY) for p in batch))
        for p, out in zip(batch, outs, strict=True):
            with torch.no_grad():
                expected = torch.softmax(ref(torch.tensor([p])).logits[0], -1)
            assert out.class_scores is not None
            assert torch.allclose(torch.tensor(out.class_scores), expected, atol=1e-5)
        with pytest.raises(InvalidRequest, match="not a language model"):
            engine.submit(batch[0], GREEDY)

    with_engine("gpt2_cls", body)


def test_validation_and_queue_full(with_engine: Any) -> None:
    async def body(engine: Engine) -> None:
        with pytest.raises(InvalidRequest, match="exceeds the model's context"):
            engine.submit([5] * 250, SamplingParams(max_tokens=10))
        with pytest.raises(InvalidRequest, match="empty"):
            engine.submit([], GREEDY)
        with pytest.raises(InvalidRequest, match="top_p"):
            engine.submit([5], SamplingParams(top_p=0.0))
        with pytest.raises(InvalidRequest, match="temperature"):
            engine.submit([5], SamplingParams(temperature=float("nan")))
        streams = [engine.submit([5, 6], GREEDY) for _ in range(2)]
        with pytest.raises(QueueFull):
            engine.submit([5, 6], GREEDY)
        for s in streams:
            await s.collect()

    with_engine("llama_gqa_llama3", body, max_waiting_requests=2)


def test_step_fault_fails_only_its_requests_then_engine_dies(with_engine: Any) -> None:
    async def body(engine: Engine) -> None:
        p = prompts(engine.model_config.vocab_size, [5])[0]
        calls = {"n": 0}

        def fail_once(out: Any) -> None:
            calls["n"] += 1
            if calls["n"] == 1:
                raise RuntimeError("injected fault")

        engine.fault_hook = fail_once
        with pytest.raises(StepFailed, match="injected fault"):
            await engine.generate(p, GREEDY)
        ok = await engine.generate(p, GREEDY)  # recovered
        assert ok.completions[0].token_ids == reference_greedy(engine.loaded.model, p, 12)

        def always(out: Any) -> None:
            raise RuntimeError("broken device")

        engine.fault_hook = always
        for _ in range(3):
            with pytest.raises((StepFailed, EngineDead)):
                await engine.generate(p, GREEDY)
        assert engine.dead_reason is not None and "broken device" in engine.dead_reason
        with pytest.raises(EngineDead):
            engine.submit(p, GREEDY)
        assert engine.blocks.num_used == 0

    with_engine("llama_gqa_llama3", body)


def test_batch_invariance_greedy_alone_vs_among_31_others(with_engine: Any) -> None:
    async def body(engine: Engine) -> None:
        vocab = engine.model_config.vocab_size
        target = prompts(vocab, [13], seed=5)[0]
        params = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
        alone = (await engine.generate(target, params)).completions[0].token_ids
        rng = random.Random(1)
        others = prompts(vocab, [rng.randrange(1, 60) for _ in range(31)], seed=9)
        results = await asyncio.gather(
            *(engine.generate(q, SamplingParams(max_tokens=rng.randrange(1, 30),
                                                temperature=0.0, ignore_eos=True))
              for q in others[:15]),
            engine.generate(target, params),
            *(engine.generate(q, params) for q in others[15:]))
        assert results[15].completions[0].token_ids == alone

    with_engine("llama_gqa_llama3", body, max_num_seqs=32, max_num_batched_tokens=256)
