"""Fine-tune a sequence classifier: a trained LM's body plus a fresh `score` head.

Each text is pooled on its last token (as `*ForSequenceClassification` models do) and the
whole network is trained with cross-entropy on the labels. The result is saved in the
`*ForSequenceClassification` layout with id2label / label2id.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from app.checkpoint import load_model, save_model
from app.modeling.config import ProblemType, Task
from app.modeling.transformer import Transformer
from app.tokenizer import Tokenizer
from app.train.data import DataError, LabelledText, read_labelled
from app.train.evaluate import (
    ClassificationReport,
    classification_report,
    classifier_logits,
    pad_batch,
    predict_labels,
)
from app.train.loop import TrainConfig, Trainer, batch_indices

log = logging.getLogger(__name__)


def classifier_from_lm(base_dir: str | Path, labels: tuple[str, ...], seed: int) -> Transformer:
    """The LM's body weights under a new, randomly initialised classification head."""
    base = load_model(base_dir, dtype="float32", device="cpu")
    cfg = base.config.with_task(Task.SEQUENCE_CLASSIFICATION, labels, ProblemType.SINGLE_LABEL)
    model = Transformer(cfg)
    body = {k: v for k, v in base.model.state_dict().items() if not k.startswith("lm_head.")}
    missing, unexpected = model.load_state_dict(body, strict=False)
    if missing != ["score.weight"] or unexpected:
        raise AssertionError(f"unexpected body transfer: {missing} {unexpected}")
    with torch.no_grad():
        generator = torch.Generator().manual_seed(seed)
        assert model.score is not None
        model.score.weight.normal_(0.0, 0.02, generator=generator)
    model.init_rope(torch.device("cpu"))
    return model


def encode_rows(tokenizer: Tokenizer, rows: list[LabelledText], max_length: int) -> list[list[int]]:
    # Keep the end of a long text: the head reads the last token.
    return [tokenizer.encode(r.text)[-max_length:] or [tokenizer.eos_ids[0]] for r in rows]


def split_labelled(
    data: str, test_file: str | None, val_fraction: float, seed: int,
    text_column: str = "text", label_column: str = "label",
) -> tuple[list[LabelledText], list[LabelledText], tuple[str, ...]]:
    """Training rows, test rows (TEST_FILE's, or a seeded split of DATA) and the sorted
    labels; DataError when fewer than two labels or a test label is never trained on."""
    rows = read_labelled(data, text_column, label_column)
    if test_file:
        train_rows, test_rows = rows, read_labelled(test_file, text_column, label_column)
    else:
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))
        n_test = max(1, round(len(rows) * val_fraction))
        test_rows = [rows[i] for i in sorted(order[:n_test].tolist())]
        train_rows = [rows[i] for i in sorted(order[n_test:].tolist())]
    labels = tuple(sorted({r.label for r in train_rows}))
    if len(labels) < 2:
        raise DataError(f"{data}: need at least two distinct labels, found {list(labels)}")
    unknown = sorted({r.label for r in test_rows} - set(labels))
    if unknown:
        raise DataError(f"test labels never seen in training: {unknown}")
    return train_rows, test_rows, labels


@dataclass(frozen=True)
class EncodedLabels:
    """Labelled rows as the training objective reads them: token ids (the end of each
    text), label indices, the pad id, and inverse-frequency class weights (so rare
    labels are not ignored)."""

    labels: tuple[str, ...]
    pad: int
    train_ids: list[list[int]]
    test_ids: list[list[int]]
    train_y: torch.Tensor
    test_y: list[int]
    class_weight: torch.Tensor


def encode_labelled(tokenizer: Tokenizer, train_rows: list[LabelledText],
                    test_rows: list[LabelledText], labels: tuple[str, ...],
                    max_length: int) -> EncodedLabels:
    index = {label: i for i, label in enumerate(labels)}
    train_y = torch.tensor([index[r.label] for r in train_rows])
    counts = torch.bincount(train_y, minlength=len(labels)).float()
    return EncodedLabels(
        labels, tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_ids[0],
        encode_rows(tokenizer, train_rows, max_length),
        encode_rows(tokenizer, test_rows, max_length), train_y,
        [index[r.label] for r in test_rows], counts.sum() / (len(labels) * counts.clamp(min=1)))


def classification_objective(model: Transformer, data: EncodedLabels, train_cfg: TrainConfig
                             ) -> tuple[Callable[[int], tuple[torch.Tensor, int]],
                                        Callable[[], dict[str, float]]]:
    """The Trainer's loss (weighted cross-entropy on a seeded batch, pooled on each
    text's last token) and evaluation (test accuracy and macro-F1)."""

    def loss_fn(step: int) -> tuple[torch.Tensor, int]:
        chosen = batch_indices(step, train_cfg.batch_size, len(data.train_ids), train_cfg.seed)
        ids, lengths = pad_batch([data.train_ids[i] for i in chosen.tolist()], data.pad)
        logits = classifier_logits(model, ids, lengths)
        return F.cross_entropy(logits.float(), data.train_y[chosen],
                               weight=data.class_weight), int(lengths.sum())

    def evaluate() -> dict[str, float]:
        report = classification_report(data.test_y, predict_labels(model, data.test_ids,
                                                                   data.pad), data.labels)
        return {"test_accuracy": report.accuracy, "test_macro_f1": report.macro_f1}

    return loss_fn, evaluate


def train_classifier(
    data: str,
    base_dir: str,
    out_dir: Path,
    train_cfg: TrainConfig,
    test_file: str | None = None,
    val_fraction: float = 0.1,
    max_length: int = 128,
    text_column: str = "text",
    label_column: str = "label",
    resume: bool = False,
) -> ClassificationReport:
    train_rows, test_rows, labels = split_labelled(data, test_file, val_fraction, train_cfg.seed,
                                                   text_column, label_column)
    tokenizer = Tokenizer.from_dir(base_dir)
    encoded = encode_labelled(tokenizer, train_rows, test_rows, labels, max_length)
    model = classifier_from_lm(base_dir, labels, train_cfg.seed)
    loss_fn, evaluate = classification_objective(model, encoded, train_cfg)

    def save() -> None:
        save_model(model, out_dir)
        tokenizer.save(out_dir)

    out_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(model, train_cfg, out_dir, loss_fn, evaluate, save)
    trainer.run(resume=resume)
    with torch.no_grad():
        report = classification_report(encoded.test_y, predict_labels(
            model, encoded.test_ids, encoded.pad), labels)
    (out_dir / "training_summary.json").write_text(json.dumps(
        {"report": asdict(report), "train": asdict(train_cfg), "history": trainer.history,
         "train_rows": len(train_rows), "test_rows": len(test_rows),
         "threads": torch.get_num_threads()}, indent=2) + "\n")
    return report
