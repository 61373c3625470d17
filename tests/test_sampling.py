"""app.sampling's production path (sample_batch, and batched_probs inside it) checked
against Hugging Face `transformers`' logits processors and warpers (and the OpenAI penalty
formula written out by hand) on the same logits, row by row over mixed batches."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace

import pytest
import torch
from torch import Tensor
from transformers import (
    LogitsProcessor,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from app.sampling import (
    SampleRow,
    apply_logit_bias,
    apply_penalties,
    batched_probs,
    finite_logprobs,
    mask_tokens,
    sample_batch,
)
from app.sampling_params import (
    IMPOSSIBLE_LOGPROB,
    LogprobsMode,
    Sampled,
    SamplingParams,
    TokenLogprob,
)

ATOL = 1e-6
RTOL = 1e-5
NO_IDS = torch.zeros((1, 0), dtype=torch.long)


def random_logits(seed: int, vocab: int, scale: float = 3.0) -> Tensor:
    """Random fp32 logits (no exact ties) with enough spread that the filters cut."""
    torch.manual_seed(seed)
    return torch.randn(vocab, dtype=torch.float32) * scale


def hf_warped(logits: Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0,
              min_p: float = 0.0) -> Tensor:
    """(V,) logits -> (V,) scores after transformers' warpers, in vLLM / HF order."""
    warpers: list[LogitsProcessor] = [TemperatureLogitsWarper(temperature)]
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    if min_p > 0.0:
        warpers.append(MinPLogitsWarper(min_p))
    scores = logits.float()[None].clone()
    for warper in warpers:
        scores = warper(NO_IDS, scores)
    return scores[0]


def hf_repetition(logits: Tensor, penalty: float, ids: Sequence[int]) -> Tensor:
    processor = RepetitionPenaltyLogitsProcessor(penalty)
    input_ids = torch.tensor([list(ids)], dtype=torch.long)
    return processor(input_ids, logits.float()[None].clone())[0]


def openai_penalties(logits: Tensor, output_ids: Sequence[int], presence: float,
                     frequency: float) -> Tensor:
    """logits[j] - frequency * count[j] - presence * (count[j] > 0), counts over output."""
    counts = Counter(output_ids)
    out = logits.clone()
    for j, c in counts.items():
        out[j] = out[j] - frequency * c - presence * (1.0 if c > 0 else 0.0)
    return out


def sample_one(logits: Tensor, row: SampleRow) -> Sampled:
    """One row through the production sampler (a batch of one)."""
    return sample_batch(logits[None], [row], [0])[0]


def filter_columns(settings: Sequence[tuple[float, int, float, float]]) -> list[Tensor]:
    """Per-row (temperature, top_k, top_p, min_p) -> the four (R,) tensors batched_probs
    takes, built as sample_batch builds them."""
    t, k, p, m = zip(*settings, strict=True)
    return [torch.tensor(t), torch.tensor(k), torch.tensor(p), torch.tensor(m)]


def assert_all_finite(entry: TokenLogprob) -> None:
    assert math.isfinite(entry.logprob), entry
    for _, value in entry.top:
        assert math.isfinite(value), entry


# ----------------------------------------------------------------------------------------
# 1. temperature, top-k, top-p, min-p against transformers' warpers
# ----------------------------------------------------------------------------------------

FILTERS = [
    # (temperature, top_k, top_p, min_p)
    (0.7, 0, 1.0, 0.0),  # temperature alone
    (1.6, 0, 1.0, 0.0),
    (1.0, 10, 1.0, 0.0),  # top-k alone
    (1.0, 1, 1.0, 0.0),
    (1.0, 0, 0.8, 0.0),  # top-p alone
    (1.0, 0, 0.3, 0.0),
    (1.0, 0, 1.0, 0.1),  # min-p alone
    (1.0, 0, 1.0, 0.02),
    (0.8, 20, 0.9, 0.05),  # combined
    (1.5, 40, 0.7, 0.2),
    (0.5, 5, 0.95, 0.0),
    (1.2, 0, 0.6, 0.3),
    (0.9, 30, 1.0, 0.1),
]


