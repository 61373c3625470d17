from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import pytest
import torch

from app.checkpoint import LoadedModel, load_model
from app.engine.engine import Engine, EngineConfig
from app.engine.scheduler import SchedulerConfig
from app.tokenizer import Tokenizer

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def make_engine(loaded: LoadedModel, tokenizer: Tokenizer, **overrides: Any) -> Engine:
    sched = {k: overrides.pop(k) for k in list(overrides)
             if k in SchedulerConfig.__dataclass_fields__}
    sched.setdefault("max_num_batched_tokens", 64)
    sched.setdefault("max_num_seqs", min(8, sched["max_num_batched_tokens"]))
    cfg = EngineConfig(**{"num_kv_blocks": 256, "block_size": 4,
                          "scheduler": SchedulerConfig(**sched), **overrides})
    return Engine(loaded, tokenizer, cfg)


@pytest.fixture
def with_engine(hf_checkpoint: Any, tokenizer: Tokenizer
                ) -> Callable[..., Any]:
    """with_engine(arch, body, **config): run `await body(engine)` on a started engine."""

    def go(arch: str, body: Callable[[Engine], Awaitable[T]], **overrides: Any) -> T:
        directory, _ = hf_checkpoint(arch)
        loaded = load_model(directory, dtype="float32", device="cpu")

        async def main() -> T:
            engine = make_engine(loaded, tokenizer, **overrides)
            await engine.start()
            try:
                return await body(engine)
            finally:
                await engine.shutdown()
                engine.blocks.check_invariants()

        return run(main())

    return go


def reference_greedy(model: torch.nn.Module, prompt: list[int], n: int) -> list[int]:
    """Greedy decoding by a full forward pass over the whole sequence at every step."""
    tokens = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            logits = model.causal_lm_logits(torch.tensor([tokens]))[0, -1]
            tokens.append(int(logits.argmax()))
    return tokens[len(prompt):]
