"""Text <-> token ids with a model's tokenizer: ours (/v1/tokenize, /v1/detokenize) and
vLLM's (/tokenize, /detokenize, /tokenizer_info, at the root, with vLLM's field names),
which lm-evaluation-harness's remote tokenizer and other vLLM clients call."""

from __future__ import annotations

from fastapi import APIRouter

from app.api import examples
from app.api.deps import StateDep, pick_model
from app.api.errors import BadRequest
from app.api.prompt_input import check_vocabulary
from app.api.prompt_input import tokenize as tokenize_text
from app.api.protocols.openai_chat import internal_message
from app.api.responses import MODEL_QUERY, TOKENIZER, documented
from app.api.schemas import (
    ChatMessage,
    ChatTemplateFields,
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
    TokenizerInfoResponse,
    VLLMDetokenizeRequest,
    VLLMDetokenizeResponse,
    VLLMTokenizeRequest,
    VLLMTokenizeResponse,
)
from app.api.state import ServedModel
from app.chat.plan import ChatOptions, chat_prompt
from app.config import Settings
from app.tokenizer import FALLBACK_CHAT_TEMPLATE

router = APIRouter(tags=["utility"])


async def _token_ids(model: ServedModel, settings: Settings, text: str | None,
                     messages: list[ChatMessage] | None, param: str,
                     add_special_tokens: bool | None, add_generation_prompt: bool,
                     template: ChatTemplateFields) -> list[int]:
    """Token ids of a text, or of chat messages rendered as chat completions render them
    (app/chat/plan.py: tools and template kwargs too, so the count is the chat prompt's).
    Special tokens: the caller's choice; by default added to a text, not to rendered
    messages (the template writes its own)."""
    if (text is None) == (messages is None):
        raise BadRequest(f"give exactly one of {param} or messages", param=param)
    if messages is not None:
        options = ChatOptions(
            tools=[t.model_dump(exclude_none=True) for t in template.tools or ()],
            template_kwargs=template.chat_template_kwargs or {})
        text = chat_prompt(model.tokenizer, [internal_message(m) for m in messages], options,
                           settings.tool_call_parser, add_generation_prompt)
    else:
        for field in ("tools", "chat_template_kwargs"):
            if getattr(template, field) is not None:
                raise BadRequest(f"{field} applies to messages, not to {param}", param=field)
    add_special = (messages is None) if add_special_tokens is None else add_special_tokens
    if len(text or "") > settings.max_body_bytes:
        raise BadRequest(f"{param} is too long", param=param)
    return await tokenize_text(model, text or "", add_special)


@router.post("/v1/tokenize", response_model=TokenizeResponse,
             responses=documented(examples.TOKENIZE, *TOKENIZER),
             summary="Token ids of a text (or of chat messages after the chat template)")
async def tokenize(body: TokenizeRequest, state: StateDep) -> TokenizeResponse:
    model = pick_model(state, body.model, lm=None, purpose="tokenization")
    ids = await _token_ids(model, state.settings, body.text, body.messages, "text",
                           None if body.messages is not None else body.add_special_tokens,
                           True, body)
    return TokenizeResponse(model=model.name, tokens=ids,
                            token_strings=[model.tokenizer.id_to_token(i) or "" for i in ids],
                            count=len(ids), max_model_len=model.max_model_len)


@router.post("/v1/detokenize", response_model=DetokenizeResponse,
             responses=documented(examples.DETOKENIZE, *TOKENIZER),
             summary="Text of a list of token ids")
async def detokenize(body: DetokenizeRequest, state: StateDep) -> DetokenizeResponse:
    model = pick_model(state, body.model, lm=None, purpose="detokenization")
    check_vocabulary(model, body.tokens, "tokens")
    return DetokenizeResponse(model=model.name, text=model.tokenizer.decode(
        body.tokens, skip_special_tokens=body.skip_special_tokens))


@router.post("/tokenize", response_model=VLLMTokenizeResponse,
             responses=documented(examples.VLLM_TOKENIZE, *TOKENIZER),
             summary="vLLM-compatible: token ids of a prompt or of chat messages")
async def vllm_tokenize(body: VLLMTokenizeRequest, state: StateDep) -> VLLMTokenizeResponse:
    model = pick_model(state, body.model, lm=None, purpose="tokenization")
    ids = await _token_ids(model, state.settings, body.prompt, body.messages, "prompt",
                           body.add_special_tokens, body.add_generation_prompt, body)
    strs = [model.tokenizer.id_to_token(i) or "" for i in ids] if body.return_token_strs else None
    return VLLMTokenizeResponse(count=len(ids), max_model_len=model.max_model_len, tokens=ids,
                                token_strs=strs)


@router.post("/detokenize", response_model=VLLMDetokenizeResponse,
             responses=documented(examples.VLLM_DETOKENIZE, *TOKENIZER),
             summary="vLLM-compatible: the text of token ids")
async def vllm_detokenize(body: VLLMDetokenizeRequest, state: StateDep
                          ) -> VLLMDetokenizeResponse:
    model = pick_model(state, body.model, lm=None, purpose="detokenization")
    check_vocabulary(model, body.tokens, "tokens")
    return VLLMDetokenizeResponse(prompt=model.tokenizer.decode(body.tokens,
                                                                skip_special_tokens=False))


@router.get("/tokenizer_info", response_model=TokenizerInfoResponse,
            responses=documented(examples.TOKENIZER_INFO, *MODEL_QUERY),
            summary="vLLM-compatible: the tokenizer's special tokens and chat template")
async def tokenizer_info(state: StateDep, model: str | None = None) -> TokenizerInfoResponse:
    served = pick_model(state, model, lm=None, purpose="tokenizer info")
    tok = served.tokenizer
    eos_ids = tok.eos_ids
    return TokenizerInfoResponse(
        model=served.name,
        tokenizer_class=str(tok.config.get("tokenizer_class") or "PreTrainedTokenizerFast"),
        bos_token=tok.bos_token, eos_token=tok.eos_token, pad_token=tok.pad_token,
        bos_token_id=tok.bos_id, eos_token_id=eos_ids[0] if eos_ids else None,
        pad_token_id=tok.pad_id, add_bos_token=tok.add_bos_token,
        chat_template=tok.chat_template or FALLBACK_CHAT_TEMPLATE,
        model_max_length=served.max_model_len, vocab_size=served.loaded.config.vocab_size)
