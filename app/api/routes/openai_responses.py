"""OpenAI's Responses API: POST /v1/responses (whole or streamed), GET and DELETE
/v1/responses/{id}, on the one chat pipeline (app/api/chat_pipeline.py): the request is
translated by app/api/protocols/openai_responses.py, its stream's events are built by
app/api/protocols/responses_events.py, and answers are kept (unless `store: false`) in the
server's bounded store (app/api/response_store.py) for GET and `previous_response_id`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from app.api import examples
from app.api.chat_pipeline import ChatRun, start_chat
from app.api.deps import StateDep, pick_model
from app.api.errors import BadRequest, NotFound, status_of
from app.api.protocols.openai_responses import (
    chat_input,
    final_status,
    has_reasoning,
    input_items,
    output_items,
    reasoning_budget,
    response_object,
    response_usage,
)
from app.api.protocols.responses_events import ResponseEvents
from app.api.protocols.responses_fields import (
    DeletedResponse,
    ResponseObject,
    ResponsesRequest,
    refuse_unsupported,
)
from app.api.response_store import ResponseStore, StoredResponse
from app.api.responses import INFERENCE, documented, errors
from app.api.serving import SSE_HEADERS, collect, merged_stream, sse
from app.api.state import ServerState
from app.chat.errors import AnswerFormatConflict, BudgetUnsupported

router = APIRouter(tags=["openai"])
log = logging.getLogger("app.api")


def _measure(request: Request, store: ResponseStore) -> None:
    """The store's gauges, after anything that may have changed it."""
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.responses_stored.set(len(store))
        metrics.responses_stored_bytes.set(store.bytes)


def _stored(request: Request, state: ServerState, response_id: str, param: str | None
            ) -> StoredResponse:
    entry = state.responses.get(response_id)
    _measure(request, state.responses)  # a lookup drops an expired entry
    if entry is None:
        raise NotFound(f"response {response_id!r} not found (never stored, deleted, or "
                       "expired from this server's store)", param=param)
    return entry


def _reasoning_tokens(run: ChatRun, reasoning: str) -> int:
    """The reasoning's length in tokens (re-encoded: the engine counts tokens per answer,
    not per part)."""
    return len(run.model.tokenizer.encode(reasoning, add_special_tokens=False)) if (
        reasoning) else 0


@router.post("/v1/responses", response_model=ResponseObject,
             responses=documented(examples.RESPONSE, *INFERENCE,
                                  stream=examples.RESPONSE_STREAM),
             summary="OpenAI Responses API (stream=true for its named SSE events)")
async def create_response(body: ResponsesRequest, request: Request, state: StateDep) -> Any:
    refuse_unsupported(body)
    model = pick_model(state, body.model, lm=True, purpose="responses")
    settings = state.settings
    history: list[dict[str, Any]] = []
    if body.previous_response_id is not None:
        history = _stored(request, state, body.previous_response_id,
                          "previous_response_id").conversation
    items = input_items(body)
    if not history and not items:
        raise BadRequest("input is empty: send text or at least one item", param="input")
    chat = chat_input(body, [*history, *items],
                      reasoning_budget(body, has_reasoning(model, settings)))
    try:
        run = await start_chat(request, model, settings, chat)
    except AnswerFormatConflict:
        raise BadRequest("a required or named tool_choice and text.format both decide the "
                         "answer's form: send one of them", param="text.format") from None
    except BudgetUnsupported as exc:  # the effort's budget, on a model that cannot take it
        raise BadRequest(f"reasoning.effort: {exc}", param="reasoning.effort") from None
    # random, never the client's X-Request-Id: ids a client chose could collide, or hold a
    # "/" that no GET could name
    response_id, created = f"resp_{uuid.uuid4().hex}", int(time.time())

    def response_of(status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None,
                    error: dict[str, Any] | None) -> dict[str, Any]:
        return response_object(body, response_id, created, model.name, status, output,
                               usage, error)

    def keep(response: dict[str, Any]) -> None:
        if body.store is not False:
            state.responses.put(response, [*history, *items, *response["output"]])
            _measure(request, state.responses)

    if body.stream:
        return StreamingResponse(_events(run, ResponseEvents(response_of), keep),
                                 media_type="text/event-stream", headers=SSE_HEADERS)
    outputs = await collect(request, run.streams)
    done = outputs[0].completions[0]
    message = run.answers.whole(done.text)
    status = final_status(done.finish_reason)
    response = response_of(status, output_items(message, status),
                           response_usage(run.usage(), _reasoning_tokens(run, message.reasoning)),
                           None)
    keep(response)
    return response


async def _events(run: ChatRun, events: ResponseEvents,
                  keep: Callable[[dict[str, Any]], None]) -> AsyncIterator[str]:
    """The SSE body: every event named (`event:`) and typed (`type`), in sequence. An
    error after the stream began becomes an `error` event and response.failed. However
    the body ends (a client gone after the first events included), nothing keeps running."""
    try:
        async with aclosing(_event_lines(run, events, keep)) as lines:
            async for event in lines:
                yield event
    finally:
        for stream in run.streams:
            stream.abort()  # a no-op for finished requests


async def _event_lines(run: ChatRun, events: ResponseEvents,
                       keep: Callable[[dict[str, Any]], None]) -> AsyncGenerator[str, None]:
    for name, data in events.start():
        yield sse(data, event=name)
    try:
        finish: str | None = None
        # closed (its requests aborted) as soon as this body is, e.g. on a disconnect
        async with aclosing(merged_stream(run.streams)) as outputs:
            async for _, out in outputs:
                for piece in out.completions:
                    finish = piece.finish_reason or finish
                    for name, data in events.delta(run.answers.stream(
                            piece.index, piece.text, piece.finish_reason is not None)):
                        yield sse(data, event=name)
        usage = response_usage(run.usage(), _reasoning_tokens(run, events.reasoning))
        closing, response = events.finish(final_status(finish), usage)
        keep(response)  # before the last events: a client may leave once it has them
        for name, data in closing:
            yield sse(data, event=name)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        status, type_, param, _ = status_of(exc)
        log.warning("responses stream failed: %s", exc)
        message = str(exc) if status < 500 or hasattr(exc, "message") else (
            "internal server error")
        for name, data in events.fail(status, type_, message, param):
            yield sse(data, event=name)


@router.get("/v1/responses/{response_id}", response_model=ResponseObject,
            responses=documented(examples.RESPONSE, 404), summary="A stored response")
async def get_response(response_id: str, request: Request, state: StateDep) -> Any:
    return _stored(request, state, response_id, None).response


@router.delete("/v1/responses/{response_id}", response_model=DeletedResponse,
               responses={200: {"content": {"application/json": {
                   "example": examples.RESPONSE_DELETED}}}, **errors(404)},
               summary="Delete a stored response")
async def delete_response(response_id: str, request: Request, state: StateDep
                          ) -> DeletedResponse:
    if not state.responses.delete(response_id):
        _stored(request, state, response_id, None)  # the 404, worded once
    _measure(request, state.responses)
    return DeletedResponse(id=response_id)
