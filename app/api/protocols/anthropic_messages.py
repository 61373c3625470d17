"""Anthropic Messages <-> the chat pipeline (app/api/chat_pipeline.py): system, content
blocks, tools, tool choice and thinking in; Anthropic's message, content blocks, stop
reasons, usage and stream events out. Nothing about the model lives here.

In: `system` becomes a system message; a user turn's text blocks a user message and each
`tool_result` a `tool` message (in block order); an assistant turn's text its content,
its `tool_use` blocks its tool_calls (input as JSON text) and its `thinking` blocks its
reasoning_content. Out: thinking (with a reasoning parser), text and tool_use blocks; a
stream opens a block when the parser first decides on that kind of output, so the events
add up to the message the same request gets unstreamed."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from app.api.chat_pipeline import ChatAnswers, ChatInput
from app.api.errors import BadRequest, anthropic_error
from app.api.protocols.anthropic_fields import (
    CountTokensRequest,
    InputMessage,
    MediaBlock,
    MessagesRequest,
    RedactedThinkingBlock,
    TextBlock,
    ThinkingAdaptive,
    ThinkingBlock,
    ThinkingDisabled,
    ThinkingEnabled,
    ToolChoiceAny,
    ToolChoiceAuto,
    ToolChoiceNone,
    ToolChoiceTool,
    ToolResultBlock,
    ToolUseBlock,
)
from app.api.schemas import SamplingFields, Usage
from app.chat.plan import ChatOptions
from app.chat.types import ChatDelta, ParsedMessage, ToolCall
from app.structured import ConstraintSpec

CLIENT_TOOL_TYPES = (None, "custom")
# Tool-call ids are the chat path's (`call_...`); Anthropic's clients expect `toolu_...`.
# The id a client sends back is used as it is, so any id works in a history.
TOOL_ID_PREFIX = "toolu_"


def tool_use_id(call_id: str) -> str:
    return TOOL_ID_PREFIX + call_id.removeprefix("call_")


# ---------------------------------------------------------------------------- in


def _refuse_media(block: MediaBlock, where: str) -> None:
    raise BadRequest(f"{where}: content blocks of type {block.type!r} are not supported "
                     "(the served models read text only)", param=where)


def _result_text(block: ToolResultBlock, where: str) -> str:
    if isinstance(block.content, str):
        text = block.content
    else:
        parts = []
        for j, part in enumerate(block.content):
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise BadRequest(f"{where}.content.{j}: tool_result content blocks of type "
                                 f"{part.get('type')!r} are not supported (text only)",
                                 param=f"{where}.content.{j}")
            parts.append(part["text"])
        text = "".join(parts)
    # chat templates have no error flag for a tool message: the text says it
    return f"Error: {text}" if block.is_error else text


def _user_turn(message: InputMessage, where: str) -> list[dict[str, Any]]:
    if isinstance(message.content, str):
        return [{"role": "user", "content": message.content}]
    out: list[dict[str, Any]] = []
    texts: list[str] = []

    def flush() -> None:
        if texts:
            out.append({"role": "user", "content": "".join(texts)})
            texts.clear()

    for j, block in enumerate(message.content):
        at = f"{where}.content.{j}"
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ToolResultBlock):
            flush()
            out.append({"role": "tool", "tool_call_id": block.tool_use_id,
                        "content": _result_text(block, at)})
        elif isinstance(block, MediaBlock):
            _refuse_media(block, at)
        else:
            raise BadRequest(f"{at}: a user turn cannot hold {block.type} blocks",
                             param=at)
    flush()
    return out


def _assistant_turn(message: InputMessage, where: str) -> dict[str, Any]:
    if isinstance(message.content, str):
        return {"role": "assistant", "content": message.content}
    texts, reasoning, calls = [], [], []
    for j, block in enumerate(message.content):
        at = f"{where}.content.{j}"
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ToolUseBlock):
            calls.append({"id": block.id, "type": "function", "function": {
                "name": block.name, "arguments": json.dumps(block.input, ensure_ascii=False)}})
        elif isinstance(block, ThinkingBlock):
            reasoning.append(block.thinking)
        elif isinstance(block, RedactedThinkingBlock):
            continue  # encrypted elsewhere: nothing a template could show
        elif isinstance(block, MediaBlock):
            _refuse_media(block, at)
        else:
            raise BadRequest(f"{at}: an assistant turn cannot hold {block.type} blocks",
                             param=at)
    out: dict[str, Any] = {"role": "assistant",
                           "content": "".join(texts) if texts or not calls else None}
    if calls:
        out["tool_calls"] = calls
    if reasoning:
        out["reasoning_content"] = "".join(reasoning)
    return out


def internal_messages(body: CountTokensRequest) -> list[dict[str, Any]]:
    """System and turns as the chat path takes them (OpenAI's shape, text content)."""
    out: list[dict[str, Any]] = []
    if body.system:
        system = body.system if isinstance(body.system, str) else "\n".join(
            block.text for block in body.system)
        out.append({"role": "system", "content": system})
    for i, message in enumerate(body.messages):
        where = f"messages.{i}"
        if not message.content:  # "" or []: Anthropic refuses both
            raise BadRequest(f"{where}.content: a message must not be empty",
                             param=f"{where}.content")
        if message.role == "user":
            out.extend(_user_turn(message, where))
        else:
            out.append(_assistant_turn(message, where))
    last = out[-1]
    if body.messages[-1].role == "assistant" and (
            last.get("tool_calls") or not (last.get("content") or "").strip()
            or (last.get("content") or "") != (last.get("content") or "").rstrip()):
        # prefill continues text: a last assistant turn with calls, or with no text, has
        # nothing to continue; trailing whitespace is refused as Anthropic refuses it
        raise BadRequest("the last message is an assistant turn to continue (prefill): it "
                         "must be text without trailing whitespace, and no tool_use",
                         param=f"messages.{len(body.messages) - 1}")
    return out


def prefills(body: CountTokensRequest) -> bool:
    """Whether the answer continues the last message, an assistant's (Anthropic's
    prefill): the template renders it open, with no new assistant turn."""
    return body.messages[-1].role == "assistant"


def _tools(body: CountTokensRequest) -> list[dict[str, Any]]:
    tools = []
    for i, tool in enumerate(body.tools or ()):
        where = f"tools.{i}"
        if tool.type not in CLIENT_TOOL_TYPES:
            raise BadRequest(f"{where}: server tool {tool.type!r} is not supported (there are "
                             "no server-side tools here); define client tools with name, "
                             "description and input_schema", param=f"{where}.type")
        if tool.model_extra:
            name = next(iter(tool.model_extra))
            raise BadRequest(f"unknown field '{where}.{name}'", param=f"{where}.{name}")
        if tool.input_schema is None:
            raise BadRequest(f"{where}.input_schema: Field required",
                             param=f"{where}.input_schema")
        function: dict[str, Any] = {"name": tool.name, "parameters": tool.input_schema}
        if tool.description is not None:
            function["description"] = tool.description
        tools.append({"type": "function", "function": function})
    return tools


def _tool_choice(body: CountTokensRequest, tools: Sequence[Any]) -> tuple[Any, bool]:
    """(the chat path's tool_choice, parallel_tool_calls)."""
    choice = body.tool_choice
    if choice is None:
        return None, True
    if isinstance(choice, ToolChoiceNone):
        return "none", True
    if not tools:
        raise BadRequest(f"tool_choice {choice.type!r} needs `tools`", param="tool_choice")
    parallel = not choice.disable_parallel_tool_use
    if isinstance(choice, ToolChoiceAuto):
        return "auto", parallel
    if isinstance(choice, ToolChoiceAny):
        return "required", parallel
    assert isinstance(choice, ToolChoiceTool)
    return {"type": "function", "function": {"name": choice.name}}, parallel


def chat_options(body: CountTokensRequest) -> ChatOptions:
    tools = _tools(body)
    tool_choice, parallel = _tool_choice(body, tools)
    kwargs: dict[str, Any] = {}
    budget = None
    thinking = body.thinking
    if isinstance(thinking, ThinkingEnabled | ThinkingAdaptive):
        kwargs["enable_thinking"] = True  # the switch of templates that reason (Qwen3)
        budget = thinking.budget_tokens if isinstance(thinking, ThinkingEnabled) else None
    elif isinstance(thinking, ThinkingDisabled):
        kwargs["enable_thinking"] = False
    continuing = prefills(body)
    return ChatOptions(tools=tools, tool_choice=tool_choice, parallel_tool_calls=parallel,
                       template_kwargs=kwargs, reasoning_budget=budget,
                       add_generation_prompt=not continuing,
                       continue_final_message=continuing)


def _structured(body: CountTokensRequest) -> ConstraintSpec | None:
    config = body.output_config
    if config is None:
        return None
    if config.effort is not None:
        raise BadRequest("output_config.effort is not supported: reasoning is bounded by "
                         "thinking.budget_tokens", param="output_config.effort")
    if config.format is None:
        return None
    return ConstraintSpec("json_schema", json.dumps(config.format.schema_),
                          "output_config.format")


def count_input(body: CountTokensRequest) -> ChatInput:
    """The prompt part of a request, as the pipeline renders it (count_tokens)."""
    return ChatInput(messages=internal_messages(body), options=chat_options(body),
                     sampling=SamplingFields(), structured=_structured(body))


def chat_input(body: MessagesRequest) -> ChatInput:
    """A Messages request as the chat pipeline takes it."""
    if body.container is not None:
        raise BadRequest("container is not supported: there is no code execution",
                         param="container")
    thinking = body.thinking
    if isinstance(thinking, ThinkingEnabled) and thinking.budget_tokens >= body.max_tokens:
        raise BadRequest("thinking.budget_tokens must be less than max_tokens",
                         param="thinking.budget_tokens")
    sampling = SamplingFields(temperature=body.temperature, top_p=body.top_p,
                              top_k=body.top_k, seed=body.seed, stop=body.stop_sequences,
                              stream=body.stream)
    return ChatInput(messages=internal_messages(body), options=chat_options(body),
                     sampling=sampling, structured=_structured(body),
                     max_tokens=body.max_tokens)


# ---------------------------------------------------------------------------- out


def stop_reason(finish: str | None, stop_string: str | None, made_calls: bool
                ) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) of a finished answer."""
    if finish == "length":
        return "max_tokens", None
    if made_calls:
        return "tool_use", None
    if stop_string is not None:
        return "stop_sequence", stop_string
    return "end_turn", None


def usage_out(usage: Usage) -> dict[str, int]:
    """Anthropic's usage: input_tokens + cache_read_input_tokens is the whole prompt (its
    convention: cache reads are counted apart); nothing is written to a cache on request."""
    return {"input_tokens": usage.prompt_tokens - usage.cached_tokens,
            "output_tokens": usage.completion_tokens,
            "cache_read_input_tokens": usage.cached_tokens,
            "cache_creation_input_tokens": 0}


def _tool_input(call: ToolCall) -> Any:
    # the parsers hand over calls whose arguments are one valid JSON object
    return json.loads(call.arguments) if call.arguments else {}


def content_blocks(message: ParsedMessage) -> list[dict[str, Any]]:
    """A whole answer's blocks: thinking, text, then tool_use (no empty blocks)."""
    blocks: list[dict[str, Any]] = []
    if message.reasoning:
        blocks.append({"type": "thinking", "thinking": message.reasoning, "signature": ""})
    if message.content:
        blocks.append({"type": "text", "text": message.content})
    blocks += [{"type": "tool_use", "id": tool_use_id(call.id), "name": call.name,
                "input": _tool_input(call)} for call in message.tool_calls]
    return blocks


