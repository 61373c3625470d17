"""Speculative decoding (n-gram prompt lookup): greedy output is token for token what
plain decoding gives (every architecture, mixed batches with requests that cannot
speculate, preemption, the prefix cache, stop strings and max_tokens when a step keeps
several tokens); sampled output keeps the target distribution (a chi-square test of the
verification rule) and seeded runs repeat."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
import torch

from app.engine.engine import Engine
from app.engine.ngram_index import NgramIndex
from app.engine.speculative import Proposer, SpeculativeConfig, propose_ngram
from app.sampling import SampleRow
from app.sampling_params import SamplingParams
from app.spec_verify import verify_draft
from tests.engine.conftest import reference_greedy

# No startup cost check: these tests speculate whatever a busy machine measures.
NGRAM = SpeculativeConfig(num_speculative_tokens=4, prompt_lookup_min=1,
                          prompt_lookup_max=3, cooldown=0, max_verify_cost=None)
GREEDY = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)


def repetitive(vocab: int, seed: int, n: int = 4) -> list[list[int]]:
    """Prompts that repeat a phrase, so a lookup finds something to propose."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        phrase = [rng.randrange(5, vocab) for _ in range(rng.randrange(3, 7))]
        out.append((phrase * 4)[:rng.randrange(8, 24)])
    return out


def test_propose_ngram() -> None:
    assert propose_ngram([1, 2, 3, 9, 1, 2, 3], 2, 1, 3) == [9, 1]
    assert propose_ngram([1, 2, 3, 4], 2, 1, 3) == []
    # the most recent earlier match wins
    assert propose_ngram([5, 1, 7, 5, 1, 8, 5, 1], 1, 2, 2) == [8]
    with pytest.raises(ValueError, match="unknown field"):
        SpeculativeConfig.parse('{"method": "ngram", "k": 3}')
    with pytest.raises(ValueError, match="not supported"):
        SpeculativeConfig.parse('{"method": "eagle"}')
    assert SpeculativeConfig.parse('{"num_speculative_tokens": 3}').num_speculative_tokens == 3


def test_the_ngram_index_proposes_what_the_scan_proposes() -> None:
    """The engine's incremental index (app.engine.ngram_index) against the scan that
    defines n-gram lookup, on sequences that grow a few tokens at a time (as accepted
    guesses arrive) over a small vocabulary (many repeats), every n range."""
    rng = random.Random(11)
    compared = found = 0
    for n_min, n_max in ((1, 1), (1, 3), (2, 4), (3, 3)):
        for _ in range(20):
            tokens = [rng.randrange(6) for _ in range(rng.randint(1, 8))]
            index = NgramIndex(n_min, n_max)
            for _ in range(30):
                k = rng.randint(1, 5)
                expected = propose_ngram(tokens, k, n_min, n_max)
                assert index.propose(tokens, k) == expected, (tokens, k, n_min, n_max)
                compared += 1
                found += bool(expected)
                tokens.extend(rng.randrange(6) for _ in range(rng.randint(1, 4)))
    assert compared == 2400 and found > 1000
    # a shorter sequence than the index has seen (another sequence): it starts over
    index = NgramIndex(1, 2)
    assert index.propose([1, 2, 1, 2, 1], 2) == [2, 1]
    assert index.propose([3, 4, 3], 2) == [4, 3]


def test_backoff_after_full_rejections() -> None:
    proposer = Proposer(SpeculativeConfig(cooldown=2))
    tokens = [1, 2, 3, 1, 2]
    assert proposer.propose(0, tokens, 4) == [3, 1, 2]
    proposer.observe(0, 3, 0)  # all rejected: wait 2 steps
    assert proposer.propose(0, tokens, 4) == [] and proposer.propose(0, tokens, 4) == []
    assert proposer.propose(0, tokens, 4) == [3, 1, 2]
    proposer.observe(0, 3, 0)  # again: the wait doubles
    assert [proposer.propose(0, tokens, 4) for _ in range(5)][-1] == [3, 1, 2]
    proposer.observe(0, 3, 2)
    assert proposer.accepted_per_position == [1, 1, 0]


@pytest.mark.parametrize("arch", ["llama_gqa_llama3", "gpt2", "qwen2"])
def test_greedy_with_speculation_equals_plain_decoding(arch: str, with_engine: Any) -> None:
    async def body(engine: Engine) -> None:
        batch = repetitive(engine.model_config.vocab_size, 3)
        # alone, then all together (mixed lengths, so some steps speculate for some)
        for p in batch[:2]:
            alone = (await engine.generate(p, GREEDY)).completions[0].token_ids
            assert alone == reference_greedy(engine.loaded.model, p, 24)
        outs = await asyncio.gather(*(engine.generate(p, GREEDY) for p in batch))
        for p, out in zip(batch, outs, strict=True):
            assert out.completions[0].token_ids == reference_greedy(engine.loaded.model, p, 24)
        proposer = engine.core.proposer
        assert proposer is not None and proposer.num_drafts > 0
        assert proposer.num_accepted_tokens > 0, "nothing was ever kept: nothing tested"
        assert engine.blocks.num_used == 0

    with_engine(arch, body, speculative=NGRAM)


