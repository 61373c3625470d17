"""Output heads: next-token logits (LM head) and sequence labels (classification head)."""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from app.modeling.config import ProblemType


class LMHead(nn.Module):
    """hidden (..., H) -> logits (..., vocab). A tied head reuses the input embedding.
    Quantized and prepacked heads replace this module (app.modeling.quantized_model,
    app.modeling.packed)."""

    def __init__(self, hidden_size: int, vocab_size: int, tied: bool) -> None:
        super().__init__()
        self.tied = tied
        self.weight = None if tied else nn.Parameter(torch.empty(vocab_size, hidden_size))

    def forward(self, hidden: Tensor, embed: nn.Module, gemv: bool = False) -> Tensor:
        weight = self.float_weight(embed)
        if gemv:  # see app.modeling.transformer.dense
            return (hidden.float()[..., None, :] * weight.float()).sum(-1).to(hidden.dtype)
        return F.linear(hidden, weight)

    def float_weight(self, embed: nn.Module) -> Tensor:
        """(vocab, H): the head's own weight, or the input embedding's when tied."""
        return cast(Tensor, embed.weight if self.weight is None else self.weight)


class ClassificationHead(nn.Module):
    """Pooled hidden (..., H) -> label logits (..., num_labels); `score` in HF checkpoints."""

    def __init__(self, hidden_size: int, num_labels: int, problem_type: ProblemType | None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_labels, hidden_size))
        self.problem_type = problem_type

    def forward(self, pooled: Tensor) -> Tensor:
        return F.linear(pooled, self.weight)


def label_scores(logits: Tensor, problem_type: ProblemType | None) -> Tensor:
    """Label logits -> scores: softmax (single-label), sigmoid (multi-label), raw (regression)."""
    if problem_type is ProblemType.MULTI_LABEL:
        return torch.sigmoid(logits.float())
    if problem_type is ProblemType.REGRESSION:
        return logits.float()
    return torch.softmax(logits.float(), dim=-1)


def pool_last_token(hidden: Tensor, lengths: Tensor) -> Tensor:
    """hidden (B, T, H) right-padded, lengths (B,) -> (B, H) hidden state of each last token.

    The reference pools on the last token that is not the pad id; with lengths known we
    pool on the last real token, which is the same unless a real token equals the pad id.
    """
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), lengths - 1]
