"""OpenAI-compatible endpoints: /v1/completions, /v1/chat/completions, /v1/models.

Extra sampling fields that vLLM also accepts (top_k, min_p, repetition_penalty,
min_tokens, ignore_eos, stop_token_ids, cache_salt) work here too. An unknown field gets
400 naming it; OpenAI fields for features this server lacks (functions, audio, ...) get
400 saying so, and harmless ones (user, metadata, ...) are ignored: app/api/openai_fields.py.
Chat takes tools, tool choices and reasoning through the chat path (app/chat), translated
by app/api/protocols/openai_chat.py.
Completions take token-id prompts, `echo` (with the prompt's logprobs when `logprobs` is
set: what lm-evaluation-harness's loglikelihood tasks send) and vLLM's `prompt_logprobs`.
As in OpenAI's API: chat without max_tokens may generate until the context is full
(bounded by the server's max_tokens_limit); usage carries
prompt_tokens_details.cached_tokens; every response and chunk carries system_fingerprint.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from app.api import examples
from app.api.chat_pipeline import start_chat
from app.api.completion_logprobs import ChoiceLogprobs, EchoedPrompt
from app.api.deps import StateDep, pick_model
from app.api.errors import BadRequest
from app.api.openai_fields import refuse_unsupported
from app.api.prompt_input import PromptRules, parse_prompts
from app.api.protocols.openai_chat import chat_input, stream_delta, whole_message
from app.api.responses import INFERENCE, documented
from app.api.schemas import (
    ChatChoice,
    ChatChoiceLogprobs,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprobEntry,
    ChatResponseMessage,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    OpenAIModel,
    OpenAIModelList,
    Usage,
)
from app.api.serving import (
    SSE_HEADERS,
    collect,
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
from app.api.token_bytes import token_string, token_utf8
from app.engine.output import RequestOutput
from app.engine.request import RequestKind
from app.sampling_params import TokenLogprob

router = APIRouter(tags=["openai"])


@router.get("/v1/models", response_model=OpenAIModelList, summary="List served models",
            responses=documented(examples.MODELS))
async def models(state: StateDep) -> OpenAIModelList:
    """The served models, then their LoRA adapters (`parent`: the model adapted; `root`:
    the adapter's folder), as vLLM lists them."""
    data = [OpenAIModel(id=m.name, created=m.created, root=str(m.path),
                        max_model_len=m.max_model_len) for m in state.models.values()]
    for m in state.models.values():
        data += [OpenAIModel(id=a.name, created=a.created, root=str(a.path), parent=m.name,
                             max_model_len=m.max_model_len)
                 for a in m.engine.adapters.entries() if m.engine.has_adapter(a.name)]
    return OpenAIModelList(data=data)


def _echoed(model: ServedModel, ids: list[int], text: str, scored: RequestOutput | None,
            top: int) -> EchoedPrompt:
    if scored is None or scored.score_logprobs is None:
        return EchoedPrompt(ids, text, [], [])
    values: list[float | None] = [None, *scored.score_logprobs]
    ranked = scored.score_top or [[(t, lp, 0)] for t, lp in
                                  zip(ids[1:], scored.score_logprobs, strict=True)]
    tops: list[dict[str, float] | None] = [None]
    for entries in ranked:  # the prompt's own token first, then the `top` most likely
        tops.append({token_string(model.tokenizer, t): lp for t, lp, _ in entries[:top + 1]})
    return EchoedPrompt(ids, text, values, tops)


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
    parsed = await parse_prompts(model, settings, body.prompt, PromptRules("prompt"))
    prompts, texts = parsed.ids, parsed.texts
    constraint = await request_constraint(model, settings, body, body.response_format)
    top = body.logprobs or 0
    generate = body.max_tokens != 0
    params = sampling_params(body, settings, logprobs=body.logprobs is not None,
                             top_logprobs=top, top_logprobs_param="logprobs",
                             max_tokens=body.max_tokens or None,
                             model=model, prompts=prompts if generate else ())
    # Prompt logprobs (echo with logprobs, or vLLM's prompt_logprobs) come from scoring the
    # prompts first, through the batched, prefix-cached SCORE path; the completions then
    # reuse the prompts' cached blocks.
    echo_logprobs = body.echo and body.logprobs is not None
    score_top = max(top if echo_logprobs else 0, body.prompt_logprobs or 0)
    scored: list[RequestOutput | None] = [None] * len(prompts)
    if echo_logprobs or body.prompt_logprobs is not None:
        scored = list(await score_prompts(request, model, settings, prompts, score_top,
                                          body.cache_salt))
    echoes = [_echoed(model, ids, text, out, top)
              for ids, text, out in zip(prompts, texts, scored, strict=True)]
    prompt_lps = [None if out is None or body.prompt_logprobs is None
                  else prompt_logprobs_out(model, out, body.prompt_logprobs) for out in scored]
    request_id = request.state.request_id
    created, cid = int(time.time()), f"cmpl-{request_id}"
    head = {"id": cid, "object": "text_completion", "created": created, "model": model.name,
            "system_fingerprint": model.fingerprint}
    # Per choice (prompt index * n + completion index): its logprobs, across chunks.
    logprobs: dict[int, ChoiceLogprobs] = {}

    def choice(prompt_index: int, index: int, text: str, finish: str | None,
               entries: list[TokenLogprob] | None) -> CompletionChoice:
        """A whole choice, or one chunk of it; the first carries the echoed prompt."""
        key = prompt_index * params.n + index
        first = key not in logprobs
        if first:
            logprobs[key] = ChoiceLogprobs(model.tokenizer, prompts[prompt_index],
                                           params.skip_special_tokens)
        echo = echoes[prompt_index] if body.echo and first else None
        shown = (echo.text + text) if echo else text
        return CompletionChoice(
            index=key, text=shown, finish_reason=finish,
            logprobs=None if body.logprobs is None else logprobs[key].chunk(
                shown, echo if echo_logprobs else None, entries or []),
            prompt_logprobs=prompt_lps[prompt_index] if first else None)

    def usage_event(usage: Usage) -> list[dict[str, Any]]:
        if body.stream_options and body.stream_options.include_usage:
            return [{**head, "choices": [], "usage": usage.model_dump()}]
        return []

    if not generate:  # echo with max_tokens 0: the prompts (scored if asked), nothing more
        choices = [choice(i, j, "", "length", None)
                   for i in range(len(prompts)) for j in range(params.n)]
        usage = Usage.of(sum(len(p) for p in prompts), 0,
                         sum(out.usage.cached_tokens for out in scored if out is not None))
        if body.stream:
            async def events() -> AsyncIterator[str]:
                for c in choices:
                    yield sse({**head, "choices": [c.model_dump()]})
                for event in usage_event(usage):
                    yield sse(event)
                yield sse("[DONE]")
            return StreamingResponse(events(), media_type="text/event-stream",
                                     headers=SSE_HEADERS)
        return CompletionResponse(id=cid, created=created, model=model.name, choices=choices,
                                  usage=usage, system_fingerprint=model.fingerprint)
    streams = submit_all(request, model, prompts, params, RequestKind.GENERATE,
                         salt=body.cache_salt, constraint=constraint)

    if body.stream:
        def on_output(i: int, out: RequestOutput) -> list[dict[str, Any]]:
            return [{**head, "choices": [
                choice(i, d.index, d.text, d.finish_reason, d.logprobs).model_dump(
                    exclude_none=False)]} for d in out.completions]

        return StreamingResponse(
            sse_stream(streams, on_output, lambda: usage_event(stream_usage(streams))),
            media_type="text/event-stream", headers=SSE_HEADERS)
    outputs = await collect(request, streams)
    choices = [choice(i, c.index, c.text, c.finish_reason, c.logprobs)
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
        # `bytes` are the token's own, also for a token that holds part of a character
        # (its text alone is U+FFFD): what lets a client put such characters together.
        tok = model.tokenizer
        content.append(ChatLogprobEntry(
            token=token_text(model, e.token_id), logprob=e.logprob,
            bytes=token_utf8(tok, e.token_id),
            top_logprobs=[{"token": token_text(model, t), "logprob": lp,
                           "bytes": token_utf8(tok, t)} for t, lp in e.top]))
    return ChatChoiceLogprobs(content=content)


@router.post("/v1/chat/completions", response_model=ChatCompletionResponse,
             responses=documented(examples.CHAT, *INFERENCE, stream=examples.CHAT_STREAM,
                                  more=examples.CHAT_MORE,
                                  more_stream=examples.CHAT_STREAM_MORE),
             summary="OpenAI-compatible chat completion, using the model's chat template")
async def chat_completions(body: ChatCompletionRequest, request: Request, state: StateDep
                           ) -> Any:
    refuse_unsupported(body)
    model = pick_model(state, body.model, lm=True, purpose="chat completions")
    run = await start_chat(request, model, state.settings, chat_input(body))
    answers, streams = run.answers, run.streams
    created, cid = int(time.time()), f"chatcmpl-{request.state.request_id}"

    if body.stream:
        def chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
            return {"id": cid, "object": "chat.completion.chunk", "created": created,
                    "model": model.name, "system_fingerprint": model.fingerprint,
                    "choices": choices, **extra}

        started: set[int] = set()

        def on_output(_: int, out: RequestOutput) -> list[dict[str, Any]]:
            events = []
            for d in out.completions:
                delta, finish = stream_delta(answers, d.index, d.text, d.finish_reason,
                                             body.include_reasoning)
                logprobs = _chat_logprobs(model, d.logprobs)
                if d.index not in started:
                    started.add(d.index)
                    delta = {"role": "assistant", **delta}
                elif not delta and finish is None and logprobs is None:
                    continue  # the parsers hold this text back for now
                events.append(chunk([{"index": d.index, "delta": delta,
                                      "finish_reason": finish,
                                      "logprobs": logprobs.model_dump() if logprobs else None}]))
            return events

        def final() -> list[dict[str, Any]]:
            if body.stream_options and body.stream_options.include_usage:
                return [chunk([], usage=stream_usage(streams).model_dump())]
            return []

        return StreamingResponse(sse_stream(streams, on_output, final),
                                 media_type="text/event-stream", headers=SSE_HEADERS)
    outputs = await collect(request, streams)
    choices = []
    for c in outputs[0].completions:
        message, finish = whole_message(answers, c.text, c.finish_reason,
                                        body.include_reasoning)
        choices.append(ChatChoice(index=c.index, message=ChatResponseMessage(**message),
                                  finish_reason=finish,
                                  logprobs=_chat_logprobs(model, c.logprobs)))
    return ChatCompletionResponse(id=cid, created=created, model=model.name, choices=choices,
                                  usage=stream_usage(streams),
                                  system_fingerprint=model.fingerprint)
