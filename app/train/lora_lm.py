"""Fine-tune a LoRA adapter of a language model on text (`python -m app train lora`).

The base checkpoint is loaded frozen, LoRA parts are attached to the chosen projections
(app.train.lora) and trained by the shared loop (app.train.loop) on packed blocks of the
text, exactly as `train lm` packs them. Before training, the base model's perplexity is
measured on the held-out text (and on optional general text); after, the adapter's. The
adapter is saved in PEFT format with a card (README.md) that reports both, and
training_summary.json.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from app.checkpoint import load_model
from app.modeling.transformer import Transformer
from app.tokenizer import Tokenizer
from app.train.data import pack_tokens, read_documents, split_documents
from app.train.evaluate import block_loss, lm_metrics
from app.train.loop import TrainConfig, Trainer, batch_indices
from app.train.lora import LoraSettings, attach_lora, save_lora
from app.train.lora_card import LoraCard, write_card

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoraData:
    """What to train on and what to measure on."""

    inputs: list[str]
    val_inputs: list[str] | None = None  # default: a held-out split of inputs
    val_fraction: float = 0.05
    general_inputs: list[str] | None = None  # text outside the domain: is the base kept?
    context: int = 0  # block length; 0: the base model's context


def _rows(tokenizer: Tokenizer, docs: list[str], context: int) -> Tensor:
    eos = tokenizer.eos_ids[0]
    return pack_tokens((tokenizer.encode(d, add_special_tokens=False) for d in docs), eos,
                       context)


def _perplexities(model: Transformer, sets: dict[str, Tensor]) -> dict[str, float]:
    return {name: lm_metrics(model, rows)["perplexity"] for name, rows in sets.items()}


def train_lora_lm(
    base_dir: str | Path,
    out_dir: Path,
    data: LoraData,
    settings: LoraSettings,
    train_cfg: TrainConfig,
    resume: bool = False,
    description: str | None = None,
    command: str | None = None,
) -> dict[str, float]:
    """Train, measure and save; returns the figures also written to training_summary.json.
    `description` (what the text is) and `command` (how to rerun) go into the card."""
    started = time.perf_counter()
    docs = read_documents(data.inputs)
    if data.val_inputs:
        train_docs, val_docs = docs, read_documents(data.val_inputs)
    else:
        train_docs, val_docs = split_documents(docs, data.val_fraction, train_cfg.seed)
    loaded = load_model(base_dir, dtype="float32", device="cpu")
    model, cfg = loaded.model, loaded.config
    tokenizer = Tokenizer.from_dir(base_dir)
    context = min(data.context or cfg.max_model_len, cfg.max_model_len)
    train_rows = _rows(tokenizer, train_docs, context)
    sets = {"val": _rows(tokenizer, val_docs, context)}
    if data.general_inputs:
        sets["general"] = _rows(tokenizer, read_documents(data.general_inputs), context)
    log.info("%d training documents (%d blocks of %d tokens), %d validation documents",
             len(train_docs), len(train_rows), context, len(val_docs))
    before = _perplexities(model, sets)
    log.info("base model perplexity: %s", before)

    lora = attach_lora(model, settings, torch.Generator().manual_seed(train_cfg.seed))
    n_trainable = sum(p.numel() for p in lora.parameters())
    log.info("LoRA r=%d alpha=%g on %d modules: %d trainable parameters",
             settings.rank, settings.alpha, len(lora.parts), n_trainable)

    def loss_fn(step: int) -> tuple[Tensor, int]:
        chosen = batch_indices(step, train_cfg.batch_size, len(train_rows), train_cfg.seed)
        rows = train_rows[chosen]
        loss, _ = block_loss(model, rows)
        return loss, rows.numel() - rows.shape[0]

    def evaluate() -> dict[str, float]:
        metrics = lm_metrics(model, sets["val"])
        return {f"val_{k}": v for k, v in metrics.items() if k != "tokens"}

    out_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(lora, train_cfg, out_dir,
                      loss_fn, evaluate, lambda: save_lora(lora, model, out_dir, str(base_dir)))
    trainer.run(resume=resume)
    after = _perplexities(model, sets)
    seconds = time.perf_counter() - started
    summary: dict[str, float] = {
        **{f"base_{k}_perplexity": v for k, v in before.items()},
        **{f"adapter_{k}_perplexity": v for k, v in after.items()},
        "trainable_parameters": float(n_trainable),
        "train_tokens": float(train_rows.numel() - train_rows.shape[0]),
        **{f"{k}_tokens": float(v.numel() - v.shape[0]) for k, v in sets.items()},
        "seconds": seconds,
    }
    (out_dir / "training_summary.json").write_text(json.dumps(
        {"metrics": summary, "lora": asdict(settings), "train": asdict(train_cfg),
         "base": str(base_dir), "inputs": data.inputs, "val_inputs": data.val_inputs,
         "general_inputs": data.general_inputs, "context": context,
         "history": trainer.history, "threads": torch.get_num_threads()},
        indent=2) + "\n")
    write_card(out_dir, LoraCard(
        base=str(base_dir), architecture=cfg.architecture, settings=settings,
        train=train_cfg, task="language model", inputs=data.inputs,
        val_inputs=data.val_inputs, general_inputs=data.general_inputs,
        train_documents=len(train_docs), val_documents=len(val_docs), context=context,
        summary=summary, threads=torch.get_num_threads(), val_fraction=data.val_fraction,
        command=command,
        description=description))
    return summary
