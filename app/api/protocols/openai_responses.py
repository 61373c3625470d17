"""OpenAI's Responses API <-> the chat pipeline (app/api/chat_pipeline.py): input items,
flat function tools, text.format and reasoning.effort in; output items (reasoning,
message, function_call) and the Response object out. The stream's events are built in
app/api/protocols/responses_events.py from the same pieces, so a stream adds up to the
same Response as the whole answer."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from app.api.chat_pipeline import ChatInput
from app.api.errors import BadRequest
from app.api.protocols.responses_fields import ResponsesRequest, TextFormat
from app.api.schemas import SamplingFields, Usage
from app.api.state import ServedModel
from app.chat.plan import ChatOptions
from app.chat.registry import resolve_reasoning_parser
from app.chat.types import ParsedMessage
from app.config import Settings
from app.structured import ConstraintSpec

# reasoning.effort -> most reasoning tokens (the thinking budget), with a reasoning
# parser; None: no budget beyond max_output_tokens. README documents this table.
EFFORT_BUDGETS: dict[str, int | None] = {
    "none": 1, "minimal": 64, "low": 256, "medium": 1024, "high": 4096, "xhigh": None,
    "max": None}
TOOL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # as chat completions' function names
TEXT_PARTS = ("input_text", "output_text", "text", "summary_text", "reasoning_text")
ROLES = {"user": "user", "system": "system", "developer": "system", "assistant": "assistant"}


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


# ---------------------------------------------------------------------------- input


def input_items(body: ResponsesRequest) -> list[dict[str, Any]]:
    """The request's input as items (a string is one user message)."""
    if isinstance(body.input, str):
        return [{"type": "message", "role": "user", "content": body.input}]
    return [dict(item) for item in body.input]


def _text(content: Any, where: str) -> str:
    """A message's content as text: a string, or parts of text types only."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadRequest(f"{where} must be a string or a list of content parts", param=where)
    texts = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in TEXT_PARTS:
            shown = f"{kind!r}" if kind else "without a type"
            raise BadRequest(f"{where}[{i}]: content part {shown} is not supported (text "
                             "only: input_text, output_text; no images, files or audio)",
                             param=f"{where}[{i}]")
        text = part.get("text")
        if not isinstance(text, str):
            raise BadRequest(f"{where}[{i}].text must be a string", param=f"{where}[{i}].text")
        texts.append(text)
    return "".join(texts)


def _string(item: Mapping[str, Any], key: str, where: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or (key != "arguments" and not value):
        raise BadRequest(f"{where}.{key} must be a non-empty string", param=f"{where}.{key}")
    return value


def chat_messages(instructions: str | None, items: Sequence[Mapping[str, Any]]
                  ) -> list[dict[str, Any]]:
    """Input items -> the chat path's OpenAI-shaped messages: function_call items join
    the assistant message before them (or start one), function_call_output items become
    tool messages, reasoning items are dropped (the templates re-render no reasoning of
    earlier turns)."""
    messages: list[dict[str, Any]] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, Mapping):
            raise BadRequest(f"{where} must be an object (an input item)", param=where)
        kind = item.get("type", "message")
        if kind == "message":
            role = ROLES.get(str(item.get("role")))
            if role is None:
                raise BadRequest(f"{where}.role must be one of {', '.join(ROLES)}",
                                 param=f"{where}.role")
            if "content" not in item:
                raise BadRequest(f"{where}.content is required", param=f"{where}.content")
            messages.append({"role": role, "content": _text(item["content"],
                                                            f"{where}.content")})
        elif kind == "function_call":
            call = {"id": _string(item, "call_id", where), "type": "function",
                    "function": {"name": _string(item, "name", where),
                                 "arguments": _string(item, "arguments", where)}}
            last = messages[-1] if messages else None
            if last is None or last["role"] != "assistant":
                last = {"role": "assistant", "content": None}
                messages.append(last)
            last.setdefault("tool_calls", []).append(call)
        elif kind == "function_call_output":
            output = item.get("output")
            messages.append({"role": "tool", "tool_call_id": _string(item, "call_id", where),
                             "content": output if isinstance(output, str)
                             else _text(output, f"{where}.output")})
        elif kind == "reasoning":
            continue
        else:
            raise BadRequest(f"{where}: input item type {kind!r} is not supported (message, "
                             "function_call, function_call_output, reasoning)", param=where)
    return messages


def function_tools(body: ResponsesRequest) -> list[dict[str, Any]]:
    """Flat function tools -> the chat path's nested OpenAI chat shape; any other tool
    type is one of OpenAI's built-in tools, which this server does not have."""
    tools = []
    for i, tool in enumerate(body.tools or ()):
        kind = tool.get("type")
        if kind != "function":
            raise BadRequest(f"tools[{i}]: the built-in tool {kind!r} is not available on "
                             "this server (only function tools: {\"type\": \"function\", "
                             "\"name\", \"parameters\"})", param=f"tools[{i}]")
        name, parameters = tool.get("name"), tool.get("parameters")
        if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
            raise BadRequest(f"tools[{i}].name must be 1 to 64 letters, digits, _ . or -",
                             param=f"tools[{i}].name")
        if parameters is not None and not isinstance(parameters, dict):
            raise BadRequest(f"tools[{i}].parameters must be a JSON Schema object",
                             param=f"tools[{i}].parameters")
        function = {"name": name, "parameters": parameters,
                    "description": tool.get("description"), "strict": tool.get("strict")}
        tools.append({"type": "function",
                      "function": {k: v for k, v in function.items() if v is not None}})
    return tools


