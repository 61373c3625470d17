"""Every router, with its auth policy."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Security

from app.api.deps import bearer_scheme, require_api_key
from app.api.responses import UNAUTHORIZED
from app.api.routes import (
    anthropic_messages,
    classify,
    embeddings,
    generate,
    health,
    info,
    lora,
    metrics,
    openai,
    openai_responses,
    perplexity,
    predict,
    router_info,
    tokenize,
)
from app.config import Settings


def build_router(settings: Settings) -> APIRouter:
    """Every route; with API keys, the protected ones document the bearer scheme (so
    /docs' "Authorize" sends the key) and 401. Each route documents its own other
    statuses (app.api.responses)."""
    root = APIRouter()
    keyed = bool(settings.api_key) or settings.api_key_file is not None
    protected: list[Any] = [Depends(require_api_key)]
    responses: dict[int | str, dict[str, Any]] = {}
    if keyed:
        protected.append(Security(bearer_scheme))
        responses = UNAUTHORIZED
    for module in (predict, generate, classify, openai, openai_responses, embeddings,
                   perplexity, tokenize, info, router_info, lora):
        root.include_router(module.router, dependencies=protected, responses=responses)
    # Anthropic's routes document their 401 in Anthropic's error shape
    root.include_router(anthropic_messages.router, dependencies=protected,
                        responses=anthropic_messages.UNAUTHORIZED if keyed else {})
    for module, public in ((health, settings.public_health),
                           (metrics, settings.public_metrics)):
        root.include_router(module.router, dependencies=[] if public else protected,
                            responses={} if public else responses)
    return root