@pytest.mark.parametrize(("seed", "vocab"), [(0, 50), (1, 128), (2, 500), (3, 257)])
def test_batched_probs_match_transformers_warpers_row_by_row(seed: int, vocab: int) -> None:
    """One mixed batch, every row with its own filters: each row must be what
    transformers' warpers make of that row alone."""
    torch.manual_seed(seed)
    logits = torch.randn(len(FILTERS), vocab) * 3
    probs = batched_probs(logits, *filter_columns(FILTERS))
    assert probs.shape == (len(FILTERS), vocab) and probs.dtype == torch.float32
    for row, (temperature, top_k, top_p, min_p) in enumerate(FILTERS):
        ours = probs[row]
        expected = torch.softmax(hf_warped(logits[row], temperature, top_k, top_p, min_p), -1)
        support, expected_support = ours > 0, expected > 0
        assert torch.equal(support, expected_support), (
            row, torch.nonzero(support != expected_support).flatten().tolist())
        if top_k:
            assert int(support.sum()) <= top_k
        if top_k or top_p < 1.0 or min_p > 0.0:
            assert int(support.sum()) < vocab  # the filter really removed something
        torch.testing.assert_close(ours, expected, atol=ATOL, rtol=RTOL)
        assert float(ours.sum()) == pytest.approx(1.0, abs=1e-6)
        assert int(torch.argmax(ours)) == int(torch.argmax(logits[row]))


def test_batched_top_k_keeps_exactly_the_k_largest_of_each_row() -> None:
    """Rows with different k (one beyond the vocabulary, so off) share a batch: each
    keeps its own k."""
    torch.manual_seed(7)
    logits = torch.randn(4, 300) * 3
    ks = [17, 1000, 0, 3]
    probs = batched_probs(logits, *filter_columns([(1.0, k, 1.0, 0.0) for k in ks]))
    for row, k in enumerate(ks):
        full = torch.softmax(logits[row], -1)
        if not 0 < k < 300:
            torch.testing.assert_close(probs[row], full, atol=ATOL, rtol=RTOL)
            continue
        kept = set(torch.nonzero(probs[row]).flatten().tolist())
        assert kept == set(torch.topk(logits[row], k).indices.tolist())
        # Within the support the ratios are those of the untouched softmax.
        ids = sorted(kept)
        torch.testing.assert_close(probs[row][ids], full[ids] / full[ids].sum(), atol=ATOL,
                                   rtol=RTOL)


# ----------------------------------------------------------------------------------------
# 2. repetition penalty against RepetitionPenaltyLogitsProcessor
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("penalty", [1.3, 2.0, 0.7])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_repetition_penalty_matches_transformers(seed: int, penalty: float) -> None:
    vocab = 97
    logits = random_logits(seed, vocab)
    logits[5] = 0.0  # exactly zero: unchanged either way
    prompt = [3, 5, 11, 11, 40, 96, 3]
    output = [11, 60, 60, 0, 7]
    params = SamplingParams(repetition_penalty=penalty)

    ours = apply_penalties(logits, params, prompt, output)
    expected = hf_repetition(logits, penalty, prompt + output)
    torch.testing.assert_close(ours, expected, atol=ATOL, rtol=RTOL)

    seen = set(prompt) | set(output)
    for j in range(vocab):
        x = float(logits[j])
        if j not in seen:
            assert float(ours[j]) == x
        elif x > 0:
            assert float(ours[j]) == pytest.approx(x / penalty, rel=1e-6)
        else:
            assert float(ours[j]) == pytest.approx(x * penalty, rel=1e-6)
    # Prompt-only tokens are penalised too (as transformers' input_ids are).
    assert float(ours[40]) != float(logits[40]) and float(ours[96]) != float(logits[96])
    assert float(logits[5]) == 0.0  # the input is not modified in place


