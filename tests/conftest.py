from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from fastapi import FastAPI

from app.tokenizer import Tokenizer
from app.train.bpe import train_bpe
from tests.app_helpers import running_app, settings_for
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


T = TypeVar("T")


@pytest.fixture
def checkpoints(hf_checkpoint: Any) -> dict[str, Path]:
    return {"lm": hf_checkpoint("llama_gqa_llama3")[0], "cls": hf_checkpoint("gpt2_cls")[0]}


@pytest.fixture
def api(checkpoints: dict[str, Path]) -> Callable[..., Any]:
    """api(body, **settings): run `await body(app, client)` against lm + cls models."""

    def go(body: Callable[[FastAPI, httpx.AsyncClient], Awaitable[T]], *, models: list[str]
           | None = None, **overrides: Any) -> T:
        specs = models or [f"lm={checkpoints['lm']}", f"cls={checkpoints['cls']}"]

        async def main() -> T:
            async with running_app(settings_for(*specs, **overrides)) as (app, client):
                return await body(app, client)

        return asyncio.run(main())

    return go
