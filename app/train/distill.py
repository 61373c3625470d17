"""Distillation: train a small model to predict what a bigger one (the teacher) would,
e.g. a speculative-decoding draft for a served model. The loss mixes the usual
next-token cross-entropy on the text with the KL divergence from the teacher's
next-token distribution at every position (Hinton et al. 2015, temperature 1): a draft
is worth what its argmax agrees with the teacher's, and the teacher's whole distribution
says more per position than the one token the text happened to hold.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from app.modeling.transformer import Transformer


def distill_loss(student: Transformer, teacher: Transformer, rows: Tensor, weight: float
                 ) -> Tensor:
    """rows (B, T+1) -> (1 - weight) * cross-entropy + weight * KL(teacher || student),
    each a mean over the B*T next-token positions."""
    inputs, targets = rows[:, :-1], rows[:, 1:]
    logits = student.causal_lm_logits(inputs).float().flatten(0, 1)  # (B*T, V)
    with torch.no_grad():
        wanted = torch.log_softmax(teacher.causal_lm_logits(inputs).float().flatten(0, 1), -1)
    log_probs = torch.log_softmax(logits, -1)
    kl = F.kl_div(log_probs, wanted, log_target=True, reduction="batchmean")
    if weight >= 1.0:
        return kl
    return (1.0 - weight) * F.nll_loss(log_probs, targets.flatten()) + weight * kl