def test_repetition_penalty_with_no_history_is_identity() -> None:
    logits = random_logits(4, 50)
    params = SamplingParams(repetition_penalty=1.5)
    assert torch.equal(apply_penalties(logits, params, [], []), logits)
    assert apply_penalties(logits, SamplingParams(), [1, 2], [3]) is logits


# ----------------------------------------------------------------------------------------
# 3. presence / frequency penalties: OpenAI's formula, over output tokens only
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("presence", "frequency"),
                         [(0.5, 0.0), (0.0, 0.7), (1.5, -0.5), (-1.0, 2.0), (2.0, 2.0)])
def test_presence_frequency_penalties_follow_openai_formula(presence: float,
                                                            frequency: float) -> None:
    vocab = 80
    logits = random_logits(11, vocab)
    prompt = [1, 2, 2, 9, 30, 79]
    output = [2, 4, 4, 4, 9, 50, 79, 79]
    params = SamplingParams(presence_penalty=presence, frequency_penalty=frequency)

    ours = apply_penalties(logits, params, prompt, output)
    expected = openai_penalties(logits, output, presence, frequency)
    torch.testing.assert_close(ours, expected, atol=ATOL, rtol=RTOL)

    # Spelled out for a few ids: prompt-only tokens (1, 30) are untouched.
    assert float(ours[1]) == float(logits[1])
    assert float(ours[30]) == float(logits[30])
    assert float(ours[4]) == pytest.approx(float(logits[4]) - 3 * frequency - presence,
                                           abs=1e-5)
    assert float(ours[50]) == pytest.approx(float(logits[50]) - frequency - presence, abs=1e-5)
    assert float(ours[0]) == float(logits[0])


def test_presence_frequency_without_output_is_identity() -> None:
    logits = random_logits(12, 40)
    params = SamplingParams(presence_penalty=1.0, frequency_penalty=1.0)
    assert torch.equal(apply_penalties(logits, params, [1, 2, 3], []), logits)


def test_all_penalties_together_repetition_first() -> None:
    logits = random_logits(13, 64)
    prompt = [0, 3, 3, 17]
    output = [3, 8, 8, 40]
    params = SamplingParams(repetition_penalty=1.4, presence_penalty=0.3,
                            frequency_penalty=0.6)
    ours = apply_penalties(logits, params, prompt, output)
    expected = openai_penalties(hf_repetition(logits, 1.4, prompt + output), output, 0.3, 0.6)
    torch.testing.assert_close(ours, expected, atol=ATOL, rtol=RTOL)


# ----------------------------------------------------------------------------------------
# 4. logit_bias
# ----------------------------------------------------------------------------------------

def test_logit_bias_adds_to_the_named_ids() -> None:
    logits = random_logits(20, 100)
    bias = ((3, 2.5), (7, -1.0), (99, 100.0), (0, -100.0))
    ours = apply_logit_bias(logits, bias)
    expected = logits.clone()
    for token, b in bias:
        expected[token] += b
    torch.testing.assert_close(ours, expected, atol=ATOL, rtol=RTOL)
    untouched = [j for j in range(100) if j not in {3, 7, 99, 0}]
    assert torch.equal(ours[untouched], logits[untouched])
    assert apply_logit_bias(logits, ()) is logits


def test_logit_bias_steers_greedy_sampling() -> None:
    logits = random_logits(21, 100)
    best = int(torch.argmax(logits))
    low = int(torch.argmin(logits))
    assert sample_one(logits, SampleRow(SamplingParams(temperature=0.0))).token_id == best

    boosted = SampleRow(SamplingParams(temperature=0.0, logit_bias=((low, 100.0),)))
    assert sample_one(logits, boosted).token_id == low

    second = int(torch.topk(logits, 2).indices[1])
    banned = SampleRow(SamplingParams(temperature=0.0, logit_bias=((best, -100.0),)))
    assert sample_one(logits, banned).token_id == second

    # Sampling (temperature 1) with a +100 bias is as good as certain.
    seeded = SampleRow(SamplingParams(temperature=1.0, logit_bias=((low, 100.0),)),
                       generator=torch.Generator().manual_seed(0))
    assert sample_one(logits, seeded).token_id == low


