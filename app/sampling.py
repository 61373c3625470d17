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
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from app.sampling_params import (
    IMPOSSIBLE_LOGPROB,
    LogprobsMode,
    Sampled,
    SamplingParams,
    TokenLogprob,
)

if TYPE_CHECKING:
    from app.structured import Matcher


@dataclass(frozen=True)
class SampleRow:
    """What the sampler needs to know about one draw from one row of the logits. A
    snapshot: the token lists are copies, taken only when penalties need them."""

    params: SamplingParams
    prompt_ids: Sequence[int] = ()
    output_ids: Sequence[int] = ()
    banned_ids: tuple[int, ...] = ()  # EOS / stop ids while min_tokens is not reached
    generator: torch.Generator | None = None
    # How many draws from this one on banned_ids still holds for (min_tokens minus the
    # tokens generated): speculative verification scores several positions in one step.
    held_positions: int = 0


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


def finite_logprobs(logprobs: Tensor) -> Tensor:
    """-inf (an impossible token) -> IMPOSSIBLE_LOGPROB, so every value is valid JSON."""
    return logprobs.clamp(min=IMPOSSIBLE_LOGPROB)


def logprob_entry(logprobs: Tensor, token_id: int, top_n: int) -> TokenLogprob:
    logprobs = finite_logprobs(logprobs)
    top: list[tuple[int, float]] = []
    if top_n:
        values, ids = torch.topk(logprobs, top_n)
        top = list(zip(ids.tolist(), values.tolist(), strict=True))
    return TokenLogprob(token_id, float(logprobs[token_id]), top)


def is_plain_greedy(row: SampleRow) -> bool:
    p = row.params
    return (p.greedy and not p.needs_penalties and not p.logit_bias and not row.banned_ids
            and not p.logprobs)


def batched_probs(logits: Tensor, temperature: Tensor, top_k: Tensor, top_p: Tensor,
                  min_p: Tensor) -> Tensor:
    """(R, V) logits and per-row parameters (R,) -> (R, V) probabilities: each row after
    its own temperature, then top-k (0, or k >= V: off), top-p (the smallest set whose mass
    reaches top_p, at least one token) and min-p (tokens below min_p times the likeliest
    one's probability), in a few batched ops for all rows."""
    x = logits.float() / temperature.clamp(min=1e-4)[:, None]
    vocab = x.shape[-1]
    limited = (top_k > 0) & (top_k < vocab)
    if bool(limited.any()):
        widest = int(top_k[limited].max())
        values = torch.topk(x, widest, dim=-1).values  # (R, widest), largest first
        kth = values.gather(1, (top_k.clamp(1, widest) - 1)[:, None])
        kth = torch.where(limited[:, None], kth, torch.full_like(kth, float("-inf")))
        x = x.masked_fill(x < kth, float("-inf"))
    probs = torch.softmax(x, dim=-1)
    nucleus = (top_p < 1.0).nonzero().flatten()
    if nucleus.numel():
        sorted_probs, order = torch.sort(probs[nucleus], dim=-1, descending=True)
        drop = sorted_probs.cumsum(-1) - sorted_probs >= top_p[nucleus][:, None]
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs[nucleus] = torch.zeros_like(sorted_probs).scatter(-1, order, sorted_probs)
    if bool((min_p > 0).any()):
        floor = min_p[:, None] * probs.max(dim=-1, keepdim=True).values
        probs = probs.masked_fill(probs < floor, 0.0)
    return probs / probs.sum(dim=-1, keepdim=True)


def allowed_tokens(matcher: Matcher, vocab: int, eos_ids: Sequence[int]) -> Tensor:
    """(V,) bool: the tokens a structured-output matcher (llguidance) allows next. A
    matcher in an error state, or one that allows nothing, allows EOS only, so the
    completion ends instead of sampling from nothing."""
    allowed = torch.zeros(vocab, dtype=torch.bool)
    if not matcher.is_error():
        bits = np.unpackbits(np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8),
                             bitorder="little")[:vocab]
        allowed = torch.from_numpy(bits.astype(np.bool_))
    if not bool(allowed.any()):
        allowed[list(eos_ids)] = True
    return allowed


