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
P(t) = (1 - p(d)) * p(t) / (1 - p(d)) = p(t). p is the distribution plain sampling
draws from: logit bias, temperature, top-k, top-p and min-p applied as in
app/sampling.py (requests whose sampling needs more, such as penalties or a grammar,
do not speculate: app/engine/scheduler.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from app.sampling import SampleRow, apply_logit_bias, batched_probs


def verify_draft(logits: Tensor, row: SampleRow, draft: Sequence[int]) -> list[int]:
    """(len(draft) + 1, V) logits, row i scored after the last token and draft[:i] ->
    the tokens to append: the kept guesses, then one token of the target's own."""
    p = row.params
    x = apply_logit_bias(logits.float(), p.logit_bias)
    if p.greedy:
        best = x.argmax(-1).tolist()
        out: list[int] = []
        for i, guess in enumerate(draft):
            out.append(int(best[i]))
            if best[i] != guess:
                return out
        out.append(int(best[len(draft)]))
        return out
    n = x.shape[0]
    probs = batched_probs(x, torch.full((n,), p.temperature), torch.full((n,), p.top_k),
                          torch.full((n,), p.top_p), torch.full((n,), p.min_p))
    out = []
    for i, guess in enumerate(draft):
        keep = float(probs[i, guess])
        u = float(torch.rand((), generator=row.generator))
        if u < keep:
            out.append(int(guess))
            continue
        residual = probs[i].clone()
        residual[guess] = 0.0
        out.append(_draw(residual / residual.sum(), row.generator))
        return out
    out.append(_draw(probs[len(draft)], row.generator))
    return out


def _draw(probs: Tensor, generator: torch.Generator | None) -> int:
    """One categorical draw: the exponential race app/sampling.py uses."""
    noise = torch.empty(probs.shape[-1]).exponential_(1.0, generator=generator)
    return int((probs / noise).argmax())