def test_mask_tokens_sets_minus_inf() -> None:
    logits = random_logits(22, 30)
    masked = mask_tokens(logits, [2, 5])
    assert masked[2] == float("-inf") and masked[5] == float("-inf")
    others = [j for j in range(30) if j not in {2, 5}]
    assert torch.equal(masked[others], logits[others])
    assert torch.isfinite(logits).all()  # not in place
    best = int(torch.argmax(logits))
    row = SampleRow(SamplingParams(temperature=0.0), banned_ids=(best,))
    assert sample_one(logits, row).token_id != best


# ----------------------------------------------------------------------------------------
# 5. raw vs processed logprobs
# ----------------------------------------------------------------------------------------

def test_raw_logprobs_are_log_softmax_of_raw_logits() -> None:
    logits = random_logits(30, 120)
    params = SamplingParams(temperature=0.8, top_k=5, repetition_penalty=1.3,
                            presence_penalty=0.5, logit_bias=((9, 4.0),), logprobs=True,
                            top_logprobs=8, logprobs_mode=LogprobsMode.RAW)
    row = SampleRow(params, prompt_ids=[1, 2, 3], output_ids=[9, 9],
                    generator=torch.Generator().manual_seed(1))
    result = sample_one(logits, row)
    assert result.logprob is not None
    entry = result.logprob
    expected = torch.log_softmax(logits, -1)
    assert entry.token_id == result.token_id
    assert entry.logprob == pytest.approx(float(expected[result.token_id]), abs=ATOL)
    values, ids = torch.topk(expected, 8)
    assert [t for t, _ in entry.top] == ids.tolist()
    assert [v for _, v in entry.top] == pytest.approx(values.tolist(), abs=ATOL)
    assert_all_finite(entry)


@pytest.mark.parametrize(("temperature", "top_k", "top_p", "min_p"),
                         [(0.7, 3, 1.0, 0.0), (1.3, 6, 0.8, 0.0), (1.0, 10, 0.9, 0.1),
                          (0.5, 0, 0.7, 0.0)])
@pytest.mark.parametrize("seed", [0, 1])
def test_processed_logprobs_are_log_of_filtered_probs(seed: int, temperature: float,
                                                      top_k: int, top_p: float,
                                                      min_p: float) -> None:
    vocab = 200
    logits = random_logits(40 + seed, vocab)
    bias = ((int(torch.argmin(logits)), 6.0),)
    prompt, output = [4, 5, 6], [5, 7, 7]
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                            repetition_penalty=1.2, frequency_penalty=0.4, logit_bias=bias,
                            logprobs=True, top_logprobs=20)
    assert params.logprobs_mode is LogprobsMode.PROCESSED
    row = SampleRow(params, prompt_ids=prompt, output_ids=output,
                    generator=torch.Generator().manual_seed(seed))
    result = sample_one(logits, row)
    assert result.logprob is not None
    entry = result.logprob
    assert_all_finite(entry)

    # The processed logits, built independently of app.sampling.
    processed = logits.clone()
    processed[bias[0][0]] += bias[0][1]
    processed = openai_penalties(hf_repetition(processed, 1.2, prompt + output), output,
                                 0.0, 0.4)
    hf_lp = torch.log_softmax(hf_warped(processed, temperature, top_k, top_p, min_p), -1)
    expected = finite_logprobs(hf_lp)
    support = torch.isfinite(hf_lp)

    assert bool(support[result.token_id])  # never draws a filtered token
    assert entry.logprob == pytest.approx(float(expected[result.token_id]), abs=1e-5)
    n_kept = int(support.sum())
    assert n_kept < 20  # so the top list shows removed tokens too
    kept = entry.top[:n_kept]
    removed = entry.top[n_kept:]
    assert {t for t, _ in kept} == set(torch.nonzero(support).flatten().tolist())
    for token, value in kept:
        assert value == pytest.approx(float(hf_lp[token]), abs=1e-5)
        assert value > IMPOSSIBLE_LOGPROB
    assert len(removed) == 20 - n_kept
    for token, value in removed:
        assert not bool(support[token])
        assert value == IMPOSSIBLE_LOGPROB  # exactly the floor, never -inf