def tool_choice(body: ResponsesRequest) -> Any:
    """none | auto | required | {"type": "function", "name"} -> the chat path's choice."""
    choice = body.tool_choice
    if not isinstance(choice, dict):
        return choice
    if choice.get("type") != "function" or not isinstance(choice.get("name"), str):
        raise BadRequest("tool_choice must be none, auto, required or {\"type\": "
                         "\"function\", \"name\": ...} (there are no built-in tools)",
                         param="tool_choice")
    return {"type": "function", "function": {"name": choice["name"]}}


def has_reasoning(model: ServedModel, settings: Settings) -> bool:
    """Whether answers of `model` are split into reasoning and text on this server."""
    name = None if settings.reasoning_parser == "none" else settings.reasoning_parser
    return resolve_reasoning_parser(name, model.tokenizer.chat_template) is not None


def reasoning_budget(body: ResponsesRequest, reasons: bool) -> int | None:
    effort = body.reasoning.effort if body.reasoning else None
    return EFFORT_BUDGETS[effort] if effort and reasons else None


def text_constraint(fmt: TextFormat | None) -> ConstraintSpec | None:
    """text.format -> the request's structured-output constraint."""
    param = "text.format"
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return ConstraintSpec("json_object", "", param)
    if fmt.schema_ is None or not fmt.name:
        raise BadRequest("text.format json_schema needs a name and a schema", param=param)
    return ConstraintSpec("json_schema", json.dumps(fmt.schema_), param,
                          strict=bool(fmt.strict))


def chat_input(body: ResponsesRequest, items: Sequence[Mapping[str, Any]],
               budget: int | None) -> ChatInput:
    """A Responses request (its input after any replayed conversation) as the chat
    pipeline takes it."""
    sampling = SamplingFields(
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p, top_k=body.top_k, min_p=body.min_p,
        repetition_penalty=body.repetition_penalty, presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty, seed=body.seed, stop=body.stop,
        min_tokens=body.min_tokens, ignore_eos=body.ignore_eos)
    options = ChatOptions(tools=function_tools(body), tool_choice=tool_choice(body),
                          parallel_tool_calls=body.parallel_tool_calls is not False,
                          reasoning_budget=budget)
    return ChatInput(
        messages=chat_messages(body.instructions, items), options=options,
        sampling=sampling, structured=text_constraint(body.text.format if body.text else None),
        max_tokens=body.max_output_tokens, max_tokens_param="max_output_tokens",
        prompt_param="input", cache_salt=body.cache_salt)


# ---------------------------------------------------------------------------- output


def reasoning_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "reasoning", "summary": [],
            "content": [{"type": "reasoning_text", "text": text}] if text else [],
            "status": status}


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(item_id: str, text: str | None, status: str) -> dict[str, Any]:
    """A message; `text` None: just opened, no content part yet."""
    return {"id": item_id, "type": "message", "role": "assistant", "status": status,
            "content": [] if text is None else [text_part(text)]}


def call_item(item_id: str, call_id: str, name: str, arguments: str, status: str
              ) -> dict[str, Any]:
    return {"id": item_id, "type": "function_call", "call_id": call_id, "name": name,
            "arguments": arguments, "status": status}


def final_status(finish_reason: str | None) -> str:
    return "incomplete" if finish_reason == "length" else "completed"


def output_items(message: ParsedMessage, status: str) -> list[dict[str, Any]]:
    """A whole answer's output items, in the order its stream opens them: reasoning, the
    message (also when empty, unless the answer is calls), calls. The last item carries
    the answer's status (incomplete when max_output_tokens cut it); those before it were
    finished."""
    items: list[dict[str, Any]] = []
    if message.reasoning:
        items.append(reasoning_item(new_id("rs"), message.reasoning, "completed"))
    if message.content or not message.tool_calls:
        items.append(message_item(new_id("msg"), message.content, "completed"))
    for call in message.tool_calls:
        items.append(call_item(new_id("fc"), call.id, call.name, call.arguments,
                               "completed"))
    items[-1]["status"] = status
    return items


def response_usage(usage: Usage, reasoning_tokens: int) -> dict[str, Any]:
    return {"input_tokens": usage.prompt_tokens,
            "input_tokens_details": {"cached_tokens": usage.cached_tokens,
                                     "cache_write_tokens": 0},
            "output_tokens": usage.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
            "total_tokens": usage.total_tokens}


def echoed_tools(body: ResponsesRequest) -> list[dict[str, Any]]:
    return [{"type": "function", "name": t["name"], "description": t.get("description"),
             "parameters": t.get("parameters"), "strict": t.get("strict")}
            for t in body.tools or ()]


def response_object(body: ResponsesRequest, response_id: str, created: int, model: str,
                    status: str, output: list[dict[str, Any]],
                    usage: dict[str, Any] | None = None,
                    error: dict[str, Any] | None = None) -> dict[str, Any]:
    """The Response: what was asked (echoed as OpenAI does) and what came of it."""
    text = body.text.format if body.text and body.text.format else None
    return {
        "id": response_id, "object": "response", "created_at": created, "status": status,
        "error": error,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete"
        else None,
        "instructions": body.instructions, "max_output_tokens": body.max_output_tokens,
        "model": model, "output": output,
        "parallel_tool_calls": body.parallel_tool_calls is not False,
        "previous_response_id": body.previous_response_id,
        "reasoning": {"effort": body.reasoning.effort if body.reasoning else None,
                      "summary": body.reasoning.summary if body.reasoning else None},
        "store": body.store is not False,
        "temperature": 1.0 if body.temperature is None else body.temperature,
        "text": {"format": text.model_dump(by_alias=True, exclude_none=True) if text
                 else {"type": "text"}},
        "tool_choice": body.tool_choice or "auto", "tools": echoed_tools(body),
        "top_p": 1.0 if body.top_p is None else body.top_p, "truncation": "disabled",
        "usage": usage, "user": body.user, "metadata": body.metadata or {},
        "background": False,
    }

