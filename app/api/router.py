"""Every router, with its auth policy and the error responses it documents."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from app.api.deps import require_api_key
from app.api.routes import (
    classify,
    embeddings,
    generate,
    health,
    info,
    metrics,
    openai,
    perplexity,
    predict,
    tokenize,
)
from app.api.schemas import ErrorResponse
from app.config import Settings

_DESCRIPTIONS = {
    400: "Bad value (e.g. prompt + max_tokens beyond the context, a limit exceeded)",
    401: "Missing or wrong API key",
    404: "Unknown model",
    413: "Request body too large",
    422: "Body does not match the schema (the failing field is in `param`)",
    429: "Overloaded: queue full; retry after `Retry-After` seconds",
    500: "Inference failed for this request",
    503: "Not ready, draining, or the model's engine is dead",
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text} for code, text in _DESCRIPTIONS.items()
}
HEALTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: ERROR_RESPONSES[401], 503: {"description": "Not live/started/ready (see `reason`)"},
}


def build_router(settings: Settings) -> APIRouter:
    root = APIRouter()
    protected = [Depends(require_api_key)]
    for module in (predict, generate, classify, openai, embeddings, perplexity, tokenize,
                   info):
        root.include_router(module.router, dependencies=protected, responses=ERROR_RESPONSES)
    root.include_router(health.router, dependencies=[] if settings.public_health else protected,
                        responses=HEALTH_RESPONSES)
    root.include_router(metrics.router,
                        dependencies=[] if settings.public_metrics else protected)
    return root
