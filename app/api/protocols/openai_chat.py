"""OpenAI chat completions <-> the internal chat path (app/chat): messages and tool fields
in, parsed messages and stream deltas out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from app.api.errors import BadRequest
from app.chat.plan import ChatOptions
from app.chat.types import ChatDelta, ParsedMessage, ToolCallDelta

CALL_TYPE = "function"


class ChatMessageLike(Protocol):
    role: str
    content: str | list[dict[str, Any]] | None
    name: str | None


def message_text(content: str | list[dict[str, Any]] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    parts = []
    for part in content:
        if part.get("type") != "text":
            raise BadRequest(f"message content of type {part.get('type')!r} is not supported "
                             "(text only)", param="messages")
        parts.append(str(part.get("text", "")))
    return "".join(parts)


def internal_message(message: ChatMessageLike) -> dict[str, Any]:
    """One OpenAI message as the chat path takes it (OpenAI's own shape, text content)."""
    out: dict[str, Any] = {"role": message.role, "content": message_text(message.content)}
    if message.name:
        out["name"] = message.name
    calls = getattr(message, "tool_calls", None)
    if calls:
        out["tool_calls"] = [call.model_dump() for call in calls]
        if message.content is None:
            out["content"] = None
    for key in ("tool_call_id", "reasoning_content"):
        if getattr(message, key, None) is not None:
            out[key] = getattr(message, key)
    return out


def chat_options(tools: Sequence[Any] | None, tool_choice: Any, parallel: bool | None,
                 template_kwargs: dict[str, Any] | None, thinking_budget: int | None
                 ) -> ChatOptions:
    return ChatOptions(
        tools=[tool.model_dump(exclude_none=True) for tool in tools or ()],
        tool_choice=tool_choice.model_dump() if hasattr(tool_choice, "model_dump")
        else tool_choice,
        parallel_tool_calls=parallel is not False,
        template_kwargs=template_kwargs or {},
        reasoning_budget=thinking_budget)


def _call_piece(piece: ToolCallDelta) -> dict[str, Any]:
    if piece.id is not None:  # a call's first piece: its id and name, no arguments yet
        return {"index": piece.index, "id": piece.id, "type": CALL_TYPE,
                "function": {"name": piece.name, "arguments": piece.arguments}}
    return {"index": piece.index, "function": {"arguments": piece.arguments}}


def delta_payload(delta: ChatDelta) -> dict[str, Any]:
    """A stream chunk's `delta` for what the parser just decided (vLLM's field names)."""
    out: dict[str, Any] = {}
    if delta.reasoning:
        out["reasoning_content"] = delta.reasoning
    if delta.content:
        out["content"] = delta.content
    if delta.tool_calls:
        out["tool_calls"] = [_call_piece(piece) for piece in delta.tool_calls]
    return out


def message_payload(message: ParsedMessage, reasoning: bool) -> dict[str, Any]:
    """The response `message`: content null beside calls when there is no text (as
    OpenAI answers), reasoning_content when a reasoning parser is on."""
    out: dict[str, Any] = {"role": "assistant",
                           "content": message.content or (None if message.tool_calls else "")}
    if message.tool_calls:
        out["tool_calls"] = [{"id": call.id, "type": CALL_TYPE,
                              "function": {"name": call.name, "arguments": call.arguments}}
                             for call in message.tool_calls]
    if reasoning:
        out["reasoning_content"] = message.reasoning or None
    return out


def finish_reason(reason: str | None, made_calls: bool) -> str | None:
    """OpenAI's "tool_calls" when an answer that ended by itself made calls."""
    return "tool_calls" if reason == "stop" and made_calls else reason
