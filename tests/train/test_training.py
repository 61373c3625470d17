"""Training on tiny data: loss goes down, output loads everywhere, runs are reproducible."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from app.checkpoint import load_model
from app.train.classifier import train_classifier
from app.train.data import DataError, read_labelled
from app.train.lm import ModelShape, train_lm
from app.train.loop import TrainConfig, Trainer
from tests.helpers import CORPUS

SHAPE = ModelShape(family="llama", hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                   intermediate_size=64, context=32)


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in CORPUS * 2))
    return path


def tiny_cfg(**overrides: object) -> TrainConfig:
    base: dict[str, object] = dict(max_steps=16, batch_size=4, lr=3e-3, warmup_steps=2, seed=3)
    return TrainConfig(**{**base, **overrides})  # type: ignore[arg-type]


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return dict(load_model(directory, dtype="float32", device="cpu").model.state_dict())


@pytest.fixture(scope="module")
def trained(corpus_file: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("lm")
    summary = train_lm([str(corpus_file)], out, SHAPE, tiny_cfg(max_steps=40, eval_every=20),
                       vocab_size=300, val_fraction=0.2)
    return out, summary


def test_a_few_steps_lower_the_loss(trained: tuple[Path, dict]) -> None:
    out, summary = trained
    history = json.loads((out / "training_summary.json").read_text())["history"]
    assert history[0]["val_loss"] > history[-1]["val_loss"]
    assert summary["val_perplexity"] < summary["unigram_val_perplexity"]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "generation_config.json"):
        assert (out / name).exists(), name
    assert "chat_template" in json.loads((out / "tokenizer_config.json").read_text())


def test_checkpoint_loads_in_transformers_with_same_logits(trained: tuple[Path, dict]) -> None:
    from transformers import AutoModelForCausalLM

    out, _ = trained
    ours = load_model(out, dtype="float32", device="cpu")
    ref = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.arange(1, 25)[None]
    with torch.no_grad():
        assert (ours.model.causal_lm_logits(ids) - ref(ids).logits).abs().max() <= 1e-4


def test_same_seed_same_weights(corpus_file: Path, tmp_path: Path) -> None:
    for name in ("a", "b"):
        train_lm([str(corpus_file)], tmp_path / name, SHAPE, tiny_cfg(), vocab_size=300)
    wa, wb = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    train_lm([str(corpus_file)], tmp_path / "c", SHAPE, tiny_cfg(seed=4), vocab_size=300)
    wc = weights(tmp_path / "c")
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_interrupt_then_resume_equals_uninterrupted(
    corpus_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train_lm([str(corpus_file)], tmp_path / "straight", SHAPE, tiny_cfg(), vocab_size=300)

    original = Trainer._one_step

    def interrupt_at_9(self: Trainer) -> tuple[float, int]:
        if self.step == 9:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "_one_step", interrupt_at_9)
    with pytest.raises(KeyboardInterrupt):
        train_lm([str(corpus_file)], tmp_path / "resumed", SHAPE, tiny_cfg(), vocab_size=300)
    state = torch.load(tmp_path / "resumed" / "train_state.pt", weights_only=True)
    assert state["step"] == 9
    assert (tmp_path / "resumed" / "model.safetensors").exists()  # Ctrl-C saved the model
    monkeypatch.setattr(Trainer, "_one_step", original)
    train_lm([str(corpus_file)], tmp_path / "resumed", SHAPE, tiny_cfg(), vocab_size=300,
             resume=True)
    straight, resumed = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_resume_refuses_changed_settings(corpus_file: Path, tmp_path: Path) -> None:
    train_lm([str(corpus_file)], tmp_path, SHAPE, tiny_cfg(max_steps=2), vocab_size=300)
    with pytest.raises(ValueError, match="lr"):
        train_lm([str(corpus_file)], tmp_path, SHAPE, tiny_cfg(max_steps=2, lr=1.0),
                 vocab_size=300, resume=True)


def test_classifier_fine_tune(trained: tuple[Path, dict], tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    base, _ = trained
    rows = [("the fox jumps over the dog", "animals"), ("def add(a, b): return a", "code"),
            ("import os; print(name)", "code"), ("a lazy dog sleeps", "animals")] * 8
    data = tmp_path / "rows.csv"
    data.write_text("text,label\n" + "".join(f'"{t}",{label}\n' for t, label in rows))
    out = tmp_path / "clf"
    report = train_classifier(str(data), str(base), out, tiny_cfg(max_steps=30, batch_size=8),
                              val_fraction=0.25)
    assert report.labels == ("animals", "code")
    assert report.accuracy >= 0.75
    ours = load_model(out, dtype="float32", device="cpu")
    assert ours.config.architecture == "LlamaForSequenceClassification"
    ref = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert ref.config.id2label == {0: "animals", 1: "code"}
    ids = torch.arange(3, 15)[None]
    with torch.no_grad():
        hidden = ours.model(ids, torch.arange(12)[None])
        assert (ours.model.classify(hidden[:, -1]) - ref(ids).logits).abs().max() <= 1e-4


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"text,category\nhello,a\n", r"no column 'label' \(columns: text, category\)"),
        (b"text,label\nhello,a\nworld,\n", r"rows\.csv:3: empty or missing 'label'"),
        (b"text,label\nhello,a\nbad \xff\xfe bytes,b\n", r"rows\.csv:3: not valid UTF-8"),
        (b"text,label\n", r"rows\.csv: no rows"),
    ],
)
def test_bad_csv_names_the_line(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "rows.csv"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_labelled(path)


def test_bad_jsonl_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n{"text": "b"\n')
    with pytest.raises(DataError, match=r"rows\.jsonl:2: not valid JSON"):
        read_labelled(path)


def test_distilling_a_smaller_student(trained: tuple[Path, dict], corpus_file: Path,
                                      tmp_path: Path) -> None:
    """--teacher: the student reads the teacher's tokenizer, and the KL term pulls its
    next-token distributions toward the teacher's (less than before training, and zero
    for the teacher itself); the summary records the teacher."""
    from app.tokenizer import Tokenizer
    from app.train.data import pack_tokens, read_documents
    from app.train.distill import distill_loss

    teacher_dir, _ = trained
    out = tmp_path / "student"
    small = ModelShape(family="llama", hidden_size=16, num_layers=1, num_heads=2,
                       num_kv_heads=1, intermediate_size=32, context=32)
    tokenizer = Tokenizer.from_dir(teacher_dir)
    rows = pack_tokens([tokenizer.encode(d, add_special_tokens=False)
                        for d in read_documents([str(corpus_file)])[:8]],
                       tokenizer.eos_ids[0], 32)[:4]
    teacher = load_model(teacher_dir, dtype="float32", device="cpu").model
    assert float(distill_loss(teacher, teacher, rows, 1.0)) == pytest.approx(0.0, abs=1e-5)

    def kl(directory: Path) -> float:
        student = load_model(directory, dtype="float32", device="cpu").model
        with torch.no_grad():
            return float(distill_loss(student, teacher, rows, 1.0))

    train_lm([str(corpus_file)], tmp_path / "untrained", small, tiny_cfg(max_steps=1, lr=1e-9),
             val_fraction=0.2, teacher_dir=str(teacher_dir))
    train_lm([str(corpus_file)], out, small, tiny_cfg(max_steps=40), val_fraction=0.2,
             teacher_dir=str(teacher_dir), distill_weight=0.9)
    assert (out / "tokenizer.json").read_text() == (teacher_dir / "tokenizer.json").read_text()
    assert kl(out) < 0.8 * kl(tmp_path / "untrained")
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["distill"] == {"teacher": str(teacher_dir), "weight": 0.9}
    with pytest.raises(ValueError, match="distill_weight"):
        train_lm([str(corpus_file)], tmp_path / "bad", small, tiny_cfg(),
                 teacher_dir=str(teacher_dir), distill_weight=1.5)
