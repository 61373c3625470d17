"""OpenAI-compatible endpoints: /v1/completions, /v1/chat/completions, /v1/models.

Extra sampling fields that vLLM also accepts (top_k, min_p, repetition_penalty,
min_tokens, ignore_eos, stop_token_ids, cache_salt) work here too; unknown fields are
ignored. As in OpenAI's API: chat without max_tokens may generate until the context is
full (bounded by the server's max_tokens_limit); usage carries
prompt_tokens_details.cached_tokens; every response and chunk carries system_fingerprint.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from app.api.deps import StateDep, pick_model
from app.api.errors import BadRequest
from app.api.schemas import (
    ChatChoice,
    ChatChoiceLogprobs,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprobEntry,
    ChatResponseMessage,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    OpenAIModel,
    OpenAIModelList,
)
from app.api.serving import (
    as_list,
    check_inputs,
    collect,
    encode,
    sampling_params,
    sse_stream,
    stream_usage,
    submit_all,
    token_text,
)
from app.api.state import ServedModel
from app.engine.output import CompletionDelta, RequestOutput
from app.engine.request import RequestKind
from app.sampling_params import TokenLogprob

router = APIRouter(tags=["openai"])
STREAMABLE: dict[int | str, dict[str, Any]] = {200: {
    "content": {"text/event-stream": {}},
    "description": "JSON, or SSE chunks ending with `data: [DONE]` when `stream` is true"}}
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@router.get("/v1/models", response_model=OpenAIModelList, summary="List served models")
async def models(state: StateDep) -> OpenAIModelList:
    return OpenAIModelList(data=[
        OpenAIModel(id=m.name, created=m.created, max_model_len=m.max_model_len)
        for m in state.models.values()])


def _completion_logprobs(model: ServedModel, entries: list[TokenLogprob] | None
                         ) -> CompletionLogprobs | None:
    if entries is None:
        return None
    tokens = [token_text(model, e.token_id) for e in entries]
    offsets, pos = [], 0
    for t in tokens:
        offsets.append(pos)
        pos += len(t)
    return CompletionLogprobs(
        tokens=tokens, token_logprobs=[e.logprob for e in entries],
        top_logprobs=[{token_text(model, t): lp for t, lp in e.top} for e in entries],
        text_offset=offsets)


def _chat_logprobs(model: ServedModel, entries: list[TokenLogprob] | None
                   ) -> ChatChoiceLogprobs | None:
    if entries is None:
        return None
    content = []
    for e in entries:
        text = token_text(model, e.token_id)
        content.append(ChatLogprobEntry(
            token=text, logprob=e.logprob, bytes=list(text.encode()),
            top_logprobs=[{"token": token_text(model, t), "logprob": lp,
                           "bytes": list(token_text(model, t).encode())} for t, lp in e.top]))
    return ChatChoiceLogprobs(content=content)


@router.post("/v1/completions", response_model=CompletionResponse, responses=STREAMABLE,
             summary="OpenAI-compatible text completion (stream=true for SSE chunks)")
async def completions(body: CompletionRequest, request: Request, state: StateDep) -> Any:
    model = pick_model(state, body.model, lm=True, purpose="completions")
    if body.echo:
        raise BadRequest("echo is not supported", param="echo")
    if body.best_of is not None and body.best_of != body.n:
        raise BadRequest("best_of must equal n (ranking completions is not supported)",
                         param="best_of")
    settings = state.settings
    texts = as_list(body.prompt)
    check_inputs(settings, texts, "prompt")
    top = body.logprobs or 0
    params = sampling_params(body, settings, logprobs=body.logprobs is not None,
                             top_logprobs=top)
    prompts = [await encode(model, settings, t, "prompt") for t in texts]
    request_id = request.state.request_id
    streams = submit_all(request, model, prompts, params, RequestKind.GENERATE,
                         salt=body.cache_salt)
    created, cid = int(time.time()), f"cmpl-{request_id}"
    head = {"id": cid, "object": "text_completion", "created": created, "model": model.name,
            "system_fingerprint": model.fingerprint}

    def choice_index(prompt_index: int, delta: CompletionDelta) -> int:
        return prompt_index * params.n + delta.index

    if body.stream:
        def on_output(i: int, out: RequestOutput) -> list[dict[str, Any]]:
            choices = [CompletionChoice(
                index=choice_index(i, d), text=d.text, finish_reason=d.finish_reason,
                logprobs=_completion_logprobs(model, d.logprobs)).model_dump()
                for d in out.completions]
            return [{**head, "choices": choices}]

        def final() -> list[dict[str, Any]]:
            if body.stream_options and body.stream_options.include_usage:
                return [{**head, "choices": [], "usage": stream_usage(streams).model_dump()}]
            return []

        return StreamingResponse(sse_stream(streams, on_output, final),
                                 media_type="text/event-stream", headers=SSE_HEADERS)
    outputs = await collect(request, streams)
    choices = [CompletionChoice(index=choice_index(i, c), text=c.text,
                                finish_reason=c.finish_reason,
                                logprobs=_completion_logprobs(model, c.logprobs))
               for i, out in enumerate(outputs) for c in out.completions]
    return CompletionResponse(id=cid, created=created, model=model.name, choices=choices,
                              usage=stream_usage(streams),
                              system_fingerprint=model.fingerprint)


def _message_text(content: str | list[dict[str, Any]] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    parts = []
    for part in content:
        if part.get("type") != "text":
            raise BadRequest(f"message content of type {part.get('type')!r} is not supported "
                             "(text only)", param="messages")
        parts.append(str(part.get("text", "")))
    return "".join(parts)


@router.post("/v1/chat/completions", response_model=ChatCompletionResponse,
             responses=STREAMABLE,
             summary="OpenAI-compatible chat completion, using the model's chat template")
async def chat_completions(body: ChatCompletionRequest, request: Request, state: StateDep
                           ) -> Any:
    model = pick_model(state, body.model, lm=True, purpose="chat completions")
    settings = state.settings
    messages = [{"role": m.role, "content": _message_text(m.content),
                 **({"name": m.name} if m.name else {})} for m in body.messages]
    text = model.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    prompt = await encode(model, settings, text, "messages", add_special_tokens=False)
    # OpenAI semantics: without max_tokens, a reply may run to the end of the context.
    until_full = max(1, min(model.max_model_len - len(prompt), settings.max_tokens_limit))
    params = sampling_params(body, settings, max_tokens=body.max_completion_tokens,
                             logprobs=body.logprobs, top_logprobs=body.top_logprobs or 0,
                             default_max_tokens=until_full)
    request_id = request.state.request_id
    streams = submit_all(request, model, [prompt], params, RequestKind.GENERATE,
                         salt=body.cache_salt)
    created, cid = int(time.time()), f"chatcmpl-{request_id}"

    if body.stream:
        def chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
            return {"id": cid, "object": "chat.completion.chunk", "created": created,
                    "model": model.name, "system_fingerprint": model.fingerprint,
                    "choices": choices, **extra}

        started: set[int] = set()

        def on_output(_: int, out: RequestOutput) -> list[dict[str, Any]]:
            events = []
            for d in out.completions:
                delta: dict[str, Any] = {"content": d.text}
                if d.index not in started:
                    started.add(d.index)
                    delta["role"] = "assistant"
                logprobs = _chat_logprobs(model, d.logprobs)
                events.append(chunk([{"index": d.index, "delta": delta,
                                      "finish_reason": d.finish_reason,
                                      "logprobs": logprobs.model_dump() if logprobs else None}]))
            return events

        def final() -> list[dict[str, Any]]:
            if body.stream_options and body.stream_options.include_usage:
                return [chunk([], usage=stream_usage(streams).model_dump())]
            return []

        return StreamingResponse(sse_stream(streams, on_output, final),
                                 media_type="text/event-stream", headers=SSE_HEADERS)
    outputs = await collect(request, streams)
    choices = [ChatChoice(index=c.index, message=ChatResponseMessage(content=c.text),
                          finish_reason=c.finish_reason,
                          logprobs=_chat_logprobs(model, c.logprobs))
               for c in outputs[0].completions]
    return ChatCompletionResponse(id=cid, created=created, model=model.name, choices=choices,
                                  usage=stream_usage(streams),
                                  system_fingerprint=model.fingerprint)
