"""OpenAI-compatible endpoints: /v1/completions, /v1/chat/completions, /v1/models.

Extra sampling fields that vLLM also accepts (top_k, min_p, repetition_penalty,
min_tokens, ignore_eos, stop_token_ids, cache_salt) work here too. An unknown field gets
400 naming it; OpenAI fields for features this server lacks (tools, ...) get 400 saying
so, and harmless ones (user, metadata, ...) are ignored: app/api/openai_fields.py.
Completions take token-id prompts, `echo` (with the prompt's logprobs when `logprobs` is
set: what lm-evaluation-harness's loglikelihood tasks send) and vLLM's `prompt_logprobs`.
As in OpenAI's API: chat without max_tokens may generate until the context is full
(bounded by the server's max_tokens_limit); usage carries
prompt_tokens_details.cached_tokens; every response and chunk carries system_fingerprint.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from app.api import examples
from app.api.deps import StateDep, pick_model
from app.api.errors import BadRequest
from app.api.openai_fields import refuse_unsupported
from app.api.responses import INFERENCE, documented
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
    PromptLogprob,
    Usage,
)
from app.api.serving import (
    collect,
    encode,
    prompt_inputs,
    prompt_logprobs_out,
    sampling_params,
    score_prompts,
    sse,
    sse_stream,
    stream_usage,
    submit_all,
    token_text,
)
from app.api.state import ServedModel
from app.api.structured_fields import request_constraint
from app.engine.output import RequestOutput
from app.engine.request import RequestKind
from app.sampling_params import TokenLogprob

router = APIRouter(tags=["openai"])
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@router.get("/v1/models", response_model=OpenAIModelList, summary="List served models",
            responses=documented(examples.MODELS))
async def models(state: StateDep) -> OpenAIModelList:
    return OpenAIModelList(data=[
        OpenAIModel(id=m.name, created=m.created, max_model_len=m.max_model_len)
        for m in state.models.values()])


def _completion_logprobs(model: ServedModel, entries: list[TokenLogprob] | None,
                         echo: EchoedPrompt | None = None) -> CompletionLogprobs | None:
    """OpenAI's legacy logprobs; with echo, the prompt's tokens first (the first one's
    logprob null) and text_offset running across prompt and completion."""
    if entries is None and echo is None:
        return None
    tokens: list[str] = list(echo.tokens) if echo else []
    values: list[float | None] = list(echo.logprobs) if echo else []
    tops: list[dict[str, float] | None] = list(echo.tops) if echo else []
    for e in entries or []:
        tokens.append(token_text(model, e.token_id))
        values.append(e.logprob)
        tops.append({token_text(model, t): lp for t, lp in e.top})
    offsets, pos = [], 0
    for t in tokens:
        offsets.append(pos)
        pos += len(t)
    return CompletionLogprobs(tokens=tokens, token_logprobs=values, top_logprobs=tops,
                              text_offset=offsets)


@dataclass(frozen=True)
class EchoedPrompt:
    """A prompt as echo shows it: its text and, when scored, its tokens' logprobs."""

    text: str
    tokens: list[str]
    logprobs: list[float | None]
    tops: list[dict[str, float] | None]
    prompt_logprobs: list[dict[str, PromptLogprob] | None] | None


def _echoed(model: ServedModel, ids: list[int], text: str, scored: RequestOutput | None,
            top: int, want_prompt_logprobs: int | None) -> EchoedPrompt:
    tokens = [token_text(model, t) for t in ids]
    if scored is None or scored.score_logprobs is None:
        return EchoedPrompt(text, tokens, [], [], None)
    values: list[float | None] = [None, *scored.score_logprobs]
    ranked = scored.score_top or [[(t, lp, 0)] for t, lp in
                                  zip(ids[1:], scored.score_logprobs, strict=True)]
    tops: list[dict[str, float] | None] = [None]
    for entries in ranked:  # the prompt's own token first, then the `top` most likely
        tops.append({token_text(model, t): lp for t, lp, _ in entries[:top + 1]})
    prompt_lps = (None if want_prompt_logprobs is None
                  else prompt_logprobs_out(model, scored, want_prompt_logprobs))
    return EchoedPrompt(text, tokens, values, tops, prompt_lps)


@router.post("/v1/completions", response_model=CompletionResponse,
             responses=documented(examples.COMPLETION, *INFERENCE,
                                  stream=examples.COMPLETION_STREAM),
             summary="OpenAI-compatible text completion (stream=true for SSE chunks)")
