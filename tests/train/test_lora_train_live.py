"""The shipped adapter trained here (models/default-lm-lora-python), served by a real
`python -m app serve --lora` on a loopback port: listed under its base, its greedy
completion is the one transformers + peft choose, and it scores Python as its card says
(far less perplexed than the base) while the base's own answers stay the base's."""

from __future__ import annotations

import json
import logging
import sysconfig
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from app.tokenizer import Tokenizer
from tests.live import LiveServer

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "models" / "default-lm"
ADAPTER = ROOT / "models" / "default-lm-lora-python"
CODE = (Path(sysconfig.get_paths()["stdlib"]) / "concurrent" / "futures" / "thread.py"
        ).read_text()[:1500]


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    args = ["--model", "default-lm=models/default-lm",
            "--lora", "python=models/default-lm-lora-python", "--max-num-seqs", "4"]
    with LiveServer(*args, env={"OMP_NUM_THREADS": "1"}) as live:
        yield live


def post(server: LiveServer, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(server.url + path, json=body, timeout=120)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def test_listed_under_its_base(server: LiveServer) -> None:
    models = {m["id"]: m for m in httpx.get(server.url + "/v1/models").json()["data"]}
    assert models["python"]["parent"] == "default-lm"


def test_greedy_completion_is_peft_s(server: LiveServer) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    prompt = Tokenizer.from_dir(BASE).encode("import os\nimport sys\n\n\ndef main(",
                                             add_special_tokens=False)
    body = {"prompt": prompt, "max_tokens": 12, "temperature": 0, "ignore_eos": True,
            "logprobs": 0}
    served = post(server, "/v1/completions", {"model": "python", **body})
    base = post(server, "/v1/completions", {"model": "default-lm", **body})
    logging.getLogger("transformers").setLevel(logging.ERROR)
    ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), str(ADAPTER))
    with torch.no_grad():
        want = ref.eval().generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                                   eos_token_id=None, pad_token_id=0)[0, len(prompt):]
    tokenizer = Tokenizer.from_dir(BASE)
    assert served["choices"][0]["text"] == tokenizer.decode(want.tolist())
    assert base["choices"][0]["text"] != served["choices"][0]["text"]


def test_scores_python_as_its_card_says(server: LiveServer) -> None:
    alone = post(server, "/v1/perplexity", {"model": "default-lm", "text": CODE})
    # The adapter's request and the base's in flight together: the base's rows are the
    # base's, whatever runs beside them.
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(post, server, "/v1/perplexity", {"model": m, "text": CODE})
                   for m in ("python", "default-lm", "python", "default-lm")]
        adapter, base, adapter2, base2 = (f.result() for f in futures)
    assert adapter["perplexity"] < 0.5 * alone["perplexity"]
    assert adapter2["mean_nll"] == pytest.approx(adapter["mean_nll"], abs=1e-4)
    for b in (base, base2):
        assert b["mean_nll"] == pytest.approx(alone["mean_nll"], abs=1e-4)


def test_classifier_adapter_of_a_classifier_serves_on_classify(
    hf_checkpoint: Any, tmp_path: Path
) -> None:
    """--task classify over a classifier checkpoint: the adapter keeps the checkpoint's
    labels, and /v1/classify naming it gives peft's probabilities, the base's unchanged."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from app.train.loop import TrainConfig
    from app.train.lora import LoraSettings
    from app.train.lora_classifier import train_lora_classifier
    from tests.helpers import CORPUS

    base, _ = hf_checkpoint("gpt2_cls")  # labels negative, neutral, positive
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": "positive" if "def" in t
                                        else "negative"}) + "\n" for t in CORPUS * 2))
    out = tmp_path / "mood"
    train_lora_classifier(str(data), base, out, LoraSettings(rank=4, alpha=8),
                          TrainConfig(max_steps=10, batch_size=8, lr=1e-2, warmup_steps=2,
                                      weight_decay=0.0))
    assert json.loads((out / "training_summary.json").read_text())["labels"] == [
        "negative", "neutral", "positive"]
    assert "--lora clf/mood=" in (out / "README.md").read_text()
    text = "def add(a, b): return a + b"
    args = ["--model", f"clf={base}", "--lora", f"clf/mood={out}"]
    with LiveServer(*args, env={"OMP_NUM_THREADS": "1"}) as live:
        ids = httpx.post(live.url + "/v1/tokenize", json={"model": "clf", "text": text}
                         ).json()["tokens"]
        got = post(live, "/v1/classify", {"model": "mood", "text": text, "top_k": 3})
        plain = post(live, "/v1/classify", {"model": "clf", "text": text, "top_k": 3})
    logging.getLogger("transformers").setLevel(logging.ERROR)
    ref = AutoModelForSequenceClassification.from_pretrained(base)
    with torch.no_grad():
        base_probs = ref.eval()(torch.tensor([ids])).logits.softmax(-1)[0]
        probs = PeftModel.from_pretrained(ref, str(out)).eval()(
            torch.tensor([ids])).logits.softmax(-1)[0]
    labels = ["negative", "neutral", "positive"]
    served = {s["label"]: s["score"] for s in got["scores"]}
    served_plain = {s["label"]: s["score"] for s in plain["scores"]}
    for i, label in enumerate(labels):
        assert served[label] == pytest.approx(float(probs[i]), abs=1e-4)
        assert served_plain[label] == pytest.approx(float(base_probs[i]), abs=1e-4)
    assert max(abs(served[k] - served_plain[k]) for k in labels) > 1e-3
