"""Kubernetes-style probes: /livez (process alive), /startupz (models loaded),
/readyz (able to take requests now; 503 while loading, draining or with a dead engine),
and /health, an alias of /readyz."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.api import examples
from app.api.deps import StateDep
from app.api.responses import probe
from app.api.schemas import HealthResponse
from app.api.state import Phase, ServerState

router = APIRouter(tags=["health"])


def _models(state: ServerState) -> dict[str, str]:
    return {name: ("dead: " + m.engine.dead_reason) if m.engine.dead_reason else
            ("running" if m.engine.is_running else "stopped")
            for name, m in state.models.items()}


def _answer(ok: bool, state: ServerState, reason: str | None) -> JSONResponse:
    body = HealthResponse(status="ok" if ok else "unavailable", phase=state.phase.value,
                          models=_models(state), reason=None if ok else reason)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


@router.get("/livez", response_model=HealthResponse, responses=probe(examples.READY, None),
            summary="Liveness: the process answers")
async def livez(state: StateDep) -> JSONResponse:
    return _answer(True, state, None)


@router.get("/startupz", response_model=HealthResponse,
            responses=probe(examples.READY, examples.NOT_READY),
            summary="Startup: 200 once every model has loaded (503 while loading or failed)")
async def startupz(state: StateDep) -> JSONResponse:
    started = state.phase in (Phase.READY, Phase.DRAINING)
    return _answer(started, state, state.failure or f"phase is {state.phase.value}")


def readiness(state: ServerState) -> JSONResponse:
    dead = state.dead_models()
    reason = state.failure or (f"engine dead: {dead}" if dead else None) or (
        f"phase is {state.phase.value}")
    return _answer(state.is_ready, state, reason)


@router.get("/readyz", response_model=HealthResponse,
            responses=probe(examples.READY, examples.NOT_READY),
            summary="Readiness: 200 when requests are accepted, 503 otherwise")
async def readyz(state: StateDep) -> JSONResponse:
    return readiness(state)


@router.get("/health", response_model=HealthResponse,
            responses=probe(examples.READY, examples.NOT_READY), summary="Alias of /readyz")
async def health(state: StateDep) -> JSONResponse:
    return readiness(state)