def whole_message(answers: ChatAnswers, text: str) -> ParsedMessage:
    return answers.whole(text) if answers.parsing else ParsedMessage(content=text)


class MessageEvents:
    """Anthropic's stream events for one answer: (event name, data) pairs. A block opens
    when its kind of output first comes and closes when another kind follows."""

    def __init__(self, head: dict[str, Any], prompt_tokens: int) -> None:
        self.head = head
        self.prompt_tokens = prompt_tokens
        self.index = -1  # the open block's index
        self.open: str | None = None  # its type
        self.call_blocks: dict[int, int] = {}  # call index -> block index

    def start(self) -> list[tuple[str, dict[str, Any]]]:
        # the final input counts come with message_delta (cache reads are known then)
        usage = {"input_tokens": self.prompt_tokens, "output_tokens": 0,
                 "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}
        message = {**self.head, "content": [], "stop_reason": None, "stop_sequence": None,
                   "usage": usage}
        return [("message_start", {"type": "message_start", "message": message}),
                ("ping", {"type": "ping"})]

    def _close(self) -> list[tuple[str, dict[str, Any]]]:
        if self.open is None:
            return []
        self.open = None
        return [("content_block_stop", {"type": "content_block_stop", "index": self.index})]

    def _open(self, kind: str, block: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        events = self._close()
        self.index += 1
        self.open = kind
        return [*events, ("content_block_start", {"type": "content_block_start",
                                                  "index": self.index,
                                                  "content_block": block})]

    def _delta(self, index: int, delta: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return ("content_block_delta", {"type": "content_block_delta", "index": index,
                                        "delta": delta})

    def delta(self, delta: ChatDelta) -> list[tuple[str, dict[str, Any]]]:
        events: list[tuple[str, dict[str, Any]]] = []
        if delta.reasoning:
            if self.open != "thinking":
                events += self._open("thinking", {"type": "thinking", "thinking": "",
                                                  "signature": ""})
            events.append(self._delta(self.index, {"type": "thinking_delta",
                                                   "thinking": delta.reasoning}))
        if delta.content:
            if self.open != "text":
                events += self._open("text", {"type": "text", "text": ""})
            events.append(self._delta(self.index, {"type": "text_delta",
                                                   "text": delta.content}))
        for piece in delta.tool_calls:
            if piece.id is not None:  # a call's first piece: its id and name
                events += self._open("tool_use", {"type": "tool_use",
                                                  "id": tool_use_id(piece.id),
                                                  "name": piece.name, "input": {}})
                self.call_blocks[piece.index] = self.index
            if piece.arguments:
                events.append(self._delta(self.call_blocks[piece.index], {
                    "type": "input_json_delta", "partial_json": piece.arguments}))
        return events

    def finish(self, reason: str, stop_sequence: str | None, usage: Usage
               ) -> list[tuple[str, dict[str, Any]]]:
        return [*self._close(),
                ("message_delta", {"type": "message_delta",
                                   "delta": {"stop_reason": reason,
                                             "stop_sequence": stop_sequence},
                                   "usage": usage_out(usage)}),
                ("message_stop", {"type": "message_stop"})]


def error_event(status: int, message: str) -> tuple[str, dict[str, Any]]:
    """An error after the stream began (the status line is already sent)."""
    return "error", anthropic_error(status, message)
