"""Anthropic's Messages API: POST /v1/messages (whole or streamed) and POST
/v1/messages/count_tokens, on the one chat pipeline (app/api/chat_pipeline.py), translated
by app/api/protocols/anthropic_messages.py. The `x-api-key` header is accepted beside
`Authorization: Bearer` (app/api/deps.py), `anthropic-version` and `anthropic-beta` are
accepted and ignored, and errors take Anthropic's shape (app/api/errors.py)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from app.api import examples
from app.api.chat_pipeline import ChatRun, encode_chat, start_chat
from app.api.deps import StateDep, pick_model
from app.api.errors import anthropic_error, status_of
from app.api.protocols.anthropic_fields import (
    AnthropicErrorResponse,
    CountTokensRequest,
    MessageResponse,
    MessagesRequest,
    TokenCount,
)
from app.api.protocols.anthropic_messages import (
    MessageEvents,
    chat_input,
    content_blocks,
    count_input,
    error_event,
    stop_reason,
    usage_out,
    whole_message,
)
from app.api.responses import INFERENCE, TOKENIZER, documented
from app.api.responses import UNAUTHORIZED as BEARER_UNAUTHORIZED
from app.api.serving import SSE_HEADERS, collect, merged_stream, sse

router = APIRouter(tags=["anthropic"])
log = logging.getLogger("app.api")


def _anthropic_errors(responses: dict[int | str, dict[str, Any]]
                      ) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses with their error examples in Anthropic's shape."""
    out = dict(responses)
    for code, entry in responses.items():
        if code == 200:
            continue
        message = entry["content"]["application/json"]["example"]["error"]["message"]
        out[code] = {**entry, "model": AnthropicErrorResponse, "content": {
            "application/json": {"example": anthropic_error(int(code), message)}}}
    return out


def _documented(example: dict[str, Any], *codes: int, stream: str | None = None
                ) -> dict[int | str, dict[str, Any]]:
    """The route's OpenAPI responses; a body that fails the schema is a 400 here (no 422,
    as Anthropic answers)."""
    out = _anthropic_errors(documented(example, *(c for c in codes if c != 422),
                                       stream=stream))
    if stream is not None:
        out[200] = {**out[200], "description": (
            "JSON; with `\"stream\": true`, Anthropic's Server-Sent Events (`event:` and "
            "`data:` lines: message_start, ping, content_block_start/delta/stop, "
            "message_delta, message_stop)")}
    return out


# app.api.router documents it on the routes of a server with API keys
UNAUTHORIZED = _anthropic_errors(BEARER_UNAUTHORIZED)


async def _events(run: ChatRun, head: dict[str, Any]) -> AsyncIterator[str]:
    """The SSE body: message_start, ping, the blocks' events, message_delta, message_stop;
    an error after the start becomes `event: error` with Anthropic's error body."""
    events = MessageEvents(head, len(run.prompt))
    try:
        async with aclosing(_event_lines(run, events)) as lines:
            async for event in lines:
                yield event
    finally:  # however the body ends (a client gone early included): nothing keeps running
        for stream in run.streams:
            stream.abort()  # a no-op for finished requests


async def _event_lines(run: ChatRun, events: MessageEvents) -> AsyncGenerator[str, None]:
    try:
        for name, data in events.start():
            yield sse(data, event=name)
        finish: str | None = None
        stop_string: str | None = None
        async for _, out in merged_stream(run.streams):
            for d in out.completions:
                for name, data in events.delta(run.answers.stream(d.index, d.text,
                                                                  d.finish_reason is not None)):
                    yield sse(data, event=name)
                finish = d.finish_reason or finish
                stop_string = d.stop_string or stop_string
        reason, sequence = stop_reason(finish, stop_string, run.answers.made_calls(0))
        for name, data in events.finish(reason, sequence, run.usage()):
            yield sse(data, event=name)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        status, _, _, _ = status_of(exc)
        log.warning("stream failed: %s", exc)
        name, data = error_event(status, str(exc) if status < 500 or hasattr(exc, "message")
                                 else "internal server error")
        yield sse(data, event=name)


@router.post("/v1/messages", response_model=MessageResponse,
             responses=_documented(examples.ANTHROPIC_MESSAGE, *INFERENCE,
                                  stream=examples.ANTHROPIC_MESSAGE_STREAM),
             summary="Anthropic Messages API (stream=true for Anthropic's SSE events)")
async def messages(body: MessagesRequest, request: Request, state: StateDep) -> Any:
    model = pick_model(state, body.model, lm=True, purpose="messages")
    run = await start_chat(request, model, state.settings, chat_input(body))
    head = {"id": f"msg_{uuid.uuid4().hex}", "type": "message", "role": "assistant",
            "model": model.name}
    if body.stream:
        return StreamingResponse(_events(run, head), media_type="text/event-stream",
                                 headers=SSE_HEADERS)
    outputs = await collect(request, run.streams)
    completion = outputs[0].completions[0]
    message = whole_message(run.answers, completion.text)
    reason, sequence = stop_reason(completion.finish_reason, completion.stop_string,
                                   bool(message.tool_calls))
    return {**head, "content": content_blocks(message), "stop_reason": reason,
            "stop_sequence": sequence, "usage": usage_out(run.usage())}


@router.post("/v1/messages/count_tokens", response_model=TokenCount,
             responses=_documented(examples.ANTHROPIC_COUNT, *TOKENIZER),
             summary="Anthropic: the prompt tokens a Messages request would use")
async def count_tokens(body: CountTokensRequest, state: StateDep) -> TokenCount:
    model = pick_model(state, body.model, lm=True, purpose="token counts")
    _, prompt = await encode_chat(model, state.settings, count_input(body))
    return TokenCount(input_tokens=len(prompt))
