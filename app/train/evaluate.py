"""Evaluation: language-model loss / perplexity / next-token accuracy, and classification
accuracy / macro-F1 / confusion matrix. Used by training and by `python -m app eval`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from app.modeling.heads import pool_last_token
from app.modeling.transformer import Transformer


def block_loss(model: Transformer, rows: Tensor) -> tuple[Tensor, Tensor]:
    """rows (B, T+1) -> (mean cross-entropy over B*T targets, number of correct argmaxes)."""
    inputs, targets = rows[:, :-1], rows[:, 1:]
    logits = model.causal_lm_logits(inputs)  # (B, T, V)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))
    correct = (logits.argmax(-1) == targets).sum()
    return loss, correct


@torch.no_grad()
def lm_metrics(model: Transformer, rows: Tensor, batch_size: int = 16) -> dict[str, float]:
    """Loss, perplexity and next-token accuracy over packed (N, T+1) blocks."""
    total_loss, total_correct, total_tokens = 0.0, 0, 0
    for start in range(0, rows.shape[0], batch_size):
        batch = rows[start: start + batch_size]
        loss, correct = block_loss(model, batch)
        n = batch.shape[0] * (batch.shape[1] - 1)
        total_loss += float(loss) * n
        total_correct += int(correct)
        total_tokens += n
    mean = total_loss / total_tokens
    return {
        "loss": mean,
        "perplexity": math.exp(mean),
        "accuracy": total_correct / total_tokens,
        "tokens": float(total_tokens),
    }


@torch.no_grad()
def nll_and_argmax(model: Transformer, rows: Tensor, batch_size: int = 16
                   ) -> tuple[float, Tensor]:
    """Mean next-token NLL over packed (N, T+1) blocks, and every position's argmax (to
    compare two models' greedy choices, e.g. quantized against fp32)."""
    total, count, argmaxes = 0.0, 0, []
    for start in range(0, rows.shape[0], batch_size):
        batch = rows[start:start + batch_size]
        logits = model.causal_lm_logits(batch[:, :-1]).float()
        total += float(F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(),
                                       reduction="sum"))
        count += batch[:, 1:].numel()
        argmaxes.append(logits.argmax(-1).flatten())
    return total / count, torch.cat(argmaxes)


def unigram_perplexity(train_ids: Iterable[int], eval_ids: Sequence[int], vocab_size: int) -> float:
    """Perplexity of an add-one-smoothed unigram model fitted on train_ids: the baseline
    any context-using language model must beat by far."""
    counts = Counter(train_ids)
    total = sum(counts.values()) + vocab_size
    nll = -sum(math.log((counts[t] + 1) / total) for t in eval_ids)
    return math.exp(nll / len(eval_ids))


def pad_batch(token_lists: Sequence[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Right-pad to (B, T) ids and (B,) lengths."""
    lengths = torch.tensor([len(t) for t in token_lists])
    ids = torch.full((len(token_lists), int(lengths.max())), pad_id, dtype=torch.long)
    for row, tokens in enumerate(token_lists):
        ids[row, : len(tokens)] = torch.tensor(tokens)
    return ids, lengths


def classifier_logits(model: Transformer, ids: Tensor, lengths: Tensor) -> Tensor:
    positions = torch.arange(ids.shape[1]).expand_as(ids)
    hidden = model(ids, positions)
    return model.classify(pool_last_token(hidden, lengths))


@torch.no_grad()
def predict_labels(model: Transformer, token_lists: Sequence[list[int]], pad_id: int,
                   batch_size: int = 32) -> list[int]:
    # Sort by length so padding is small; restore the order at the end.
    order = sorted(range(len(token_lists)), key=lambda i: len(token_lists[i]))
    predictions = [0] * len(token_lists)
    for start in range(0, len(order), batch_size):
        chunk = order[start: start + batch_size]
        ids, lengths = pad_batch([token_lists[i] for i in chunk], pad_id)
        for i, p in zip(chunk, classifier_logits(model, ids, lengths).argmax(-1).tolist(),
                        strict=True):
            predictions[i] = p
    return predictions


@dataclass(frozen=True)
class ClassificationReport:
    labels: tuple[str, ...]
    accuracy: float
    macro_f1: float
    majority_baseline: float
    confusion: list[list[int]]  # confusion[gold][predicted]
    per_label_f1: dict[str, float]

    def as_text(self) -> str:
        width = max(8, *(len(label) for label in self.labels))
        lines = [
            f"accuracy {self.accuracy:.4f}  macro-F1 {self.macro_f1:.4f}  "
            f"majority-class baseline {self.majority_baseline:.4f}",
            "confusion matrix (rows: gold, columns: predicted)",
            " " * width + " " + " ".join(f"{i:>5d}" for i in range(len(self.labels))),
        ]
        for i, (label, row) in enumerate(zip(self.labels, self.confusion, strict=True)):
            lines.append(f"{label:>{width}} " + " ".join(f"{c:>5d}" for c in row)
                         + f"   [{i}] F1 {self.per_label_f1[label]:.3f}")
        return "\n".join(lines)


def classification_report(gold: Sequence[int], predicted: Sequence[int],
                          labels: Sequence[str]) -> ClassificationReport:
    n = len(labels)
    confusion = [[0] * n for _ in range(n)]
    for g, p in zip(gold, predicted, strict=True):
        confusion[g][p] += 1
    f1s = {}
    for i, label in enumerate(labels):
        tp = confusion[i][i]
        fp = sum(confusion[r][i] for r in range(n)) - tp
        fn = sum(confusion[i]) - tp
        f1s[label] = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    majority = max(Counter(gold).values()) / len(gold)
    return ClassificationReport(
        labels=tuple(labels),
        accuracy=sum(confusion[i][i] for i in range(n)) / len(gold),
        macro_f1=sum(f1s.values()) / n,
        majority_baseline=majority,
        confusion=confusion,
        per_label_f1=f1s,
    )