def test_mixed_batch_preemption_prefix_cache_and_stops(with_engine: Any,
                                                        tokenizer: Any) -> None:
    """Requests with logprobs (values and alternatives as without speculation) and with
    penalties (over the output as it is at each guessed position) beside plain ones; a
    KV cache small enough to preempt; a prompt served from the prefix cache; stop
    strings and max_tokens reached inside a step that keeps several tokens."""

    async def run_all(engine: Engine) -> list[Any]:
        vocab = engine.model_config.vocab_size
        batch = repetitive(vocab, 7, 6)
        kinds = [GREEDY, SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True,
                                        logprobs=True, top_logprobs=3),
                 SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True,
                                repetition_penalty=1.3),
                 SamplingParams(max_tokens=7, temperature=0.0, ignore_eos=True),
                 GREEDY, SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True)]
        first = await engine.generate(batch[0], GREEDY)  # cached for the repeat below
        outs = await asyncio.gather(*(engine.generate(p, k) for p, k in
                                      zip(batch, kinds, strict=True)))
        texts = [o.completions[0].text for o in outs]
        stop = texts[4][len(texts[4]) // 2:len(texts[4]) // 2 + 2]
        stopped = await engine.generate(batch[4], SamplingParams(
            max_tokens=24, temperature=0.0, ignore_eos=True, stop=(stop,)))
        return [first.completions[0].token_ids,
                *[o.completions[0].token_ids for o in outs],
                [round(e.logprob, 3) for e in outs[1].completions[0].logprobs or []],
                [[t for t, _ in e.top] for e in outs[1].completions[0].logprobs or []],
                stopped.completions[0].text, stopped.completions[0].finish_reason]

    plain = with_engine("llama_gqa_llama3", run_all, num_kv_blocks=40)
    results: dict[str, Any] = {}

    async def speculating(engine: Engine) -> list[Any]:
        out = await run_all(engine)
        results["proposer"] = engine.core.proposer
        results["preemptions"] = engine.scheduler.num_preemptions
        return out

    assert with_engine("llama_gqa_llama3", speculating, num_kv_blocks=40,
                       speculative=NGRAM) == plain
    assert results["proposer"].num_accepted_tokens > 0
    assert results["preemptions"] > 0, "the KV cache never ran out: preemption untested"


def test_seeded_sampling_with_speculation_repeats(with_engine: Any) -> None:
    async def body(engine: Engine) -> list[list[int]]:
        batch = repetitive(engine.model_config.vocab_size, 11, 3)
        params = SamplingParams(max_tokens=20, temperature=0.7, top_k=20, seed=5,
                                ignore_eos=True)
        outs = await asyncio.gather(*(engine.generate(p, params) for p in batch))
        assert engine.core.proposer is not None and engine.core.proposer.num_drafts > 0
        return [o.completions[0].token_ids for o in outs]

    assert with_engine("llama_gqa_llama3", body, speculative=NGRAM) == with_engine(
        "llama_gqa_llama3", body, speculative=NGRAM)


def test_verification_keeps_the_target_distribution() -> None:
    """Chi-square: the first token out of verify_draft is distributed as the target's
    processed distribution p0 (whatever the guess), and the token after a kept guess as
    p1; 20000 seeded draws, 8 categories, p > 0.001 expected."""
    torch.manual_seed(0)
    logits = torch.randn(3, 8) * 1.5
    params = SamplingParams(temperature=0.8, top_p=0.95)
    generator = torch.Generator().manual_seed(1)
    row = SampleRow(params, generator=generator)
    probs = torch.softmax(logits / 0.8, -1)
    p0 = probs[0]
    order = torch.argsort(p0, descending=True)
    keep = order[:int((p0[order].cumsum(0) - p0[order] < 0.95).sum())]
    target0 = torch.zeros(8)
    target0[keep] = p0[keep] / p0[keep].sum()
    guess = (int(order[1]), int(torch.argmax(probs[1])))
    first = torch.zeros(8)
    second = torch.zeros(8)
    draws = 20000
    for _ in range(draws):
        out = [s.token_id for s in verify_draft(logits, row, guess)]
        first[out[0]] += 1
        if out[0] == guess[0]:
            second[out[1]] += 1
    for counts, target in ((first, target0), (second, None)):
        if target is None:  # p1 after top-p, as plain sampling would draw it
            p1 = probs[1]
            o1 = torch.argsort(p1, descending=True)
            k1 = o1[:int((p1[o1].cumsum(0) - p1[o1] < 0.95).sum())]
            target = torch.zeros(8)
            target[k1] = p1[k1] / p1[k1].sum()
        n = counts.sum()
        expected = target * n
        assert torch.all(counts[target == 0] == 0)
        live = target > 0
        chi2 = float((((counts - expected) ** 2)[live] / expected[live]).sum())
        # critical value of chi-square with 7 degrees of freedom at p = 0.001: 24.32
        assert chi2 < 24.32, (chi2, counts, expected)


def test_penalties_and_logprobs_speculate_exactly(with_engine: Any) -> None:
    """A greedy request with penalties and logprobs on its own: it speculates (guesses are
    scored) and gives the tokens, logprobs and alternatives plain decoding gives."""
    params = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True,
                            repetition_penalty=1.2, frequency_penalty=0.3, logprobs=True,
                            top_logprobs=2)

    async def body(engine: Engine) -> Any:
        prompt = repetitive(engine.model_config.vocab_size, 21, 1)[0]
        out = (await engine.generate(prompt, params)).completions[0]
        return out.token_ids, [(e.token_id, round(e.logprob, 3), [t for t, _ in e.top])
                               for e in out.logprobs or []], engine.core.proposer

    plain_tokens, plain_lps, _ = with_engine("llama_gqa_llama3", body)
    tokens, lps, proposer = with_engine("llama_gqa_llama3", body, speculative=NGRAM)
    assert proposer.num_draft_tokens > 0, "it never speculated: nothing tested"
    assert tokens == plain_tokens and lps == plain_lps


