"""What load- and cache-aware routers read from a replica, in the shapes they parse:
SGLang's `GET /get_load` (sglang-router's and vllm-router's load-aware policies),
`GET /get_model_info` and `GET /get_server_info`, and vLLM's `GET /server_info`
(vllm-router's kv_aware policy reads `vllm_config.model_config.model` and
`vllm_config.cache_config.block_size` from `?config_format=json`). All read the engines'
snapshots only (app.engine.stats): as cheap as /v1/info."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app import app_version
from app.api import examples
from app.api.deps import StateDep
from app.api.errors import NotReady
from app.api.responses import documented
from app.api.state import ServedModel, ServerState

router = APIRouter(tags=["routers"])

# Settings that must never leave the process (keys, and paths to them).
_SECRET_SETTINGS = {"api_key", "api_key_file"}


def _first_lm(state: ServerState) -> ServedModel:
    for model in state.models.values():
        if model.is_lm:
            return model
    for model in state.models.values():
        return model
    raise NotReady("no model is loaded yet")


@router.get("/get_load", responses=documented(examples.GET_LOAD),  # type: ignore[arg-type]
            summary="SGLang: requests and KV tokens in use (load-aware routers)")
async def get_load(state: StateDep) -> list[dict[str, int]]:
    """One entry (this process is one data-parallel rank): requests running and waiting
    and the KV-cache tokens they hold, summed over the served models."""
    running = waiting = tokens = 0
    for model in state.models.values():
        s = model.engine.stats()
        running += s.running_requests
        waiting += s.waiting_requests
        tokens += s.kv_blocks_used * s.block_size
    return [{"dp_rank": 0, "num_reqs": running, "num_waiting_reqs": waiting,
             "num_tokens": tokens}]


@router.get("/get_model_info", responses=documented(examples.GET_MODEL_INFO, 503),
            summary="SGLang: the served model (routers' discovery)")
async def get_model_info(state: StateDep) -> dict[str, Any]:
    model = _first_lm(state)
    return {"model_path": str(model.path), "tokenizer_path": str(model.path),
            "served_model_name": model.name, "is_generation": model.is_lm,
            "max_model_len": model.max_model_len, "weight_version": model.fingerprint}


def _server_info(state: ServerState) -> dict[str, Any]:
    model = _first_lm(state)
    s = model.engine.stats()
    settings = state.settings.model_dump(mode="json", exclude=_SECRET_SETTINGS)
    return {
        "version": app_version(),
        # vLLM's shape (GET /server_info?config_format=json), read by vllm-router
        "vllm_config": {
            "model_config": {"model": model.name, "served_model_name": model.name,
                             "max_model_len": model.max_model_len,
                             "dtype": str(model.loaded.dtype).removeprefix("torch.")},
            "cache_config": {"block_size": s.block_size, "num_gpu_blocks": s.kv_blocks_total,
                             "enable_prefix_caching": state.settings.enable_prefix_caching},
            "scheduler_config": {"max_num_seqs": state.settings.max_num_seqs,
                                 "max_num_batched_tokens":
                                     state.settings.max_num_batched_tokens}},
        # SGLang's shape (GET /get_server_info): the server's arguments, then its state
        "server_args": settings,
        "internal_states": [{"num_reqs": s.running_requests,
                             "num_waiting_reqs": s.waiting_requests,
                             "kv_blocks_used": s.kv_blocks_used}],
    }


@router.get("/server_info", responses=documented(examples.SERVER_INFO, 503),
            summary="vLLM: the server's configuration (config_format=json)")
async def server_info(state: StateDep, config_format: str = "json") -> dict[str, Any]:
    """`config_format` is accepted for vLLM's clients; the answer is always JSON."""
    return _server_info(state)


@router.get("/get_server_info", responses=documented(examples.SERVER_INFO, 503),
            summary="SGLang: the server's arguments and state")
async def get_server_info(state: StateDep) -> dict[str, Any]:
    return _server_info(state)
