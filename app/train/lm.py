"""Pre-train a decoder-only language model on text files.

Text -> byte-level BPE tokenizer (trained on the training split) -> documents packed into
fixed-length blocks separated by EOS -> AdamW with warmup + cosine -> a Hugging Face
layout checkpoint with tokenizer, chat template and generation config.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from app.checkpoint import build_model, load_model, save_model
from app.modeling.config import ModelConfig, config_from_hf
from app.modeling.transformer import Transformer
from app.tokenizer import Tokenizer
from app.train.bpe import train_bpe
from app.train.data import pack_tokens, read_documents, split_documents
from app.train.distill import distill_loss
from app.train.evaluate import block_loss, lm_metrics, unigram_perplexity
from app.train.loop import TrainConfig, Trainer, batch_indices

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelShape:
    family: str = "llama"  # "llama" | "gpt2"
    hidden_size: int = 256
    num_layers: int = 6
    num_heads: int = 8
    num_kv_heads: int = 4
    intermediate_size: int = 704
    context: int = 256


def lm_config(shape: ModelShape, tokenizer: Tokenizer) -> ModelConfig:
    """Our training config, spelled as a config.json so it goes through the same parser
    (and validation) as any checkpoint we load."""
    special = {
        "bos_token_id": tokenizer.bos_id,
        "eos_token_id": tokenizer.eos_ids[0],
        "pad_token_id": tokenizer.pad_id,
        "vocab_size": tokenizer.vocab_size,
    }
    raw: dict[str, Any]
    if shape.family == "gpt2":
        raw = {
            "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "n_embd": shape.hidden_size, "n_layer": shape.num_layers, "n_head": shape.num_heads,
            "n_inner": shape.intermediate_size, "n_positions": shape.context,
            "activation_function": "gelu_new", "tie_word_embeddings": True,
        }
    else:
        raw = {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_size": shape.hidden_size, "num_hidden_layers": shape.num_layers,
            "num_attention_heads": shape.num_heads, "num_key_value_heads": shape.num_kv_heads,
            "intermediate_size": shape.intermediate_size,
            "max_position_embeddings": shape.context, "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": True,
        }
    return config_from_hf({**raw, **special})


def train_lm(
    inputs: list[str],
    out_dir: Path,
    shape: ModelShape,
    train_cfg: TrainConfig,
    vocab_size: int = 8192,
    val_inputs: list[str] | None = None,
    val_fraction: float = 0.05,
    tokenizer_dir: str | None = None,
    resume: bool = False,
    teacher_dir: str | None = None,
    distill_weight: float = 1.0,
) -> dict[str, float]:
    docs = read_documents(inputs)
    if val_inputs:
        train_docs, val_docs = docs, read_documents(val_inputs)
    else:
        train_docs, val_docs = split_documents(docs, val_fraction, train_cfg.seed)
    log.info("%d training documents, %d validation documents", len(train_docs), len(val_docs))

    if teacher_dir and not 0.0 <= distill_weight <= 1.0:
        raise ValueError("distill_weight must be in [0, 1]")
    if tokenizer_dir or teacher_dir:  # a student reads the teacher's tokens
        tokenizer = Tokenizer.from_dir(tokenizer_dir or str(teacher_dir))
    elif resume and (out_dir / "tokenizer.json").exists():
        tokenizer = Tokenizer.from_dir(out_dir)
    else:
        tokenizer = train_bpe(train_docs, vocab_size=vocab_size)
    eos = tokenizer.eos_ids[0]
    train_tokens = [tokenizer.encode(d, add_special_tokens=False) for d in train_docs]
    val_tokens = [tokenizer.encode(d, add_special_tokens=False) for d in val_docs]
    train_rows = pack_tokens(train_tokens, eos, shape.context)
    val_rows = pack_tokens(val_tokens, eos, shape.context)
    log.info("%d training blocks, %d validation blocks of %d tokens",
             len(train_rows), len(val_rows), shape.context)

    cfg = lm_config(shape, tokenizer)
    model = build_model(cfg, seed=train_cfg.seed)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model: %s, %.2fM parameters", cfg.architecture, n_params / 1e6)
    teacher = _teacher(teacher_dir, cfg) if teacher_dir else None

    def loss_fn(step: int) -> tuple[torch.Tensor, int]:
        chosen = batch_indices(step, train_cfg.batch_size, len(train_rows), train_cfg.seed)
        rows = train_rows[chosen]
        if teacher is not None:
            loss = distill_loss(model, teacher, rows, distill_weight)
        else:
            loss, _ = block_loss(model, rows)
        return loss, rows.numel() - rows.shape[0]

    def evaluate() -> dict[str, float]:
        metrics = lm_metrics(model, val_rows)
        return {f"val_{k}": v for k, v in metrics.items() if k != "tokens"}

    def save() -> None:
        save_model(model, out_dir, generation_config={
            "bos_token_id": tokenizer.bos_id, "eos_token_id": eos,
            "pad_token_id": tokenizer.pad_id, "max_new_tokens": 128,
        })
        tokenizer.save(out_dir)

    out_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(model, train_cfg, out_dir, loss_fn, evaluate, save)
    result = trainer.run(resume=resume)
    flat_val = [t for row in val_tokens for t in [*row, eos]]
    flat_train = (t for row in train_tokens for t in [*row, eos])
    summary = {
        **result,
        "unigram_val_perplexity": unigram_perplexity(flat_train, flat_val, cfg.vocab_size),
        "parameters": float(n_params),
        "train_tokens": float(sum(len(r) + 1 for r in train_tokens)),
        "val_tokens": float(len(flat_val)),
    }
    distill = ({"teacher": str(teacher_dir), "weight": distill_weight} if teacher_dir
               else None)
    (out_dir / "training_summary.json").write_text(json.dumps(
        {"metrics": summary, "shape": asdict(shape), "train": asdict(train_cfg),
         **({"distill": distill} if distill else {}),
         "history": trainer.history, "threads": torch.get_num_threads()},
        indent=2) + "\n")
    return summary


def _teacher(directory: str, student: ModelConfig) -> Transformer:
    """The teacher, frozen, on the CPU in float32; its vocabulary must be the student's."""
    loaded = load_model(directory, dtype="float32", device="cpu")
    if loaded.config.vocab_size != student.vocab_size:
        raise ValueError(f"teacher {directory} has {loaded.config.vocab_size} tokens, the "
                         f"student {student.vocab_size}")
    teacher = loaded.model.eval()
    teacher.requires_grad_(False)
    return teacher