def test_structured_output_speculates_under_its_grammar(with_engine: Any,
                                                         tokenizer: Any) -> None:
    """A regex-constrained request: guesses the grammar cannot accept are dropped before
    scoring, the rest are checked under the grammar's masks, and the matcher is left where
    the kept tokens put it: the same output as plain decoding, and it matches the regex."""
    import re

    from app.structured import ConstraintCompiler, ConstraintSpec

    pattern = r"(ab|cd|ef)( (ab|cd|ef)){6,20}\."

    async def body(engine: Engine) -> Any:
        constraint = ConstraintCompiler(tokenizer, engine.model_config.vocab_size).compile(
            ConstraintSpec("regex", pattern, "guided_regex"))
        outs = []
        for params in (SamplingParams(max_tokens=60, temperature=0.0),
                       SamplingParams(max_tokens=60, temperature=0.8, seed=3)):
            stream = engine.submit_batch([tokenizer.encode("ab cd ab cd")], params,
                                         constraint=constraint)[0]
            text = ""
            async for out in stream:
                text += out.completions[0].text
            outs.append(text)
        return outs, engine.core.proposer

    plain, _ = with_engine("llama_gqa_llama3", body)
    spec, proposer = with_engine("llama_gqa_llama3", body, speculative=NGRAM)
    assert proposer.num_accepted_tokens > 0, "nothing kept under the grammar: untested"
    assert spec[0] == plain[0]  # greedy: identical
    for text in spec:
        assert re.fullmatch(pattern, text), text


def test_no_guesses_before_a_sequences_first_token_or_for_one_that_forks() -> None:
    """A prompt's last chunk can be one token long, like a decode: guessing there would
    let the n completions that fork after it share one sequence's guesses."""
    from app.engine.block_manager import BlockManager
    from app.engine.request import RequestKind, TokenSequence
    from app.engine.scheduler import Scheduler, SchedulerConfig

    proposer = Proposer(NGRAM)
    scheduler = Scheduler(SchedulerConfig(), BlockManager(64, 4), proposer)
    tokens = [5, 6, 7, 5, 6, 7, 5, 6]

    def seq(outputs: int, forks: int = 0) -> TokenSequence:
        s = TokenSequence(request_id="r", kind=RequestKind.GENERATE, token_ids=list(tokens),
                          num_prompt_tokens=len(tokens) - outputs,
                          params=SamplingParams(max_tokens=20, n=forks + 1))
        s.speculate, s.pending_forks = True, forks
        return s

    assert scheduler._drafts([seq(0)], 64) == {}  # the prompt's last token
    assert scheduler._drafts([seq(1, forks=3)], 64) == {}
    ready = seq(1)
    assert scheduler._drafts([ready], 64) == {ready.seq_id: (7, 5, 6)}


def test_min_tokens_holds_stop_ids_at_every_guessed_position(with_engine: Any) -> None:
    """A stop token id the model wants early, held off by min_tokens: with speculation
    the request guesses from its first token on (before min_tokens is reached), the hold
    applies position by position inside a verification step, and the output is plain
    decoding's, token for token, ending where plain decoding ends."""

    async def body(engine: Engine) -> Any:
        prompt = repetitive(engine.model_config.vocab_size, 5, 1)[0]
        free = (await engine.generate(prompt, GREEDY)).completions[0].token_ids
        stop_id = free[1]  # wanted at the second position, and later in the loop
        held = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True,
                              stop_token_ids=(stop_id,), min_tokens=8)
        out = (await engine.generate(prompt, held)).completions[0]
        return free, stop_id, out.token_ids, out.finish_reason, engine.core.proposer

    free, stop_id, plain, plain_reason, _ = with_engine("llama_gqa_llama3", body)
    assert stop_id in free[:2] and stop_id not in plain[:7], "min_tokens held nothing"
    _, _, tokens, reason, proposer = with_engine("llama_gqa_llama3", body, speculative=NGRAM)
    assert proposer.num_draft_tokens > 0, "it never speculated: nothing tested"
    assert (tokens, reason) == (plain, plain_reason)
