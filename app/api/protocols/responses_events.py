"""The Responses API's stream: the chat path's deltas (reasoning, text, call pieces) as
named, typed, numbered events. Each kind of output opens its own item when its first
piece arrives and the item before it is closed then, so the items and their order are
those of the whole answer (app/api/protocols/openai_responses.py output_items):

    response.created, response.in_progress,
    [response.output_item.added (reasoning), response.content_part.added,
     response.reasoning_text.delta..., response.reasoning_text.done,
     response.content_part.done, response.output_item.done]
    [the same for the message, with response.output_text.delta / .done]
    [per call: response.output_item.added (function_call),
     response.function_call_arguments.delta..., response.function_call_arguments.done,
     response.output_item.done]
    response.completed | response.incomplete   (or: error, response.failed)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.api.protocols.openai_responses import (
    call_item,
    message_item,
    new_id,
    reasoning_item,
    text_part,
)
from app.chat.types import ChatDelta

Event = tuple[str, dict[str, Any]]  # (event name, its data: also carrying `type`)
# (status, output items, usage, error) -> the Response object at that point
ResponseOf = Callable[[str, list[dict[str, Any]], dict[str, Any] | None,
                       dict[str, Any] | None], dict[str, Any]]


@dataclass
class _Item:
    kind: str  # reasoning | message | function_call
    id: str
    index: int  # output_index
    text: str = ""  # reasoning or message text, or a call's arguments
    call_id: str = ""
    name: str = ""


class ResponseEvents:
    def __init__(self, response_of: ResponseOf) -> None:
        self._response_of = response_of
        self._sequence = 0
        self._items: list[_Item] = []
        self._done: list[dict[str, Any]] = []  # finished items, by output_index
        self._open: _Item | None = None
        self._calls: dict[int, _Item] = {}  # the chat path's call index -> its item

    def _event(self, name: str, **data: Any) -> Event:
        event = (name, {"type": name, "sequence_number": self._sequence, **data})
        self._sequence += 1
        return event

    def start(self) -> list[Event]:
        response = self._response_of("in_progress", [], None, None)
        return [self._event("response.created", response=response),
                self._event("response.in_progress", response=response)]

    def _where(self, item: _Item) -> dict[str, Any]:
        return {"item_id": item.id, "output_index": item.index}

    def _opened(self, kind: str, events: list[Event], **call: str) -> _Item:
        """The open item of this kind, or a new one (closing the item before it)."""
        if self._open is not None and self._open.kind == kind and kind != "function_call":
            return self._open
        events.extend(self._close("completed"))
        item = _Item(kind, new_id({"reasoning": "rs", "message": "msg"}.get(kind, "fc")),
                     len(self._items), **call)
        self._items.append(item)
        self._open = item
        if kind == "reasoning":
            events.append(self._event("response.output_item.added", output_index=item.index,
                                      item=reasoning_item(item.id, "", "in_progress")))
            events.append(self._event("response.content_part.added", **self._where(item),
                                      content_index=0,
                                      part={"type": "reasoning_text", "text": ""}))
        elif kind == "message":
            events.append(self._event("response.output_item.added", output_index=item.index,
                                      item=message_item(item.id, None, "in_progress")))
            events.append(self._event("response.content_part.added", **self._where(item),
                                      content_index=0, part=text_part("")))
        else:
            events.append(self._event("response.output_item.added", output_index=item.index,
                                      item=call_item(item.id, item.call_id, item.name, "",
                                                     "in_progress")))
        return item

    def _close(self, status: str) -> list[Event]:
        item, self._open = self._open, None
        if item is None:
            return []
        where = self._where(item)
        events = []
        if item.kind == "reasoning":
            part = {"type": "reasoning_text", "text": item.text}
            done = reasoning_item(item.id, item.text, status)
            events += [self._event("response.reasoning_text.done", **where, content_index=0,
                                   text=item.text),
                       self._event("response.content_part.done", **where, content_index=0,
                                   part=part)]
        elif item.kind == "message":
            done = message_item(item.id, item.text, status)
            events += [self._event("response.output_text.done", **where, content_index=0,
                                   text=item.text, logprobs=[]),
                       self._event("response.content_part.done", **where, content_index=0,
                                   part=text_part(item.text))]
        else:
            done = call_item(item.id, item.call_id, item.name, item.text, status)
            events.append(self._event("response.function_call_arguments.done", **where,
                                      arguments=item.text))
        self._done.append(done)
        events.append(self._event("response.output_item.done", output_index=item.index,
                                  item=done))
        return events

    def delta(self, delta: ChatDelta) -> list[Event]:
        """The events for what the chat path just decided."""
        events: list[Event] = []
        if delta.reasoning:
            item = self._opened("reasoning", events)
            item.text += delta.reasoning
            events.append(self._event("response.reasoning_text.delta", **self._where(item),
                                      content_index=0, delta=delta.reasoning))
        if delta.content:
            item = self._opened("message", events)
            item.text += delta.content
            events.append(self._event("response.output_text.delta", **self._where(item),
                                      content_index=0, delta=delta.content, logprobs=[]))
        for piece in delta.tool_calls:
            if piece.index not in self._calls:  # a call's first piece: its id and name
                self._calls[piece.index] = self._opened(
                    "function_call", events, call_id=piece.id or "", name=piece.name or "")
            item = self._calls[piece.index]
            if piece.arguments:
                item.text += piece.arguments
                events.append(self._event("response.function_call_arguments.delta",
                                          **self._where(item), delta=piece.arguments))
        return events

    @property
    def reasoning(self) -> str:
        return "".join(item.text for item in self._items if item.kind == "reasoning")

    def finish(self, status: str, usage: dict[str, Any]) -> tuple[list[Event], dict[str, Any]]:
        """The closing events and the final Response. An answer with neither text nor
        calls still gets its (empty) message, as the whole answer does."""
        events: list[Event] = []
        if not any(item.kind != "reasoning" for item in self._items):
            self._opened("message", events)
        events += self._close(status)
        response = self._response_of(status, list(self._done), usage, None)
        name = "response.incomplete" if status == "incomplete" else "response.completed"
        events.append(self._event(name, response=response))
        return events, response

    def fail(self, status: int, type_: str, message: str, param: str | None) -> list[Event]:
        """An error after the stream began: the `error` event, then response.failed."""
        code = "rate_limit_exceeded" if status == 429 else (
            "invalid_prompt" if status < 500 else "server_error")
        response = self._response_of("failed", list(self._done), None,
                                     {"code": code, "message": message})
        return [self._event("error", code=type_, message=message, param=param),
                self._event("response.failed", response=response)]
