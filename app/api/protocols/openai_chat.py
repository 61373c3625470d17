"""OpenAI chat completions <-> the chat pipeline (app/api/chat_pipeline.py): messages and
tool fields in, OpenAI's message and stream-delta shapes out."""

from __future__ import annotations

from typing import Any

from app.api.chat_pipeline import ChatAnswers, ChatInput
from app.api.errors import BadRequest
from app.api.schemas import ChatCompletionRequest, ChatMessage
from app.api.structured_fields import constraint_spec
from app.api.tool_fields import NamedToolChoice
from app.chat.plan import ChatOptions
from app.chat.types import ChatDelta, ParsedMessage, ToolCallDelta

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


def chat_options(body: ChatCompletionRequest) -> ChatOptions:
    choice = body.tool_choice
    return ChatOptions(
        tools=[tool.model_dump(exclude_none=True) for tool in body.tools or ()],
        tool_choice=choice.model_dump() if isinstance(choice, NamedToolChoice) else choice,
        parallel_tool_calls=body.parallel_tool_calls is not False,
        template_kwargs=body.chat_template_kwargs or {},
        reasoning_budget=body.thinking_budget,
        add_generation_prompt=body.add_generation_prompt,
        continue_final_message=body.continue_final_message,
        separate_reasoning=body.separate_reasoning)


def chat_input(body: ChatCompletionRequest) -> ChatInput:
    """An OpenAI chat request as the chat pipeline takes it."""
    return ChatInput(
        messages=[internal_message(m) for m in body.messages], options=chat_options(body),
        sampling=body, structured=constraint_spec(body, body.response_format),
        max_tokens=body.max_completion_tokens,
        max_tokens_param="max_completion_tokens" if body.max_completion_tokens
        else "max_tokens", logprobs=body.logprobs, top_logprobs=body.top_logprobs or 0,
        cache_salt=body.cache_salt)


def stream_delta(answers: ChatAnswers, index: int, text: str, reason: str | None,
                 include_reasoning: bool = True) -> tuple[dict[str, Any], str | None]:
    """(the chunk's delta, its finish_reason) for a completion's new text."""
    delta = answers.stream(index, text, reason is not None)
    if not answers.parsing:
        return {"content": text}, reason
    if not include_reasoning:
        delta = ChatDelta(delta.content, "", delta.tool_calls)
    return delta_payload(delta), finish_reason(reason, answers.made_calls(index))


def whole_message(answers: ChatAnswers, text: str, reason: str | None,
                  include_reasoning: bool = True) -> tuple[dict[str, Any], str | None]:
    """(the response message, its finish_reason) for a whole completion; without
    include_reasoning (vLLM's field) the reasoning is parsed out and dropped."""
    if not answers.parsing:
        return {"content": text}, reason
    message = answers.whole(text)
    return (message_payload(message, include_reasoning
                            and answers.plan.reasoning_parser is not None),
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
