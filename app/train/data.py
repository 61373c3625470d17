"""Reading training data: text documents for language models, labelled rows for classifiers.

Every reading error names the file and line, so a user can fix their data.
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py")


class DataError(ValueError):
    """Unusable training or evaluation data; the message names file and line."""


def _decode(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 ({exc.reason})") from exc


def _expand(paths: Iterable[str | Path]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if f.is_file()
                                and f.suffix in (*TEXT_SUFFIXES, ".jsonl")))
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"{p}: no such file or directory")
    if not files:
        raise DataError(f"no text files found in {', '.join(map(str, paths))}")
    return files


def jsonl_rows(file: Path, text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a JSON-lines file."""
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{file}:{n}: not valid JSON ({exc.msg})") from exc
        if not isinstance(obj, dict):
            raise DataError(f"{file}:{n}: expected a JSON object")
        yield n, obj


def read_documents(paths: Iterable[str | Path]) -> list[str]:
    """Documents from .txt-like files (one document each) and .jsonl files ({"text": ...})."""
    docs: list[str] = []
    for file in _expand(paths):
        text = _decode(file)
        if file.suffix == ".jsonl":
            for n, row in jsonl_rows(file, text):
                if not isinstance(row.get("text"), str):
                    raise DataError(f'{file}:{n}: expected an object with a "text" string')
                docs.append(row["text"])
        elif text.strip():
            docs.append(text)
    return docs


def split_documents(
    docs: Sequence[str], val_fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """Deterministic document-level train/validation split."""
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(docs) * val_fraction)) if val_fraction > 0 else 0
    val = sorted(order[:n_val])
    train = sorted(order[n_val:])
    return [docs[i] for i in train], [docs[i] for i in val]


def pack_tokens(token_docs: Iterable[list[int]], eos_id: int, block_size: int) -> Tensor:
    """Concatenate documents (each followed by EOS) and cut into (N, block_size + 1) rows.

    Rows overlap by one token so that row[:-1] are inputs and row[1:] their targets.
    """
    stream: list[int] = []
    for ids in token_docs:
        stream.extend(ids)
        stream.append(eos_id)
    n = (len(stream) - 1) // block_size
    if n < 1:
        raise DataError(
            f"not enough text: {len(stream)} tokens, need more than one block of {block_size}"
        )
    flat = torch.tensor(stream[: n * block_size + 1], dtype=torch.long)
    return torch.stack([flat[i * block_size: (i + 1) * block_size + 1] for i in range(n)])


@dataclass(frozen=True)
class LabelledText:
    text: str
    label: str
    line: int


def read_labelled(
    path: str | Path, text_column: str = "text", label_column: str = "label"
) -> list[LabelledText]:
    """Rows of a CSV (with a header) or JSONL file; each row needs text and a label."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"{file}: no such file")
    content = _decode(file)
    rows: list[LabelledText] = []
    if file.suffix == ".jsonl":
        for n, obj in jsonl_rows(file, content):
            rows.append(_row(file, n, obj, text_column, label_column))
    else:
        reader = csv.DictReader(io.StringIO(content, newline=""))
        columns = reader.fieldnames or []
        for column in (text_column, label_column):
            if column not in columns:
                raise DataError(f"{file}: no column {column!r} (columns: {', '.join(columns)})")
        try:
            for row in reader:
                rows.append(_row(file, reader.line_num, row, text_column, label_column))
        except csv.Error as exc:
            raise DataError(f"{file}:{reader.line_num}: {exc}") from exc
    if not rows:
        raise DataError(f"{file}: no rows")
    return rows


def _row(file: Path, n: int, obj: dict[str, object], text_col: str, label_col: str
         ) -> LabelledText:
    text, label = obj.get(text_col), obj.get(label_col)
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{file}:{n}: empty or missing {text_col!r}")
    if label is None or not str(label).strip():
        raise DataError(f"{file}:{n}: empty or missing {label_col!r}")
    return LabelledText(text=text, label=str(label).strip(), line=n)
