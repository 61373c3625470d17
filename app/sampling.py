"""Sampling as pure functions: logits + parameters -> token ids and log-probabilities.

Order of processing for one row (as in vLLM and `transformers`):
  raw logits -> logit_bias -> min_tokens mask -> repetition / presence / frequency
  penalties -> temperature -> top-k -> top-p -> min-p -> sample (or argmax when greedy)

Every row that samples draws from its own torch.Generator, so a seeded request gets the
same tokens whatever else shares its batch. Log-probabilities are never -inf: a token the
processed distribution cannot produce reports IMPOSSIBLE_LOGPROB (a finite floor).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from app.sampling_params import IMPOSSIBLE_LOGPROB, LogprobsMode, SamplingParams, TokenLogprob


@dataclass(frozen=True)
class SampleRow:
    """What the sampler needs to know about one draw from one row of the logits. A
    snapshot: the token lists are copies, taken only when penalties need them."""

    params: SamplingParams
    prompt_ids: Sequence[int] = ()
    output_ids: Sequence[int] = ()
    banned_ids: tuple[int, ...] = ()  # EOS / stop ids while min_tokens is not reached
    generator: torch.Generator | None = None


@dataclass
class Sampled:
    token_id: int
    logprob: TokenLogprob | None


def apply_logit_bias(logits: Tensor, bias: Sequence[tuple[int, float]]) -> Tensor:
    if not bias:
        return logits
    ids = torch.tensor([t for t, _ in bias], device=logits.device)
    values = torch.tensor([b for _, b in bias], device=logits.device, dtype=logits.dtype)
    return logits.index_add(-1, ids, values)


def mask_tokens(logits: Tensor, token_ids: Sequence[int]) -> Tensor:
    if not token_ids:
        return logits
    out = logits.clone()
    out[..., list(token_ids)] = float("-inf")
    return out


def apply_penalties(logits: Tensor, params: SamplingParams, prompt_ids: Sequence[int],
                    output_ids: Sequence[int]) -> Tensor:
    """Repetition penalty over prompt and output tokens (divide positive logits, multiply
    negative ones); presence and frequency penalties over output tokens (OpenAI's)."""
    if not params.needs_penalties:
        return logits
    out = logits.clone()
    vocab = out.shape[-1]
    if params.repetition_penalty != 1.0:
        seen = torch.tensor(sorted(set(prompt_ids) | set(output_ids)), dtype=torch.long,
                            device=out.device)
        if seen.numel():
            values = out[seen]
            out[seen] = torch.where(values > 0, values / params.repetition_penalty,
                                    values * params.repetition_penalty)
    if output_ids and (params.presence_penalty or params.frequency_penalty):
        counts = torch.bincount(torch.tensor(list(output_ids), device=out.device),
                                minlength=vocab)[:vocab].to(out.dtype)
        out -= params.frequency_penalty * counts + params.presence_penalty * (counts > 0)
    return out


def logits_to_probs(logits: Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0,
                    min_p: float = 0.0) -> Tensor:
    """(V,) logits -> (V,) probabilities after temperature and the three filters."""
    logits = logits.float() / max(temperature, 1e-4)
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # Keep the smallest set whose mass reaches top_p (always at least one token).
        drop = sorted_probs.cumsum(-1) - sorted_probs >= top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    if min_p > 0.0:
        probs = probs.masked_fill(probs < min_p * probs.max(), 0.0)
    return probs / probs.sum()


def draw(probs: Tensor, generator: torch.Generator | None) -> int:
    """One token from `probs`: the exponential race argmax(p / E), E ~ Exp(1), which is an
    exact categorical draw that needs one random number per token and no cumsum."""
    noise = torch.empty_like(probs).exponential_(1.0, generator=generator)
    return int(torch.argmax(probs / noise))


def finite_logprobs(logprobs: Tensor) -> Tensor:
    """-inf (an impossible token) -> IMPOSSIBLE_LOGPROB, so every value is valid JSON."""
    return logprobs.clamp(min=IMPOSSIBLE_LOGPROB)


def _logprob_entry(logprobs: Tensor, token_id: int, top_n: int) -> TokenLogprob:
    logprobs = finite_logprobs(logprobs)
    top: list[tuple[int, float]] = []
    if top_n:
        values, ids = torch.topk(logprobs, top_n)
        top = list(zip(ids.tolist(), values.tolist(), strict=True))
    return TokenLogprob(token_id, float(logprobs[token_id]), top)


def sample_row(logits: Tensor, row: SampleRow) -> Sampled:
    """(V,) float logits of one row -> the chosen token (and its log-probabilities)."""
    p = row.params
    processed = apply_logit_bias(logits, p.logit_bias)
    processed = mask_tokens(processed, row.banned_ids)
    processed = apply_penalties(processed, p, row.prompt_ids, row.output_ids)
    if p.greedy:
        token = int(torch.argmax(processed))
        probs = None
    else:
        probs = logits_to_probs(processed, p.temperature, p.top_k, p.top_p, p.min_p)
        token = draw(probs, row.generator)
    entry = None
    if p.logprobs:
        if p.logprobs_mode is LogprobsMode.RAW:
            lp = torch.log_softmax(logits.float(), -1)
        elif probs is None:  # greedy: the processed distribution at temperature 1
            lp = torch.log_softmax(processed.float(), -1)
        else:
            lp = torch.log(probs)
        entry = _logprob_entry(lp, token, p.top_logprobs)
    return Sampled(token, entry)


def is_plain_greedy(row: SampleRow) -> bool:
    p = row.params
    return (p.greedy and not p.needs_penalties and not p.logit_bias and not row.banned_ids
            and not p.logprobs)


def sample_batch(logits: Tensor, rows: Sequence[SampleRow], index: Sequence[int]
                 ) -> list[Sampled]:
    """(B, V) logits -> one Sampled per row; rows[i] draws from logits[index[i]] (the n
    completions of a forking request share a row). Plain greedy rows take one batched
    argmax."""
    logits = logits.float()
    results: list[Sampled | None] = [None] * len(rows)
    plain = [i for i, r in enumerate(rows) if is_plain_greedy(r)]
    if plain:
        picked = torch.tensor([index[i] for i in plain], device=logits.device)
        for i, token in zip(plain, logits[picked].argmax(-1).tolist(), strict=True):
            results[i] = Sampled(int(token), None)
    for i, row in enumerate(rows):
        if results[i] is None:
            results[i] = sample_row(logits[index[i]], row)
    return [r for r in results if r is not None]


def next_token_distribution(logits: Tensor, temperature: float, k: int
                            ) -> list[tuple[int, float, float]]:
    """The top-k of softmax(logits / temperature): [(token_id, prob, logprob)]."""
    # Tiny temperatures would overflow the division; below 1e-4 the result is one-hot anyway.
    temperature = max(temperature, 1e-4) if temperature > 0 else 1.0
    logprobs = finite_logprobs(torch.log_softmax(logits.float() / temperature, dim=-1))
    values, ids = torch.topk(logprobs, min(max(k, 1), logprobs.shape[-1]))
    return [(int(i), float(v.exp()), float(v)) for i, v in zip(ids, values, strict=True)]


def prompt_logprobs(logits: Tensor, targets: Tensor) -> Tensor:
    """(T, V) logits and (T,) next tokens -> (T,) log P(target | prefix), raw model values."""
    logprobs = torch.log_softmax(logits.float(), -1).gather(-1, targets[:, None])[:, 0]
    return finite_logprobs(logprobs)