def test_processed_logprobs_report_top_k_removals_as_the_floor() -> None:
    logits = random_logits(50, 64)
    params = SamplingParams(temperature=1.0, top_k=2, logprobs=True, top_logprobs=5)
    result = sample_one(logits, SampleRow(params, generator=torch.Generator().manual_seed(0)))
    assert result.logprob is not None
    values = [v for _, v in result.logprob.top]
    top2 = torch.log_softmax(torch.topk(logits, 2).values, -1)
    assert values[:2] == pytest.approx(top2.tolist(), abs=ATOL)
    assert values[2:] == [IMPOSSIBLE_LOGPROB] * 3
    assert_all_finite(result.logprob)


def test_greedy_processed_logprobs_are_log_softmax_of_processed_logits() -> None:
    vocab = 12
    logits = random_logits(60, vocab)
    prompt, output = [0, 1, 1], [2, 3, 3]
    bias = ((4, 1.5), (5, -2.0))
    banned = (6,)
    params = SamplingParams(temperature=0.0, top_k=3, top_p=0.5, repetition_penalty=1.5,
                            presence_penalty=0.2, frequency_penalty=0.3, logit_bias=bias,
                            logprobs=True, top_logprobs=vocab)
    row = SampleRow(params, prompt_ids=prompt, output_ids=output, banned_ids=banned)
    result = sample_one(logits, row)
    assert result.logprob is not None

    processed = logits.clone()
    for token, b in bias:
        processed[token] += b
    processed[6] = float("-inf")
    processed = openai_penalties(hf_repetition(processed, 1.5, prompt + output), output,
                                 0.2, 0.3)
    expected = torch.log_softmax(processed, -1)  # temperature 1, no top-k / top-p
    assert result.token_id == int(torch.argmax(processed))
    assert result.logprob.logprob == pytest.approx(float(expected[result.token_id]), abs=ATOL)
    got = dict(result.logprob.top)
    assert set(got) == set(range(vocab))
    for token in range(vocab):
        if token in banned:
            assert got[token] == IMPOSSIBLE_LOGPROB
        else:
            assert got[token] == pytest.approx(float(expected[token]), abs=ATOL)
    assert_all_finite(result.logprob)


@pytest.mark.parametrize("mode", [LogprobsMode.RAW, LogprobsMode.PROCESSED])
@pytest.mark.parametrize("temperature", [0.0, 1e-6, 0.3, 1.0, 5.0])
def test_every_reported_logprob_is_finite(mode: LogprobsMode, temperature: float) -> None:
    logits = random_logits(70, 50, scale=30.0)
    params = SamplingParams(temperature=temperature, top_k=4, top_p=0.9, min_p=0.05,
                            logprobs=True, top_logprobs=20, logprobs_mode=mode)
    row = SampleRow(params, banned_ids=(int(torch.argmax(logits)),),
                    generator=torch.Generator().manual_seed(3))
    entry = sample_one(logits, row).logprob
    assert entry is not None
    assert_all_finite(entry)
    assert len(entry.top) == 20


def test_finite_logprobs_floor() -> None:
    lp = finite_logprobs(torch.tensor([0.0, -1.5, float("-inf")]))
    assert lp.tolist() == [0.0, -1.5, IMPOSSIBLE_LOGPROB]
    assert all(math.isfinite(v) for v in lp.tolist())


# ----------------------------------------------------------------------------------------
# 6. sample_batch
# ----------------------------------------------------------------------------------------

