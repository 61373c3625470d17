"""The classifier task as a LoRA adapter (`python -m app train lora --task classify`).

Texts are pooled on their last token, as in `train classifier` (app.train.classifier),
but the body stays frozen and only LoRA parts and the `score` head are trained. Over a
language model the head is fresh, over the data's labels; over a single-label classifier
checkpoint it starts from the checkpoint's own head and labels, and the adapter then
serves on that checkpoint (its /v1/classify runs the adapter's head for requests that
name the adapter). The head is saved as PEFT's `modules_to_save` (`score`), so in peft the
adapter loads over the base read as `*ForSequenceClassification` with as many labels
(training_summary.json and the card list them, in order).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from app.checkpoint import load_config, load_model
from app.modeling.config import ProblemType, Task
from app.modeling.transformer import Transformer
from app.tokenizer import Tokenizer
from app.train.classifier import (
    classification_objective,
    classifier_from_lm,
    encode_labelled,
    split_labelled,
)
from app.train.data import DataError
from app.train.evaluate import (
    ClassificationReport,
    classification_report,
    predict_labels,
)
from app.train.loop import TrainConfig, Trainer
from app.train.lora import LoraSettings, attach_lora, save_lora
from app.train.lora_card import LoraCard, write_card

log = logging.getLogger(__name__)


def _start_model(base_dir: str | Path, data_labels: tuple[str, ...], seed: int
                 ) -> tuple[Transformer, tuple[str, ...]]:
    """The model to adapt and its labels, in head order. A language model gets a fresh
    head over the data's labels; a single-label classifier keeps its own head and labels
    (the data's must be among them), so the adapter serves on that checkpoint, whose
    /v1/classify then runs the adapter's head for requests that name it."""
    config = load_config(Path(base_dir))
    if config.task is not Task.SEQUENCE_CLASSIFICATION:
        return classifier_from_lm(base_dir, data_labels, seed), data_labels
    if config.problem_type not in (None, ProblemType.SINGLE_LABEL):
        raise DataError(f"{base_dir}: a {config.problem_type} classifier; --task classify "
                        "trains single-label heads")
    unknown = sorted(set(data_labels) - set(config.id2label))
    if unknown:
        raise DataError(f"labels {unknown} are not among the classifier {base_dir}'s "
                        f"({', '.join(config.id2label)})")
    return load_model(base_dir, dtype="float32", device="cpu").model, config.id2label


def train_lora_classifier(
    data: str,
    base_dir: str | Path,
    out_dir: Path,
    settings: LoraSettings,
    train_cfg: TrainConfig,
    test_file: str | None = None,
    val_fraction: float = 0.1,
    max_length: int = 128,
    text_column: str = "text",
    label_column: str = "label",
    resume: bool = False,
    description: str | None = None,
    command: str | None = None,
) -> ClassificationReport:
    started = time.perf_counter()
    train_rows, test_rows, data_labels = split_labelled(
        data, test_file, val_fraction, train_cfg.seed, text_column, label_column)
    model, labels = _start_model(base_dir, data_labels, train_cfg.seed)
    tokenizer = Tokenizer.from_dir(base_dir)
    encoded = encode_labelled(tokenizer, train_rows, test_rows, labels, max_length)

    model.eval()  # no dropout in the body; the LoRA parts' own dropout follows the trainer
    lora = attach_lora(model, settings, torch.Generator().manual_seed(train_cfg.seed))
    assert model.score is not None
    # A fresh, writable copy: the optimiser updates the head in place.
    model.score.weight = nn.Parameter(model.score.weight.detach().clone())
    lora.heads["score"] = model.score
    n_trainable = sum(p.numel() for p in lora.parameters())
    loss_fn, evaluate = classification_objective(model, encoded, train_cfg)

    out_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(lora, train_cfg, out_dir, loss_fn, evaluate,
                      lambda: save_lora(lora, model, out_dir, str(base_dir)))
    trainer.run(resume=resume)
    report = classification_report(encoded.test_y, predict_labels(
        model, encoded.test_ids, encoded.pad), labels)
    summary = {"trainable_parameters": float(n_trainable), "test_accuracy": report.accuracy,
               "test_macro_f1": report.macro_f1,
               "majority_baseline": report.majority_baseline,
               "seconds": time.perf_counter() - started}
    (out_dir / "training_summary.json").write_text(json.dumps(
        {"metrics": summary, "labels": list(labels), "report": asdict(report),
         "lora": asdict(settings), "train": asdict(train_cfg), "base": str(base_dir),
         "train_rows": len(train_rows), "test_rows": len(test_rows), "history": trainer.history,
         "threads": torch.get_num_threads()}, indent=2) + "\n")
    write_card(out_dir, LoraCard(
        base=str(base_dir), architecture=model.config.architecture, settings=settings,
        train=train_cfg, task=f"classification into {len(labels)} labels "
                             f"({', '.join(labels)}), head `score` trained beside the LoRA",
        inputs=[data], val_inputs=[test_file] if test_file else None, general_inputs=None,
        train_documents=len(train_rows), val_documents=len(test_rows), context=max_length,
        summary=summary, threads=torch.get_num_threads(), val_fraction=val_fraction,
        command=command, description=description, labels=labels,
        classifier_base=load_config(Path(base_dir)).task is Task.SEQUENCE_CLASSIFICATION,
        results=(("test accuracy", f"{report.accuracy:.4f}"),
                 ("test macro-F1", f"{report.macro_f1:.4f}"),
                 ("majority-class baseline", f"{report.majority_baseline:.4f}"))))
    return report
