"""GET /metrics: the Prometheus text exposition of every metric in app.metrics.

One process serves each model (scale out with replicas, not workers), so the app's own
registry is the whole truth and prometheus_client's multiprocess mode is not needed."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from app.api import examples

router = APIRouter(tags=["health"])


@router.get("/metrics", response_class=Response, summary="Prometheus metrics",
            responses={200: {"content": {"text/plain": {"example": examples.METRICS}},
                             "description": "Prometheus text exposition format"}})
async def metrics(request: Request) -> Response:
    max_age = request.app.state.server.settings.metrics_max_age
    return Response(request.app.state.metrics.exposition(max_age),
                    media_type=CONTENT_TYPE_LATEST)
