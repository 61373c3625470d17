"""FastAPI dependencies: the server state, model lookup, API-key auth."""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPBearer

from app.api.errors import BadRequest, NotFound, NotReady, Unauthorized
from app.api.state import Phase, ServedModel, ServerState


def get_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.server
    return state


StateDep = Annotated[ServerState, Depends(get_state)]


# The OpenAPI description of the auth below, so /docs offers "Authorize" and sends the
# key; it checks nothing itself (auto_error=False): require_api_key does.
bearer_scheme = HTTPBearer(
    auto_error=False, scheme_name="bearerAuth",
    description="An API key of the server (--api-key / --api-key-file), sent as "
                "`Authorization: Bearer <key>` (Anthropic's clients: `x-api-key: <key>`)")


def presented_key(request: Request) -> str | None:
    """The key a request presents: `Authorization: Bearer KEY` (OpenAI's clients) or
    `x-api-key: KEY` (Anthropic's), whichever is there; Bearer first."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    key = request.headers.get("x-api-key", "").strip()
    return key or None


async def require_api_key(request: Request, state: StateDep) -> None:
    """Authorization: Bearer KEY or x-api-key: KEY, compared in constant time against
    every key."""
    if not state.api_keys:
        return
    token = presented_key(request)
    if token is None:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>' (or "
                           "'x-api-key: <key>')", headers={"WWW-Authenticate": "Bearer"})
    presented = token.encode()
    match = False
    for key in state.api_keys:  # no early exit: timing does not reveal which key matched
        match |= hmac.compare_digest(presented, key.encode())
    if not match:
        raise Unauthorized("invalid API key", headers={"WWW-Authenticate": "Bearer"})
    if state.settings.cache_salt_api_key:
        # The prefix-cache namespace of this caller (a hash: the key itself is never kept).
        request.state.api_key_id = hashlib.sha256(presented).hexdigest()[:32]


def require_serving(state: ServerState) -> None:
    if state.phase is Phase.DRAINING:
        raise NotReady("the server is shutting down and takes no new requests")
    if state.phase is not Phase.READY:
        raise NotReady(f"the server is not ready ({state.phase.value})",
                       headers={"Retry-After": "5"})


def adapter_view(state: ServerState, name: str) -> ServedModel | None:
    """The base model's view for the adapter `name`, if one is loaded (not one still
    loading, nor one being unloaded)."""
    base = state.models.get(state.adapters.get(name, ""))
    if base is None or not base.engine.has_adapter(name):
        return None
    return base.for_adapter(name)


def pick_model(state: ServerState, name: str | None, *, lm: bool | None,
               purpose: str) -> ServedModel:
    """The named model, or the first one that can do `purpose` (lm: True for language
    models, False for classifiers, None for any). A LoRA adapter's name gives its base
    model's view for that adapter (ServedModel.for_adapter)."""
    require_serving(state)
    if name:
        model = state.models.get(name) or adapter_view(state, name)
        if model is None:
            known = ", ".join([*state.models, *state.adapters])
            raise NotFound(f"model {name!r} does not exist (served: {known})", param="model")
        if lm is not None and model.is_lm != lm:
            kind = "a language model" if lm else "a classification model"
            raise BadRequest(f"model {name!r} cannot serve {purpose}: it is not {kind}",
                             param="model")
        return model
    for model in state.models.values():
        if lm is None or model.is_lm == lm:
            return model
    kind = "language model" if lm else "classification model"
    raise BadRequest(f"no {kind} is served, so {purpose} is unavailable", param="model")
