"""POST /v1/tokenize and /v1/detokenize: text <-> token ids with a model's tokenizer."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import StateDep, pick_model
from app.api.errors import BadRequest
from app.api.schemas import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from app.api.serving import tokenize as encode_text

router = APIRouter(tags=["utility"])


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
    ids = await encode_text(model, text, add_special)
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
