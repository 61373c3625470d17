"""The card (README.md) written beside a trained adapter: what it was trained on, how,
and what it measurably changed."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

from app.checkpoint.lora_save import ADAPTER_WEIGHTS_FILE
from app.train.loop import TrainConfig
from app.train.lora import LoraSettings


@dataclass(frozen=True)
class LoraCard:
    base: str
    architecture: str
    settings: LoraSettings
    train: TrainConfig
    task: str
    inputs: list[str]
    val_inputs: list[str] | None
    general_inputs: list[str] | None
    train_documents: int
    val_documents: int
    context: int
    summary: dict[str, float]
    threads: int
    val_fraction: float = 0.05
    command: str | None = None
    description: str | None = None
    # Classifier adapters: rows of (what, value) for the results table instead of perplexity.
    results: tuple[tuple[str, str], ...] = ()
    labels: tuple[str, ...] = ()  # classifier adapters: the head's labels, in order
    classifier_base: bool = False  # adapted a classifier checkpoint (serves on /v1/classify)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine() or "unknown CPU"


def _perplexity_rows(card: LoraCard) -> list[str]:
    s = card.summary
    what = {"val": "held-out text of the training domain", "general": "general text"}
    rows = ["| text | tokens | base | with adapter | change |", "|---|---|---|---|---|"]
    for key, label in what.items():
        if f"base_{key}_perplexity" not in s:
            continue
        before, after = s[f"base_{key}_perplexity"], s[f"adapter_{key}_perplexity"]
        rows.append(f"| {label} | {int(s[f'{key}_tokens']):,} | {before:.2f} | {after:.2f} | "
                    f"{100 * (after / before - 1):+.1f} % |")
    return rows


def _use_lm(card: LoraCard, name: str, where: str) -> list[str]:
    return [
        "```bash",
        f"python -m app serve --model {card.base} --lora {name}={where}",
        "```",
        "",
        f"then name it as the model: `\"model\": \"{name}\"`. In `peft`, over the base "
        "loaded by `transformers`:",
        "",
        "```python",
        "from peft import PeftModel",
        f"model = PeftModel.from_pretrained(base_model, {where!r})",
        "```",
    ]


def _use_classifier(card: LoraCard, name: str, where: str) -> list[str]:
    peft = [
        "In `peft`, over the base read as a sequence classifier with as many labels "
        "(their order: " + ", ".join(f"{i} `{label}`" for i, label in enumerate(card.labels))
        + "):",
        "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForSequenceClassification",
        f"base = AutoModelForSequenceClassification.from_pretrained({card.base!r}, "
        f"num_labels={len(card.labels)})",
        f"model = PeftModel.from_pretrained(base, {where!r})",
        "```",
    ]
    if not card.classifier_base:
        # The server runs an adapter's head only on a classifier checkpoint (its labels).
        return [*peft, "", "The server runs an adapter's head on a classifier checkpoint's "
                "/v1/classify; this one was trained over a language model (a fresh head), "
                "so it is for `peft`. Train with `--base` a classifier to serve it."]
    return [
        "```bash",
        f"python -m app serve --model clf={card.base} --lora clf/{name}={where}",
        "```",
        "",
        f"then `POST /v1/classify` with `\"model\": \"{name}\"`: the adapter's body update "
        "and its own head, with the base's labels.",
        "",
        *peft,
    ]


def card_text(name: str, where: str, card: LoraCard, adapter_bytes: int) -> str:
    st, t, s = card.settings, card.train, card.summary
    targets = ", ".join(st.target_modules) if st.target_modules else "every linear projection"
    held_out = (", ".join(card.val_inputs) if card.val_inputs
                else f"a {card.val_fraction:.0%} split of the training documents")
    lines = [
        f"# {name}",
        "",
        f"A LoRA adapter of `{card.base}` ({card.architecture}), in PEFT format "
        "(`adapter_config.json` + `adapter_model.safetensors`), trained by "
        "`python -m app train lora`.",
        "",
    ]
    if card.description:
        lines += [card.description, ""]
    lines += [
        "| | |",
        "|---|---|",
        f"| task | {card.task} |",
        f"| LoRA | rank {st.rank}, alpha {st.alpha:g} (scaling {st.scaling:.4g}"
        f"{', rsLoRA' if st.use_rslora else ''}), dropout {st.dropout:g}, on {targets} |",
        f"| trainable parameters | {int(s['trainable_parameters']):,} "
        f"({adapter_bytes / 1e6:.2f} MB as float32 safetensors) |",
        f"| training text | {', '.join(card.inputs)}: {card.train_documents:,} documents"
        + (f", {int(s['train_tokens']):,} tokens in {card.context}-token blocks"
           if "train_tokens" in s else "") + " |",
        f"| held out | {held_out}: {card.val_documents:,} documents |",
        f"| training | {t.max_steps} steps of batch {t.batch_size}, AdamW, peak lr {t.lr:g}, "
        f"{t.warmup_steps} warmup steps, cosine to {t.lr * t.min_lr_ratio:g}, weight decay "
        f"{t.weight_decay:g}, {t.precision}, seed {t.seed} |",
        f"| time and hardware | {s['seconds'] / 60:.1f} minutes (measurement included) on "
        f"{cpu_name()}, {card.threads} threads |",
        "",
        "## Measured effect",
        "",
    ]
    if card.results:
        lines += ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in card.results)]
    else:
        lines += ["Perplexity (lower is better), the same blocks for both models:", "",
                  *_perplexity_rows(card)]
        if card.general_inputs:
            lines += ["", f"General text: {', '.join(card.general_inputs)}."]
    lines += ["", "## Use", "", *(_use_classifier(card, name, where) if card.labels
                                  else _use_lm(card, name, where))]
    if card.command:
        lines += ["", "## Reproduce", "", "```bash", card.command, "```", "",
                  "`training_summary.json` holds the settings and the evaluation history."]
    return "\n".join(lines) + "\n"


def write_card(out_dir: Path, card: LoraCard) -> None:
    size = (out_dir / ADAPTER_WEIGHTS_FILE).stat().st_size
    (out_dir / "README.md").write_text(card_text(out_dir.resolve().name, str(out_dir), card,
                                                 size))