def test_sample_batch_plain_greedy_rows_share_logits_rows_by_index() -> None:
    torch.manual_seed(80)
    logits = torch.randn(3, 150) * 3
    greedy = SamplingParams(temperature=0.0)
    index = [0, 2, 0, 1, 2]
    rows = [SampleRow(greedy) for _ in index]
    results = sample_batch(logits, rows, index)
    assert [r.token_id for r in results] == [int(torch.argmax(logits[i])) for i in index]
    assert all(r.logprob is None for r in results)


def test_sample_batch_mixed_rows() -> None:
    torch.manual_seed(81)
    logits = torch.randn(2, 150) * 3
    original = logits.clone()
    best0, best1 = int(torch.argmax(logits[0])), int(torch.argmax(logits[1]))
    low0 = int(torch.argmin(logits[0]))
    rows = [
        SampleRow(SamplingParams(temperature=0.0)),  # plain greedy on row 0
        SampleRow(SamplingParams(temperature=0.0, logit_bias=((low0, 100.0),))),  # row 0
        SampleRow(SamplingParams(temperature=0.0, logprobs=True, top_logprobs=2)),  # row 1
        SampleRow(SamplingParams(temperature=0.0, repetition_penalty=1e-3),
                  output_ids=[low0]),  # row 0, penalties reach it on a shared row
        SampleRow(SamplingParams(temperature=0.0)),  # plain greedy on row 1
    ]
    results = sample_batch(logits, rows, [0, 0, 1, 0, 1])
    assert results[0].token_id == best0
    assert results[1].token_id == low0
    assert results[2].token_id == best1
    assert results[2].logprob is not None
    assert results[2].logprob.logprob == pytest.approx(
        float(torch.log_softmax(logits[1], -1)[best1]), abs=ATOL)
    expected3 = hf_repetition(logits[0], 1e-3, [low0])
    assert results[3].token_id == int(torch.argmax(expected3))
    assert results[4].token_id == best1
    assert torch.equal(logits, original)  # nobody wrote into the shared rows


def _seeded_run(logits: Tensor, seeds: Sequence[int], index: Sequence[int],
                steps: int) -> list[list[int]]:
    params = SamplingParams(temperature=1.0, top_k=50)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    tokens: list[list[int]] = [[] for _ in seeds]
    for _ in range(steps):
        rows = [SampleRow(params, generator=g) for g in gens]
        results: list[Sampled] = sample_batch(logits, rows, index)
        for out, r in zip(tokens, results, strict=True):
            out.append(r.token_id)
    return tokens


def test_sample_batch_seeded_rows_are_reproducible() -> None:
    torch.manual_seed(90)
    logits = torch.randn(2, 400) * 0.5  # flat-ish: many tokens are likely
    first = _seeded_run(logits, [1, 2, 1], [0, 0, 1], steps=12)
    second = _seeded_run(logits, [1, 2, 1], [0, 0, 1], steps=12)
    assert first == second
    assert first[0] != first[1]  # different seeds on the same logits row draw differently
    # A seeded row draws the same whatever else shares its batch.
    alone = _seeded_run(logits, [2], [0], steps=12)
    assert alone[0] == first[1]
    top50 = [set(torch.topk(logits[i], 50).indices.tolist()) for i in range(2)]
    for tokens, i in zip(first, [0, 0, 1], strict=True):
        assert set(tokens) <= top50[i]


def test_sample_batch_draws_follow_the_processed_distribution() -> None:
    """Many draws through the production sampler land as often as transformers' warped
    distribution says, and never on a token top-k removed."""
    logits = torch.log(torch.tensor([0.5, 0.3, 0.2, 1e-3, 1e-3]))
    params = SamplingParams(temperature=1.0, top_k=3)
    generator = torch.Generator().manual_seed(0)
    n = 4000
    results = sample_batch(logits[None], [SampleRow(params, generator=generator)] * n, [0] * n)
    counts = Counter(r.token_id for r in results)
    expected = torch.softmax(hf_warped(logits, 1.0, top_k=3), -1)
    assert counts[3] == counts[4] == 0
    for token in range(3):
        assert counts[token] / n == pytest.approx(float(expected[token]), abs=0.03)


