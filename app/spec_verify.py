"""Speculative decoding's verification side: from the target model's logits at the
last token and at each guessed token, which tokens a sequence keeps.

Greedy: the longest prefix of the guesses that equals the target's argmax at each
position, then the target's own argmax after it (a correction, or a bonus token when
every guess was kept): token for token what decoding one step at a time gives.

Sampling (Leviathan et al. 2023; Chen et al. 2023), for guesses that are certain (an
n-gram lookup proposes one token with probability 1): guess d at a position whose
target distribution is p is kept with probability p(d); when rejected, the token is
drawn from p with d removed (renormalized), and verification stops. Every emitted
token is then distributed exactly as p: P(d) = p(d), and for t != d,
P(t) = (1 - p(d)) * p(t) / (1 - p(d)) = p(t).

p at each position is what plain sampling would draw from there (app/sampling.py):
logit bias, then repetition / presence / frequency penalties over the output as it
would be at that position (the output so far plus the guesses before it), then
temperature, top-k, top-p and min-p; under a grammar (structured output, constrained
tool calls) only the tokens it allows at that position, the guesses it cannot accept
dropped first. Log-probabilities are reported from the same distributions as plain
sampling reports them. Before min_tokens, EOS and stop token ids are masked at the
positions that are still held (the output as long as it would be there), as plain
sampling masks them one step at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from app.sampling import (
    SampleRow,
    apply_logit_bias,
    apply_penalties,
    batched_probs,
    logprob_entry,
    mask_tokens,
)
from app.sampling_params import LogprobsMode, Sampled, TokenLogprob


def _processed(logits: Tensor, row: SampleRow, draft: Sequence[int],
               masks: Sequence[Tensor] | None) -> Tensor:
    """Each position's logits as plain sampling would process them there."""
    p = row.params
    x = apply_logit_bias(logits.float(), p.logit_bias)
    if masks is not None:  # a grammar: the tokens allowed at each position
        x = x.masked_fill(~torch.stack(list(masks)).to(x.device), float("-inf"))
    held = min(row.held_positions, x.shape[0]) if row.banned_ids else 0
    if held:  # min_tokens: EOS and stop ids held off where the output is still short
        x = x.clone()
        for i in range(held):
            masked = mask_tokens(x[i], row.banned_ids)
            # as plain sampling: a grammar that can only end here wins over the hold
            x[i] = masked if masks is None or bool(torch.isfinite(masked).any()) else x[i]
    if not p.needs_penalties:
        return x
    rows = [apply_penalties(x[i], p, row.prompt_ids, [*row.output_ids, *draft[:i]])
            for i in range(x.shape[0])]
    return torch.stack(rows)


def verify_draft(logits: Tensor, row: SampleRow, draft: Sequence[int],
                 masks: Sequence[Tensor] | None = None) -> list[Sampled]:
    """(len(draft) + 1, V) logits, row i scored after the last token and draft[:i] ->
    the tokens to append (the kept guesses, then one token of the target's own), each
    with its log-probabilities when the request asked for them. masks[i]: the tokens a
    grammar allows at position i (structured output), as plain sampling masks them."""
    p = row.params
    x = _processed(logits, row, draft, masks)
    n = x.shape[0]
    probs = None if p.greedy else batched_probs(
        x, torch.full((n,), p.temperature), torch.full((n,), p.top_k),
        torch.full((n,), p.top_p), torch.full((n,), p.min_p))
    tokens: list[int] = []
    if probs is None:
        best = x.argmax(-1).tolist()
        for i, guess in enumerate(draft):
            tokens.append(int(best[i]))
            if best[i] != guess:
                break
        else:
            tokens.append(int(best[len(draft)]))
    else:
        for i, guess in enumerate(draft):
            if float(torch.rand((), generator=row.generator)) < float(probs[i, guess]):
                tokens.append(int(guess))
                continue
            residual = probs[i].clone()
            residual[guess] = 0.0
            tokens.append(_draw(residual / residual.sum(), row.generator))
            break
        else:
            tokens.append(_draw(probs[len(draft)], row.generator))
    return [Sampled(t, _entry(logits[i], x[i], None if probs is None else probs[i], t, row))
            for i, t in enumerate(tokens)]


def _entry(raw: Tensor, processed: Tensor, probs: Tensor | None, token: int,
           row: SampleRow) -> TokenLogprob | None:
    """The token's log-probabilities, as app.sampling.sample_batch reports them."""
    p = row.params
    if not p.logprobs:
        return None
    if p.logprobs_mode is LogprobsMode.RAW:
        lp = torch.log_softmax(raw.float(), -1)
    elif probs is not None:
        lp = torch.log(probs)
    else:  # greedy: the processed distribution at temperature 1
        lp = torch.log_softmax(processed, -1)
    return logprob_entry(lp, token, p.top_logprobs)


def _draw(probs: Tensor, generator: torch.Generator | None) -> int:
    """One categorical draw: the exponential race app/sampling.py uses."""
    noise = torch.empty(probs.shape[-1]).exponential_(1.0, generator=generator)
    return int((probs / noise).argmax())
