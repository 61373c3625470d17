"""Every router, with its auth policy."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from app.api.deps import require_api_key
from app.api.routes import classify, generate, health, openai, predict, tokenize
from app.config import Settings


def build_router(settings: Settings) -> APIRouter:
    root = APIRouter()
    protected = [Depends(require_api_key)]
    for module in (predict, generate, classify, openai, tokenize):
        root.include_router(module.router, dependencies=protected)
    root.include_router(health.router,
                        dependencies=[] if settings.public_health else protected)
    return root
