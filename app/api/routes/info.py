"""GET /v1/info: the served models (dtype, device, KV cache, load) and the request limits."""

from __future__ import annotations

from fastapi import APIRouter

from app import app_version
from app.api import examples
from app.api.deps import StateDep
from app.api.responses import documented
from app.api.schemas import AdapterInfo, InfoResponse, ModelInfo
from app.modeling.quantized_model import weight_count

router = APIRouter(tags=["utility"])


@router.get("/v1/info", response_model=InfoResponse, responses=documented(examples.INFO),
            summary="Served models, their dtype and device, and the request limits")
async def info(state: StateDep) -> InfoResponse:
    s = state.settings
    models = []
    for m in state.models.values():
        cfg = m.loaded.config
        stats = m.engine.stats()
        resident = set(m.engine.resident_adapters())
        adapters = [AdapterInfo(name=a.name, path=str(a.path), rank=a.rank,
                                resident=a.name in resident,
                                requests=m.engine.adapters.in_flight(a.name))
                    for a in m.engine.adapters.entries()]
        models.append(ModelInfo(
            name=m.name, path=str(m.path), task=cfg.task.value, architecture=cfg.architecture,
            dtype=str(m.loaded.dtype).removeprefix("torch."), device=str(m.loaded.device),
            max_model_len=m.max_model_len, vocab_size=cfg.vocab_size,
            parameters=weight_count(m.loaded.model),
            labels=list(cfg.id2label) or None, kv_cache_blocks=stats.kv_blocks_total,
            block_size=stats.block_size, kv_blocks_used=stats.kv_blocks_used,
            running_requests=stats.running_requests, waiting_requests=stats.waiting_requests,
            compile=stats.compile, weights=stats.weights,
            quantization=stats.quantization, speculative=stats.speculative,
            spec_acceptance_rate=stats.spec_accepted_tokens / stats.spec_draft_tokens
            if stats.spec_draft_tokens else None, max_loras=stats.max_loras,
            adapters=adapters))
    limits: dict[str, int | float] = {
        "max_body_bytes": s.max_body_bytes, "max_prompt_tokens": s.max_prompt_tokens,
        "max_tokens_limit": s.max_tokens_limit, "default_max_tokens": s.default_max_tokens,
        "max_inputs": s.max_inputs, "max_n": s.max_n, "max_top_logprobs": s.max_top_logprobs,
        "max_predict_top_k": s.max_predict_top_k,
        "max_full_distribution": s.max_full_distribution,
        "max_candidate_labels": s.max_candidate_labels, "max_num_seqs": s.max_num_seqs,
        "max_num_batched_tokens": s.max_num_batched_tokens,
        "max_waiting_requests": s.max_waiting_requests,
        "max_waiting_tokens": s.max_waiting_tokens, "drain_timeout": s.drain_timeout,
    }
    return InfoResponse(version=app_version(), phase=state.phase.value, models=models,
                        limits=limits)