def sample_batch(logits: Tensor, rows: Sequence[SampleRow], index: Sequence[int],
                 masks: Sequence[Tensor | None] | None = None) -> list[Sampled]:
    """(B, V) logits -> one Sampled per row; rows[i] draws from logits[index[i]] (the n
    completions of a forking request share a row). Plain greedy rows take one batched
    argmax; the others are processed together: per-row bias, masks and penalties (when a
    row has them), then temperature, top-k, top-p and min-p as batched ops, and one draw
    per row from its own generator, so a row's token does not depend on its batch.
    masks[i] (structured output): the tokens row i may take, applied after bias and
    penalties, before temperature and the filters; `raw` logprobs ignore it."""
    logits = logits.float()
    masks = masks or [None] * len(rows)
    results: list[Sampled | None] = [None] * len(rows)
    plain = [i for i, r in enumerate(rows) if is_plain_greedy(r) and masks[i] is None]
    if len(plain) == len(rows) and list(index) == list(range(logits.shape[0])):
        # every row greedy, one per logits row in order (the common decode step): one
        # argmax, no gather (which costs more than the argmax of a row or two)
        return [Sampled(token, None) for token in logits.argmax(-1).tolist()]
    if plain:
        picked = torch.tensor([index[i] for i in plain], device=logits.device)
        for i, token in zip(plain, logits[picked].argmax(-1).tolist(), strict=True):
            results[i] = Sampled(int(token), None)
    others = [i for i in range(len(rows)) if results[i] is None]
    if not others:
        return [r for r in results if r is not None]
    raw = logits[torch.tensor([index[i] for i in others], device=logits.device)]  # (R, V)
    processed = raw
    for j, i in enumerate(others):
        row, p, allowed = rows[i], rows[i].params, masks[i]
        if p.logit_bias or row.banned_ids or p.needs_penalties or allowed is not None:
            if processed is raw:
                processed = raw.clone()
            one = apply_logit_bias(raw[j], p.logit_bias)
            if allowed is not None:
                one = one.masked_fill(~allowed.to(one.device), float("-inf"))
                held = mask_tokens(one, row.banned_ids)
                # A grammar that can only end now wins over min_tokens' hold on EOS.
                one = held if bool(torch.isfinite(held).any()) else one
            else:
                one = mask_tokens(one, row.banned_ids)
            processed[j] = apply_penalties(one, p, row.prompt_ids, row.output_ids)
    tokens: dict[int, int] = {}
    probs: dict[int, Tensor] = {}
    greedy = [j for j, i in enumerate(others) if rows[i].params.greedy]
    if greedy:
        for j, token in zip(greedy, processed[greedy].argmax(-1).tolist(), strict=True):
            tokens[j] = int(token)
    drawn = [j for j, i in enumerate(others) if not rows[i].params.greedy]
    if drawn:
        params = [rows[others[j]].params for j in drawn]
        device = logits.device
        batch = batched_probs(
            processed[drawn],
            torch.tensor([p.temperature for p in params], device=device),
            torch.tensor([p.top_k for p in params], device=device),
            torch.tensor([p.top_p for p in params], device=device),
            torch.tensor([p.min_p for p in params], device=device))
        # The exponential race argmax(p / E), E ~ Exp(1), each row's E from its own
        # generator: an exact categorical draw with one random number per token, no cumsum.
        noise = torch.stack([torch.empty(batch.shape[-1], device=device).exponential_(
            1.0, generator=rows[others[j]].generator) for j in drawn])
        for k, (j, token) in enumerate(zip(drawn, (batch / noise).argmax(-1).tolist(),
                                           strict=True)):
            tokens[j] = int(token)
            probs[j] = batch[k]
    for j, i in enumerate(others):
        p = rows[i].params
        entry = None
        if p.logprobs:
            if p.logprobs_mode is LogprobsMode.RAW:
                lp = torch.log_softmax(raw[j], -1)
            elif j in probs:
                lp = torch.log(probs[j])
            else:  # greedy: the processed distribution at temperature 1
                lp = torch.log_softmax(processed[j], -1)
            entry = logprob_entry(lp, tokens[j], p.top_logprobs)
        results[i] = Sampled(tokens[j], entry)
    return [r for r in results if r is not None]


def next_token_distribution(logits: Tensor, temperature: float, k: int
                            ) -> list[tuple[int, float, float]]:
    """The top-k of softmax(logits / temperature): [(token_id, prob, logprob)]."""
    # Tiny temperatures would overflow the division; below 1e-4 the result is one-hot anyway.
    temperature = max(temperature, 1e-4) if temperature > 0 else 1.0
    logprobs = finite_logprobs(torch.log_softmax(logits.float() / temperature, dim=-1))
    values, ids = torch.topk(logprobs, min(max(k, 1), logprobs.shape[-1]))
    return [(int(i), float(v.exp()), float(v)) for i, v in zip(ids, values, strict=True)]


def prompt_top_logprobs(logits: Tensor, targets: Tensor, k: int
                        ) -> list[list[tuple[int, float, int]]]:
    """(T, V) logits, (T,) next tokens -> per row [(token_id, logprob, rank)]: the target
    first (rank 1 = most likely), then the k most likely tokens other than it (vLLM's
    prompt_logprobs)."""
    logprobs = finite_logprobs(torch.log_softmax(logits.float(), -1))
    target_lp = logprobs.gather(-1, targets[:, None])  # (T, 1)
    ranks = ((logprobs > target_lp).sum(-1) + 1).tolist()
    values, ids = torch.topk(logprobs, min(k, logprobs.shape[-1]), dim=-1)
    rows = []
    for target, lp, rank, row_ids, row_values in zip(
            targets.tolist(), target_lp[:, 0].tolist(), ranks, ids.tolist(), values.tolist(),
            strict=True):
        entries = [(target, lp, rank)]
        entries += [(t, v, r) for r, (t, v) in enumerate(zip(row_ids, row_values, strict=True),
                                                          start=1) if t != target]
        rows.append(entries)
    return rows


def prompt_logprobs(logits: Tensor, targets: Tensor) -> Tensor:
    """(T, V) logits and (T,) next tokens -> (T,) log P(target | prefix), raw model values."""
    logprobs = torch.log_softmax(logits.float(), -1).gather(-1, targets[:, None])[:, 0]
    return finite_logprobs(logprobs)
