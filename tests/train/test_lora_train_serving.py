"""An adapter trained here is served as peft runs it: `read_peft_adapter` reads it into
our fused layout and the serving path's logits (AdapterSlots, lora-core's per-token
math) equal transformers + peft's within 1e-4 in float32."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from app.checkpoint import load_model
from app.checkpoint.lora import read_peft_adapter
from app.engine.lora_slots import AdapterSlots
from app.train.loop import TrainConfig
from app.train.lora import LoraSettings
from app.train.lora_lm import LoraData, train_lora_lm
from tests.helpers import CORPUS
from tests.lora_helpers import forward_with

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "default-lm-lora-python"
BASE = SHIPPED.parent / "default-lm"


def peft_logits(base: Path, adapter: Path, ids: torch.Tensor) -> torch.Tensor:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    logging.getLogger("transformers").setLevel(logging.ERROR)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapter))
    with torch.no_grad():
        return model.eval()(ids).logits


def served_logits(base: Path, adapter: Path, ids: torch.Tensor, max_rank: int = 16
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(with the adapter, without) through the serving model and AdapterSlots."""
    loaded = load_model(base, dtype="float32", device="cpu")
    slots = AdapterSlots(loaded.model, max_loras=1, max_rank=max_rank)
    slots.register(read_peft_adapter(adapter, loaded.config, name="trained",
                                     max_rank=max_rank))
    with torch.no_grad():
        return (forward_with(loaded.model, slots, ids, ["trained"] * ids.shape[0]),
                forward_with(loaded.model, slots, ids, [None] * ids.shape[0]))


@pytest.mark.parametrize(("arch", "settings"), [
    ("llama_gqa_llama3", LoraSettings(rank=4, alpha=8)),
    ("mistral", LoraSettings(rank=8, alpha=4, use_rslora=True,
                             target_modules=("q_proj", "v_proj", "o_proj", "down_proj"))),
    ("gpt2", LoraSettings(rank=4, alpha=16, use_rslora=True)),
    ("gpt2", LoraSettings(rank=2, alpha=4, target_modules=("c_attn", "c_fc"))),
])
def test_trained_adapter_serves_with_peft_logits(
    hf_checkpoint: Any, tmp_path: Path, arch: str, settings: LoraSettings
) -> None:
    base, _ = hf_checkpoint(arch)
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in CORPUS * 2))
    out = tmp_path / "adapter"
    train_lora_lm(base, out, LoraData([str(corpus)], val_fraction=0.2, context=32), settings,
                  TrainConfig(max_steps=15, batch_size=4, lr=1e-2, warmup_steps=2,
                              weight_decay=0.0))
    ids = torch.randint(0, 300, (2, 20), generator=torch.Generator().manual_seed(0))
    got, base_rows = served_logits(base, out, ids)
    want = peft_logits(base, out, ids)
    assert (got - base_rows).abs().max() > 1e-2  # trained: the adapter does something
    assert (got - want).abs().max() <= 1e-4


def test_shipped_adapter_serves_with_peft_logits() -> None:
    """models/default-lm-lora-python over models/default-lm, as shipped."""
    config = json.loads((SHIPPED / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "models/default-lm"
    assert sum(f.stat().st_size for f in SHIPPED.iterdir()) < 5_000_000
    ids = torch.randint(0, 8192, (1, 48), generator=torch.Generator().manual_seed(0))
    got, plain = served_logits(BASE, SHIPPED, ids)
    assert (got - peft_logits(BASE, SHIPPED, ids)).abs().max() <= 1e-4
    assert (got - plain).abs().max() > 0.1


def test_trained_classifier_adapter_reads_with_its_head(hf_checkpoint: Any, tmp_path: Path
                                                        ) -> None:
    """--task classify: the reader carries the trained `score` head, and the served body
    with the adapter, pooled on the last token through that head, gives peft's logits."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from app.train.lora_classifier import train_lora_classifier

    base, _ = hf_checkpoint("llama_gqa_llama3")
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(
        json.dumps({"text": t, "label": "code" if "print" in t else "prose"}) + "\n"
        for t in CORPUS * 2))
    out = tmp_path / "clf"
    train_lora_classifier(str(data), base, out, LoraSettings(rank=4, alpha=8),
                          TrainConfig(max_steps=10, batch_size=8, lr=1e-2, warmup_steps=2,
                                      weight_decay=0.0))
    loaded = load_model(base, dtype="float32", device="cpu")
    adapter = read_peft_adapter(out, loaded.config, name="clf", max_rank=8)
    assert adapter.score is not None and adapter.score.shape == (2, loaded.config.hidden_size)
    slots = AdapterSlots(loaded.model, max_loras=1, max_rank=8)
    slots.register(adapter)
    ids = torch.randint(0, 300, (1, 20), generator=torch.Generator().manual_seed(0))
    step = slots.step(slots.activate(["clf"]), [ids.shape[1]])
    with torch.no_grad():
        hidden = loaded.model(ids, torch.arange(ids.shape[1])[None], None, step)
        got = hidden[0, -1] @ adapter.score.t()
        ref = AutoModelForSequenceClassification.from_pretrained(base, num_labels=2)
        want = PeftModel.from_pretrained(ref, str(out)).eval()(ids).logits[0]
    assert (got - want).abs().max() <= 1e-4


def test_shipped_adapter_effect_holds_when_served() -> None:
    """The card's claim, re-measured through the serving path on the first 12 blocks of
    its held-out text (the `concurrent` package of this Python's standard library): the
    adapter cuts perplexity by far (the card: 787 -> 234 on all of it)."""
    import sysconfig

    import torch.nn.functional as F

    from app.tokenizer import Tokenizer
    from app.train.data import pack_tokens, read_documents

    tokenizer = Tokenizer.from_dir(BASE)
    docs = read_documents([Path(sysconfig.get_paths()["stdlib"]) / "concurrent"])
    rows = pack_tokens((tokenizer.encode(d, add_special_tokens=False) for d in docs),
                       tokenizer.eos_ids[0], 256)[:12]
    with_adapter, plain = served_logits(BASE, SHIPPED, rows[:, :-1])

    def perplexity(logits: torch.Tensor) -> float:
        return float(F.cross_entropy(logits.flatten(0, 1), rows[:, 1:].flatten()).exp())

    assert perplexity(with_adapter) < 0.5 * perplexity(plain)
