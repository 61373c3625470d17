"""The app in-process with its lifespan, for API tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import httpx
from fastapi import FastAPI

from app.api.state import Phase, ServerState
from app.config import Settings
from app.main import create_app
from tests.waiting import until

T = TypeVar("T")


def settings_for(*models: str, **overrides: Any) -> Settings:
    # Eager and unpacked, as the references are: the compiled path has its own tests
    # (tests/engine/test_compiled.py), and compiling per test would slow the suite.
    base: dict[str, Any] = {"model": list(models), "num_kv_blocks": 256, "block_size": 4,
                            "max_num_seqs": 8, "max_num_batched_tokens": 64,
                            "log_format": "text", "compile": "off", "prepack": "off"}
    return Settings(**{**base, **overrides})


@asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The app with its lifespan, models loaded, and an in-process HTTP client."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        state: ServerState = app.state.server
        # a quantized model chooses its kernels by timing them at startup: 35-45 s on a
        # busy 2-vCPU host, once over 60 s in a fresh-clone CI run (2026-12-07)
        await until(lambda: state.phase is not Phase.STARTING, "the models to load", 180)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test",
                                     timeout=60) as client:
            yield app, client