VOCAB = 48
# A mixed batch: every kind of row the engine sends, with its own parameters; rows 0 and
# 1 of the logits are shared by several draws (the n completions of one request).
MIXED: list[tuple[int, SamplingParams, tuple[int, ...]]] = [
    # (logits row, parameters, banned ids)
    (0, SamplingParams(temperature=0.7), ()),
    (0, SamplingParams(temperature=1.3, top_k=10, repetition_penalty=1.3), (5,)),
    (1, SamplingParams(temperature=0.9, top_p=0.8, presence_penalty=0.5,
                       frequency_penalty=0.3), ()),
    (2, SamplingParams(temperature=1.0, min_p=0.1, logit_bias=((3, 5.0), (7, -2.0))), ()),
    (3, SamplingParams(temperature=0.8, top_k=20, top_p=0.9, min_p=0.05,
                       repetition_penalty=0.8, frequency_penalty=-0.5,
                       logit_bias=((0, 3.0),)), (1, 2)),
    (1, SamplingParams(temperature=0.0, repetition_penalty=1.5, logit_bias=((9, 1.0),)), (4,)),
    (2, SamplingParams(temperature=1.1, top_k=5, repetition_penalty=2.0,
                       logprobs_mode=LogprobsMode.RAW), ()),
]
PROMPT, OUTPUT = (1, 2, 3, 9, 9), (4, 9, 11, 11, 11, 30)


def hf_logprobs(logits: Tensor, params: SamplingParams, banned: tuple[int, ...]) -> Tensor:
    """The log-distribution a row reports, built from transformers' processors and
    warpers (and OpenAI's penalty formula) on that row alone."""
    if params.logprobs_mode is LogprobsMode.RAW:
        return torch.log_softmax(logits, -1)
    x = logits.clone()
    for token, bias in params.logit_bias:
        x[token] += bias
    x[list(banned)] = float("-inf")
    if params.repetition_penalty != 1.0:
        x = hf_repetition(x, params.repetition_penalty, PROMPT + OUTPUT)
    x = openai_penalties(x, OUTPUT, params.presence_penalty, params.frequency_penalty)
    if params.greedy:  # greedy reports the processed distribution at temperature 1
        return torch.log_softmax(x, -1)
    return torch.log_softmax(hf_warped(x, params.temperature, params.top_k, params.top_p,
                                       params.min_p), -1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sample_batch_matches_transformers_row_by_row_in_a_mixed_batch(seed: int) -> None:
    """Every row's reported distribution (all VOCAB tokens) is what transformers makes of
    that row alone, whatever else shares the batch; drawn tokens lie in it, greedy rows
    take its argmax."""
    torch.manual_seed(seed)
    logits = torch.randn(4, VOCAB) * 3
    rows = [SampleRow(replace(p, logprobs=True, top_logprobs=VOCAB), PROMPT, OUTPUT, banned,
                      torch.Generator().manual_seed(seed * 100 + i))
            for i, (_, p, banned) in enumerate(MIXED)]
    results = sample_batch(logits, rows, [index for index, _, _ in MIXED])
    assert len(results) == len(MIXED)
    for (index, params, banned), result in zip(MIXED, results, strict=True):
        expected = hf_logprobs(logits[index], params, banned)
        entry = result.logprob
        assert entry is not None and entry.token_id == result.token_id
        got = dict(entry.top)
        assert set(got) == set(range(VOCAB))
        ours = torch.tensor([got[t] for t in range(VOCAB)])
        possible = torch.isfinite(expected)
        assert torch.equal(ours > IMPOSSIBLE_LOGPROB, possible), (index, params)
        torch.testing.assert_close(ours[possible], expected[possible], atol=1e-5, rtol=1e-5)
        assert bool(possible[result.token_id])
        assert entry.logprob == pytest.approx(float(expected[result.token_id]), abs=1e-5)
        if params.greedy:
            assert result.token_id == int(torch.argmax(expected))
