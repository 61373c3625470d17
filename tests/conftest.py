from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from app.tokenizer import Tokenizer
from app.train.bpe import train_bpe
from tests.helpers import CORPUS, build_hf_checkpoint


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    return train_bpe(CORPUS, vocab_size=400, min_frequency=1)


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory: pytest.TempPathFactory, tokenizer: Tokenizer) -> Any:
    """hf_checkpoint(name) -> (directory, transformers model); built once per session."""
    cache: dict[str, tuple[Path, Any]] = {}

    def make(name: str) -> tuple[Path, Any]:
        if name not in cache:
            directory = tmp_path_factory.mktemp(name)
            logging.getLogger("transformers").setLevel(logging.ERROR)
            cache[name] = (directory, build_hf_checkpoint(name, directory, tokenizer))
        return cache[name]

    return make
