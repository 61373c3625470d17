"""POST /v1/tokenize and /v1/detokenize, and GET /v1/info."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from fastapi import APIRouter

from app.api.deps import StateDep, pick_model
from app.api.errors import BadRequest
from app.api.schemas import (
    DetokenizeRequest,
    DetokenizeResponse,
    InfoResponse,
    ModelInfo,
    TokenizeRequest,
    TokenizeResponse,
)

router = APIRouter(tags=["utility"])


def app_version() -> str:
    try:
        return version("app")
    except PackageNotFoundError:
        return "0.0.0+unknown"


@router.post("/v1/tokenize", response_model=TokenizeResponse,
             summary="Token ids of a text (or of chat messages after the chat template)")
async def tokenize(body: TokenizeRequest, state: StateDep) -> TokenizeResponse:
    model = pick_model(state, body.model, lm=None, purpose="tokenization")
    if (body.text is None) == (body.messages is None):
        raise BadRequest("give exactly one of text or messages", param="text")
    if body.messages is not None:
        text = model.tokenizer.apply_chat_template(body.messages, add_generation_prompt=True)
        add_special = False
    else:
        text, add_special = body.text or "", body.add_special_tokens
    if len(text) > state.settings.max_body_bytes:
        raise BadRequest("text is too long", param="text")
    ids = model.tokenizer.encode(text, add_special_tokens=add_special)
    return TokenizeResponse(model=model.name, tokens=ids,
                            token_strings=[model.tokenizer.id_to_token(i) or "" for i in ids],
                            count=len(ids), max_model_len=model.max_model_len)


@router.post("/v1/detokenize", response_model=DetokenizeResponse,
             summary="Text of a list of token ids")
async def detokenize(body: DetokenizeRequest, state: StateDep) -> DetokenizeResponse:
    model = pick_model(state, body.model, lm=None, purpose="detokenization")
    vocab = model.loaded.config.vocab_size
    bad = [t for t in body.tokens if t >= vocab]
    if bad:
        raise BadRequest(f"token ids must be < {vocab}; got {bad[:5]}", param="tokens")
    return DetokenizeResponse(model=model.name, text=model.tokenizer.decode(body.tokens))


@router.get("/v1/info", response_model=InfoResponse,
            summary="Served models, their dtype and device, and the request limits")
async def info(state: StateDep) -> InfoResponse:
    s = state.settings
    models = []
    for m in state.models.values():
        cfg = m.loaded.config
        models.append(ModelInfo(
            name=m.name, path=str(m.path), task=cfg.task.value, architecture=cfg.architecture,
            dtype=str(m.loaded.dtype).removeprefix("torch."), device=str(m.loaded.device),
            max_model_len=m.max_model_len, vocab_size=cfg.vocab_size,
            parameters=sum(p.numel() for p in m.loaded.model.parameters()),
            labels=list(cfg.id2label) or None, kv_cache_blocks=m.engine.blocks.num_blocks,
            block_size=m.engine.blocks.block_size, kv_blocks_used=m.engine.blocks.num_used,
            running_requests=m.engine.num_running, waiting_requests=m.engine.num_waiting))
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