async def completions(body: CompletionRequest, request: Request, state: StateDep) -> Any:
    refuse_unsupported(body)
    model = pick_model(state, body.model, lm=True, purpose="completions")
    if body.best_of is not None and body.best_of != body.n:
        raise BadRequest("best_of must equal n (ranking completions is not supported)",
                         param="best_of")
    if body.max_tokens == 0 and not body.echo:
        raise BadRequest("max_tokens 0 needs echo: true (score the prompt only)",
                         param="max_tokens")
    settings = state.settings
    prompts, texts = await prompt_inputs(model, settings, body.prompt, "prompt")
    constraint = await request_constraint(model, settings, body, body.response_format)
    top = body.logprobs or 0
    generate = body.max_tokens != 0
    params = sampling_params(body, settings, logprobs=body.logprobs is not None,
                             top_logprobs=top, max_tokens=body.max_tokens or None,
                             model=model, prompts=prompts if generate else ())
    # Prompt logprobs (echo with logprobs, or vLLM's prompt_logprobs) come from scoring the
    # prompts first, through the batched, prefix-cached SCORE path; the completions then
    # reuse the prompts' cached blocks.
    score_top = max(top if body.echo and body.logprobs is not None else 0,
                    body.prompt_logprobs or 0)
    scored: list[RequestOutput | None] = [None] * len(prompts)
    if (body.echo and body.logprobs is not None) or body.prompt_logprobs is not None:
        scored = list(await score_prompts(request, model, settings, prompts, score_top,
                                          body.cache_salt))
    echoes = [_echoed(model, ids, text, out, top, body.prompt_logprobs)
              for ids, text, out in zip(prompts, texts, scored, strict=True)]
    request_id = request.state.request_id
    created, cid = int(time.time()), f"cmpl-{request_id}"
    head = {"id": cid, "object": "text_completion", "created": created, "model": model.name,
            "system_fingerprint": model.fingerprint}
    echo_logprobs = body.echo and body.logprobs is not None

    def choice(prompt_index: int, index: int, text: str, finish: str | None,
               entries: list[TokenLogprob] | None, first: bool) -> CompletionChoice:
        echo = echoes[prompt_index]
        return CompletionChoice(
            index=prompt_index * params.n + index,
            text=(echo.text + text) if body.echo and first else text,
            finish_reason=finish,
            logprobs=_completion_logprobs(
                model, entries if body.logprobs is not None else None,
                echo if echo_logprobs and first else None),
            prompt_logprobs=echo.prompt_logprobs if first else None)

    if not generate:  # echo with max_tokens 0: the prompts, scored, nothing generated
        streams_used = request.state.streams
        choices = [choice(i, j, "", "length", None, True)
                   for i in range(len(prompts)) for j in range(params.n)]
        if body.stream:
            async def events() -> AsyncIterator[str]:
                for c in choices:
                    yield sse({**head, "choices": [c.model_dump()]})
                yield sse("[DONE]")
            return StreamingResponse(events(), media_type="text/event-stream",
                                     headers=SSE_HEADERS)
        usage = stream_usage(streams_used)
        return CompletionResponse(id=cid, created=created, model=model.name, choices=choices,
                                  usage=Usage.of(usage.prompt_tokens, 0, usage.cached_tokens),
                                  system_fingerprint=model.fingerprint)
    streams = submit_all(request, model, prompts, params, RequestKind.GENERATE,
                         salt=body.cache_salt, constraint=constraint)

    if body.stream:
        started: set[int] = set()

        def on_output(i: int, out: RequestOutput) -> list[dict[str, Any]]:
            events = []
            for d in out.completions:
                key = i * params.n + d.index
                first = key not in started
                started.add(key)
                events.append({**head, "choices": [
                    choice(i, d.index, d.text, d.finish_reason, d.logprobs, first).model_dump(
                        exclude_none=False)]})
            return events

        def final() -> list[dict[str, Any]]:
            if body.stream_options and body.stream_options.include_usage:
                return [{**head, "choices": [], "usage": stream_usage(streams).model_dump()}]
            return []

        return StreamingResponse(sse_stream(streams, on_output, final),
                                 media_type="text/event-stream", headers=SSE_HEADERS)
    outputs = await collect(request, streams)
    choices = [choice(i, c.index, c.text, c.finish_reason, c.logprobs, True)
               for i, out in enumerate(outputs) for c in out.completions]
    return CompletionResponse(id=cid, created=created, model=model.name, choices=choices,
                              usage=stream_usage(streams),
                              system_fingerprint=model.fingerprint)


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
             responses=documented(examples.CHAT, *INFERENCE, stream=examples.CHAT_STREAM),
             summary="OpenAI-compatible chat completion, using the model's chat template")
async def chat_completions(body: ChatCompletionRequest, request: Request, state: StateDep
                           ) -> Any:
    refuse_unsupported(body)
    model = pick_model(state, body.model, lm=True, purpose="chat completions")
    settings = state.settings
    messages = [{"role": m.role, "content": _message_text(m.content),
                 **({"name": m.name} if m.name else {})} for m in body.messages]
    text = model.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    prompt = await encode(model, settings, text, "messages", add_special_tokens=False)
    constraint = await request_constraint(model, settings, body, body.response_format)
    # OpenAI semantics: without max_tokens, a reply may run to the end of the context.
    until_full = max(1, min(model.max_model_len - len(prompt), settings.max_tokens_limit))
    params = sampling_params(body, settings, max_tokens=body.max_completion_tokens,
                             logprobs=body.logprobs, top_logprobs=body.top_logprobs or 0,
                             default_max_tokens=until_full, model=model, prompts=[prompt],
                             max_tokens_param="max_completion_tokens"
                             if body.max_completion_tokens else "max_tokens",
                             prompt_param="messages")
    request_id = request.state.request_id
    streams = submit_all(request, model, [prompt], params, RequestKind.GENERATE,
                         salt=body.cache_salt, constraint=constraint)
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
