"""`python -m app train lora`: LoRA adapters trained on tiny random checkpoints lower the
loss, touch nothing but A and B, and load in peft with the same logits."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from app.checkpoint import load_model
from app.checkpoint.lora_save import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE
from app.cli import main
from app.modeling.transformer import Transformer
from app.train.loop import STATE_FILE, TrainConfig
from app.train.lora import LoraSettings, attach_lora
from app.train.lora_lm import LoraData, train_lora_lm
from tests.helpers import CORPUS

IDS = torch.arange(1, 30)[None]


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in CORPUS * 2))
    return path


def tiny_cfg(**overrides: Any) -> TrainConfig:
    base: dict[str, Any] = dict(max_steps=20, batch_size=4, lr=1e-2, warmup_steps=2,
                                weight_decay=0.0, seed=1)
    return TrainConfig(**{**base, **overrides})


def train(base: Path, out: Path, corpus: Path, settings: LoraSettings,
          **cfg: Any) -> dict[str, float]:
    data = LoraData([str(corpus)], val_fraction=0.2, general_inputs=[str(corpus)], context=32)
    return train_lora_lm(base, out, data, settings, tiny_cfg(**cfg))


def training_time_model(base: Path, adapter: Path, settings: LoraSettings) -> Transformer:
    """The model as training left it: the base with the trained parts from the state."""
    model = load_model(base, dtype="float32", device="cpu").model
    lora = attach_lora(model, settings)
    state = torch.load(adapter / STATE_FILE, map_location="cpu", weights_only=True)["model"]
    lora.load_state_dict(state)
    lora.eval()
    return model


def peft_model(base: Path, adapter: Path, cls: str = "AutoModelForCausalLM",
               **kwargs: Any) -> Any:
    import transformers
    from peft import PeftModel

    logging.getLogger("transformers").setLevel(logging.ERROR)
    ref = getattr(transformers, cls).from_pretrained(base, **kwargs)
    return PeftModel.from_pretrained(ref, str(adapter)).eval()


def test_a_few_steps_lower_the_loss_and_only_lora_trains(
    hf_checkpoint: Any, corpus_file: Path, tmp_path: Path
) -> None:
    base, _ = hf_checkpoint("llama_gqa_llama3")
    summary = train(base, tmp_path, corpus_file, LoraSettings(rank=4, alpha=8), eval_every=10)
    history = json.loads((tmp_path / "training_summary.json").read_text())["history"]
    assert history[0]["val_loss"] > history[-1]["val_loss"]
    assert summary["adapter_val_perplexity"] < 0.8 * summary["base_val_perplexity"]
    # Everything the optimiser saw is A and B of the seven Llama projections, 2 layers.
    state = torch.load(tmp_path / STATE_FILE, weights_only=True)["model"]
    assert len(state) == 2 * 7 * 2
    assert all(k.endswith((".lora_A", ".lora_B")) for k in state)
    card = (tmp_path / "README.md").read_text()
    assert "## Measured effect" in card and f"{summary['base_val_perplexity']:.2f}" in card


@pytest.mark.parametrize(("arch", "rslora"), [
    ("llama_gqa_llama3", False), ("llama_gqa_llama3", True), ("gpt2", False),
    ("gpt2", True), ("qwen2", False), ("mistral", True),
])
def test_saved_adapter_gives_peft_the_training_logits(
    hf_checkpoint: Any, corpus_file: Path, tmp_path: Path, arch: str, rslora: bool
) -> None:
    base, _ = hf_checkpoint(arch)
    settings = LoraSettings(rank=4, alpha=8, use_rslora=rslora, dropout=0.1)
    train(base, tmp_path, corpus_file, settings)
    ours = training_time_model(base, tmp_path, settings)
    plain = load_model(base, dtype="float32", device="cpu").model
    with torch.no_grad():
        got = ours.causal_lm_logits(IDS)
        want = peft_model(base, tmp_path)(IDS).logits
        unadapted = plain.causal_lm_logits(IDS)
    assert (got - want).abs().max() <= 1e-4
    assert (got - unadapted).abs().max() > 1e-2  # the adapter changes something


def test_adapter_config_and_tensor_names(hf_checkpoint: Any, corpus_file: Path,
                                         tmp_path: Path) -> None:
    base, _ = hf_checkpoint("gpt2")
    train(base, tmp_path, corpus_file, LoraSettings(rank=2, alpha=4, target_modules=("c_attn",)),
          max_steps=2)
    config = json.loads((tmp_path / ADAPTER_CONFIG_FILE).read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert config["target_modules"] == ["c_attn"] and config["fan_in_fan_out"] is True
    assert (config["r"], config["lora_alpha"], config["use_rslora"]) == (2, 4, False)
    assert config["base_model_name_or_path"] == str(base)
    tensors = load_file(tmp_path / ADAPTER_WEIGHTS_FILE)
    assert sorted(tensors) == sorted(
        f"base_model.model.transformer.h.{i}.attn.c_attn.lora_{ab}.weight"
        for i in range(2) for ab in "AB")
    assert tensors["base_model.model.transformer.h.0.attn.c_attn.lora_B.weight"].shape == (192, 2)


def test_unknown_target_module_is_refused(hf_checkpoint: Any) -> None:
    base, _ = hf_checkpoint("llama_gqa_llama3")
    model = load_model(base, dtype="float32", device="cpu").model
    with pytest.raises(ValueError, match=r"unknown LoRA target modules \['c_attn'\].*q_proj"):
        attach_lora(model, LoraSettings(target_modules=("c_attn", "q_proj")))


def test_cli_end_to_end(hf_checkpoint: Any, corpus_file: Path, tmp_path: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    base, _ = hf_checkpoint("qwen2")
    out = tmp_path / "my-adapter"
    rc = main(["train", "lora", str(corpus_file), "--base", str(base), "--out", str(out),
               "--steps", "6", "--batch-size", "2", "--context", "16", "--rank", "4",
               "--alpha", "4", "--rslora", "--target-modules", "q_proj,v_proj,down_proj",
               "--general", str(corpus_file), "--lr", "5e-3"])
    assert rc == 0
    printed = dict(line.split(": ") for line in capsys.readouterr().out.splitlines())
    assert float(printed["adapter_val_perplexity"]) < float(printed["base_val_perplexity"])
    for name in (ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, "README.md",
                 "training_summary.json"):
        assert (out / name).is_file(), name
    config = json.loads((out / ADAPTER_CONFIG_FILE).read_text())
    assert config["target_modules"] == ["down_proj", "q_proj", "v_proj"]
    assert config["use_rslora"] is True
    card = (out / "README.md").read_text()
    assert card.startswith("# my-adapter\n") and "general text" in card
    assert "--target-modules q_proj,v_proj,down_proj" in card  # the Reproduce command


def test_cli_reports_a_bad_target_as_an_error(hf_checkpoint: Any, corpus_file: Path,
                                              tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    base, _ = hf_checkpoint("gpt2")
    rc = main(["train", "lora", str(corpus_file), "--base", str(base), "--out",
               str(tmp_path / "x"), "--steps", "1", "--context", "16",
               "--target-modules", "q_proj"])
    assert rc == 2
    assert "unknown LoRA target modules ['q_proj']" in capsys.readouterr().err


def test_classifier_adapter_with_its_head_loads_in_peft(
    hf_checkpoint: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from app.train.classifier import classifier_from_lm
    from app.train.evaluate import classifier_logits

    base, _ = hf_checkpoint("gpt2")
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(
        json.dumps({"text": t, "label": "code" if ("def " in t or "import" in t) else "prose"})
        + "\n" for t in CORPUS * 2))
    out = tmp_path / "clf"
    rc = main(["train", "lora", str(data), "--task", "classify", "--base", str(base), "--out",
               str(out), "--steps", "30", "--batch-size", "8", "--lr", "2e-2", "--rank", "4",
               "--alpha", "8", "--target-modules", "c_attn", "--val-fraction", "0.25"])
    assert rc == 0
    assert "accuracy 1.0000" in capsys.readouterr().out  # two styles any model separates
    config = json.loads((out / ADAPTER_CONFIG_FILE).read_text())
    assert config["task_type"] == "SEQ_CLS" and config["modules_to_save"] == ["score"]
    assert "base_model.model.score.weight" in load_file(out / ADAPTER_WEIGHTS_FILE)
    labels = json.loads((out / "training_summary.json").read_text())["labels"]
    assert labels == ["code", "prose"]
    card = (out / "README.md").read_text()
    assert "test accuracy | 1.0000" in card and "num_labels=2" in card

    ours = classifier_from_lm(base, tuple(labels), seed=0)
    lora = attach_lora(ours, LoraSettings(rank=4, alpha=8, target_modules=("c_attn",)))
    assert ours.score is not None
    lora.heads["score"] = ours.score
    lora.load_state_dict(torch.load(out / STATE_FILE, weights_only=True)["model"])
    lora.eval()
    ref = peft_model(base, out, "AutoModelForSequenceClassification", num_labels=2)
    with torch.no_grad():
        got = classifier_logits(ours, IDS, torch.tensor([IDS.shape[1]]))
        want = ref(IDS).logits
    assert (got - want).abs().max() <= 1e-4


def test_fortunes_domain_split(tmp_path: Path) -> None:
    """`data fortunes --domain computers`: that file's fortunes split as the LM's split
    (so held-out text stays held out), and the other files' held-out ones as general text."""
    from app.train.fortunes import held_out, prepare

    source = tmp_path / "fortunes"
    source.mkdir()
    texts = {name: [f"{name} saying number {i}." for i in range(60)]
             for name in ("computers", "food")}
    for name, items in texts.items():
        (source / name).write_text("\n%\n".join(items) + "\n%\n")
    out = tmp_path / "data"
    counts = prepare(out, source, domains=("computers",))

    def read(split: str) -> list[str]:
        path = out / "domain" / "computers" / f"{split}.jsonl"
        return [json.loads(line)["text"] for line in path.read_text().splitlines()]

    assert read("train") == [t for t in texts["computers"] if not held_out(t)]
    assert read("val") == [t for t in texts["computers"] if held_out(t)]
    assert read("general_val") == [t for t in texts["food"] if held_out(t)]
    assert counts["domain/computers/val"] == len(read("val")) > 0
    with pytest.raises(ValueError, match="no fortune file named \\['nope'\\]"):
        prepare(out, source, domains=("nope",))


def test_interrupt_then_resume_equals_uninterrupted(
    hf_checkpoint: Any, corpus_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.train.loop import Trainer

    base, _ = hf_checkpoint("gpt2")
    settings = LoraSettings(rank=4, alpha=8)
    train(base, tmp_path / "straight", corpus_file, settings, max_steps=10)
    original = Trainer._one_step

    def interrupt_at_6(self: Trainer) -> tuple[float, int]:
        if self.step == 6:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "_one_step", interrupt_at_6)
    with pytest.raises(KeyboardInterrupt):
        train(base, tmp_path / "resumed", corpus_file, settings, max_steps=10)
    assert (tmp_path / "resumed" / ADAPTER_WEIGHTS_FILE).exists()  # Ctrl-C saved it
    monkeypatch.setattr(Trainer, "_one_step", original)
    data = LoraData([str(corpus_file)], val_fraction=0.2, context=32)
    train_lora_lm(base, tmp_path / "resumed", data, settings, tiny_cfg(max_steps=10),
                  resume=True)
    straight = load_file(tmp_path / "straight" / ADAPTER_WEIGHTS_FILE)
    resumed = load_file(tmp_path / "resumed" / ADAPTER_WEIGHTS_FILE)
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
