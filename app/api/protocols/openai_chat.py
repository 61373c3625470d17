"""OpenAI chat completions <-> the internal chat path (app/chat): messages and tool fields
in, parsed messages and stream deltas out."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from app.api.errors import BadRequest
from app.api.schemas import ChatCompletionRequest, ChatMessage
from app.api.state import ServedModel
from app.api.structured_fields import compile_constraint
from app.api.tool_fields import NamedToolChoice
from app.chat.output import ChatOutputParser
from app.chat.plan import ChatOptions, ChatPlan
from app.chat.types import ChatDelta, ParsedMessage, ToolCallDelta
from app.config import Settings
from app.structured import Constraint, ConstraintSpec

CALL_TYPE = "function"


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


def internal_message(message: ChatMessage) -> dict[str, Any]:
    """One OpenAI message as the chat path takes it (OpenAI's own shape, text content)."""
    out: dict[str, Any] = {"role": message.role, "content": message_text(message.content)}
    if message.name:
        out["name"] = message.name
    if message.tool_calls:
        out["tool_calls"] = [call.model_dump() for call in message.tool_calls]
        if message.content is None:
            out["content"] = None
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    if message.reasoning_content is not None:
        out["reasoning_content"] = message.reasoning_content
    return out


def chat_options(body: ChatCompletionRequest, schema: Mapping[str, Any] | None = None
                 ) -> ChatOptions:
    choice = body.tool_choice
    return ChatOptions(
        tools=[tool.model_dump(exclude_none=True) for tool in body.tools or ()],
        tool_choice=choice.model_dump() if isinstance(choice, NamedToolChoice) else choice,
        parallel_tool_calls=body.parallel_tool_calls is not False,
        template_kwargs=body.chat_template_kwargs or {},
        reasoning_budget=body.thinking_budget, answer_schema=schema)


def answer_schema(spec: ConstraintSpec | None) -> dict[str, Any] | None:
    """The JSON Schema of a JSON structured-output request (it may go behind reasoning)."""
    if spec is None or spec.kind not in ("json_schema", "json_object"):
        return None
    return json.loads(spec.value) if spec.kind == "json_schema" else {"type": "object"}


async def chat_constraint(model: ServedModel, settings: Settings, plan: ChatPlan,
                          structured: ConstraintSpec | None) -> Constraint | None:
    """The one constraint of a chat request: the plan's grammar (tool calls, a thinking
    budget, a response format behind reasoning) or the request's structured output."""
    if plan.answer_in_grammar:
        structured = None
    if plan.grammar is not None and structured is not None:
        raise BadRequest(f"{structured.param} cannot be combined with constrained tool calls "
                         "or a thinking budget", param=structured.param)
    if plan.grammar is not None:
        return await compile_constraint(model, settings,
                                        ConstraintSpec("grammar", plan.grammar, "tools"))
    if structured is not None:
        return await compile_constraint(model, settings, structured)
    return None


class AnswerParsers:
    """One answer parser per completion index (app/chat), and OpenAI's shapes out."""

    def __init__(self, plan: ChatPlan, on_malformed: Callable[[int], None]) -> None:
        self.plan = plan
        self._parsers: dict[int, ChatOutputParser | None] = {}
        self._made_calls: set[int] = set()
        self._on_malformed = on_malformed

    def _parser(self, index: int) -> ChatOutputParser | None:
        if index not in self._parsers:
            self._parsers[index] = self.plan.new_parser()
        return self._parsers[index]

    def _finished(self, parser: ChatOutputParser) -> None:
        if parser.malformed_calls:
            self._on_malformed(parser.malformed_calls)

    def stream_delta(self, index: int, text: str, reason: str | None
                     ) -> tuple[dict[str, Any], str | None]:
        """(the chunk's delta, its finish_reason) for a completion's new text."""
        parser = self._parser(index)
        if parser is None:
            return {"content": text}, reason
        delta = parser.feed(text)
        if reason is not None:
            delta = delta + parser.finish()
            self._finished(parser)
        if delta.tool_calls:
            self._made_calls.add(index)
        return delta_payload(delta), finish_reason(reason, index in self._made_calls)

    def whole(self, text: str, reason: str | None) -> tuple[dict[str, Any], str | None]:
        """(the response message, its finish_reason) for a whole completion."""
        parser = self.plan.new_parser()
        if parser is None:
            return {"content": text}, reason
        message = parser.parse(text)
        self._finished(parser)
        return (message_payload(message, self.plan.reasoning_parser is not None),
                finish_reason(reason, bool(message.tool_calls)))


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
