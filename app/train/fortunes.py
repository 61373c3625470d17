"""Prepare the shipped models' data from Debian's `fortunes` package (BSD licence).

Every fortune lands in exactly one split, chosen by a hash of its text, so the LM's
validation text and the classifier's test rows are never trained on by either model.
Writes:
  lm/train.jsonl, lm/val.jsonl                       {"text": ...}: all categories
  classifier/train.jsonl, classifier/test.jsonl      {"text": ..., "label": category}
and for each --domain CATEGORY (one style's text, for a LoRA adapter):
  domain/CATEGORY/train.jsonl, domain/CATEGORY/val.jsonl   that file's fortunes, same split
  domain/CATEGORY/general_val.jsonl                        held-out fortunes of every other file
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

FORTUNE_DIR = Path("/usr/share/games/fortunes")
# Topics that are about one thing each (not "miscellaneous", "cookie", "fortunes").
CLASSIFIER_LABELS = (
    "computers", "education", "food", "law", "love",
    "medicine", "politics", "science", "sports", "startrek",
)
HELD_OUT_PERCENT = 10


def read_fortunes(file: Path) -> list[str]:
    text = file.read_text(encoding="utf-8", errors="replace")
    items = [item.strip("\n") for item in text.split("\n%\n")]
    return [item for item in items if item.strip() and item.strip() != "%"]


def held_out(text: str) -> bool:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") % 100 < HELD_OUT_PERCENT


def prepare(out: Path, source: Path = FORTUNE_DIR, domains: tuple[str, ...] = ()
            ) -> dict[str, int]:
    if not source.is_dir():
        raise FileNotFoundError(
            f"{source} not found: install Debian's fortunes package (apt-get install fortunes)"
        )
    categories = sorted(
        f for f in source.iterdir() if f.is_file() and "." not in f.name and f.stat().st_size
    )
    unknown = sorted(set(domains) - {f.name for f in categories})
    if unknown:
        raise ValueError(f"no fortune file named {unknown} in {source} "
                         f"(files: {', '.join(f.name for f in categories)})")
    seen: set[str] = set()
    rows: dict[str, list[dict[str, str]]] = {"lm/train": [], "lm/val": [],
                                             "classifier/train": [], "classifier/test": []}
    for d in domains:
        rows |= {f"domain/{d}/train": [], f"domain/{d}/val": [], f"domain/{d}/general_val": []}
    for file in categories:
        for item in read_fortunes(file):
            if item in seen:  # a few fortunes appear in two files
                continue
            seen.add(item)
            split = "val" if held_out(item) else "train"
            rows[f"lm/{split}"].append({"text": item})
            if file.name in CLASSIFIER_LABELS:
                rows["classifier/" + ("test" if split == "val" else "train")].append(
                    {"text": item, "label": file.name})
            for d in domains:
                if file.name == d:
                    rows[f"domain/{d}/{split}"].append({"text": item})
                elif split == "val":
                    rows[f"domain/{d}/general_val"].append({"text": item})
    for name, items in rows.items():
        path = out / f"{name}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as f:
            for row in items:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    counts = {name: len(items) for name, items in rows.items()}
    log.info("wrote %s to %s", counts, out)
    return counts
