"""vLLM's runtime LoRA endpoints: POST /v1/load_lora_adapter and /v1/unload_lora_adapter.

Off unless the server runs with --allow-runtime-lora (404 then, as vLLM answers when its
VLLM_ALLOW_RUNTIME_LORA_UPDATING is unset, but saying why). As in vLLM, success is a line
of plain text and errors are JSON; a duplicate name is vLLM's 400, an unknown one its 404.
Unloading an adapter with requests in flight refuses new requests for it at once and
answers once those in flight have finished (never cutting them off).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from app.api import examples
from app.api.deps import StateDep, require_serving
from app.api.errors import BadRequest, NotFound
from app.api.lora_admin import confined_path, load_adapter, unload_adapter
from app.api.schemas import LoadLoraAdapterRequest, UnloadLoraAdapterRequest
from app.api.state import ServerState

router = APIRouter(tags=["lora"])


def _documented(ok: str, *codes: int) -> dict[int | str, dict[str, Any]]:
    out: dict[int | str, dict[str, Any]] = {
        200: {"description": "Plain text (as vLLM answers)",
              "content": {"text/plain": {"example": ok}}}}
    for code in codes:
        description, example = examples.LORA_ERRORS[code]
        # the schema named here: with a `model`, FastAPI would file it under the route's
        # text/plain media type
        out[code] = {"description": description, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/ErrorResponse"}, "example": example}}}
    return out


def _require_runtime_lora(state: ServerState) -> None:
    if not state.settings.allow_runtime_lora:
        raise NotFound("loading LoRA adapters at run time is off on this server (start it "
                       "with --allow-runtime-lora and --lora-dir)")
    require_serving(state)


@router.post("/v1/load_lora_adapter", response_class=PlainTextResponse,
             responses=_documented(examples.LORA_LOADED, 400, 404, 413, 422, 503),
             summary="Load a PEFT LoRA adapter from --lora-dir (vLLM's; needs "
                     "--allow-runtime-lora)")
async def load_lora_adapter(body: LoadLoraAdapterRequest, state: StateDep
                            ) -> PlainTextResponse:
    _require_runtime_lora(state)
    if not body.lora_name or not body.lora_path:
        raise BadRequest("Both 'lora_name' and 'lora_path' must be provided.",
                         param="lora_name" if not body.lora_name else "lora_path")
    if body.load_inplace:
        raise BadRequest("load_inplace is not supported: unload the adapter, then load it",
                         param="load_inplace")
    assert state.settings.lora_dir is not None  # Settings requires it with the switch
    path = confined_path(state.settings.lora_dir, body.lora_path)
    await load_adapter(state, body.lora_name, path, body.base_model_name)
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")


@router.post("/v1/unload_lora_adapter", response_class=PlainTextResponse,
             responses=_documented(examples.LORA_UNLOADED, 400, 404, 413, 422, 503),
             summary="Unload a LoRA adapter once its requests in flight finish (vLLM's; "
                     "needs --allow-runtime-lora)")
async def unload_lora_adapter(body: UnloadLoraAdapterRequest, state: StateDep
                              ) -> PlainTextResponse:
    _require_runtime_lora(state)
    await unload_adapter(state, body.lora_name)
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed "
                             "successfully.")
