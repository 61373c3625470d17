"""Rendering a conversation with tools through the checkpoint's chat template.

Messages arrive in the internal (OpenAI-shaped) form: assistant turns may carry
`tool_calls` whose `function.arguments` is JSON text, and `tool` turns answer them by
`tool_call_id`. Templates are written for transformers' convention instead, where
arguments are objects (Qwen's and Llama's templates apply `tojson` to them), so arguments
are parsed before rendering, and an assistant turn's missing content (clients send null
beside tool calls) becomes "" (Qwen3's template tests `'</think>' in message.content`).
Mistral's templates accept only 9-character call ids: a parser
family may map ids for the history (`history_id`), the same id always to the same text.

A template that knows no `tools` (it never reads the variable) gets them described in a
system message instead, in the hermes syntax (`<tool_call>{json}</tool_call>`), its
assistant calls written out in that syntax and tool results as user turns wrapped in
`<tool_response>`; `auto` then parses its answers as hermes (app/chat/registry.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from app.tokenizer import Tokenizer

# Short on purpose: small models have small contexts (the shipped default-lm: 256 tokens).
FALLBACK_TOOLS_INTRO = (
    "# Tools\nTo call a function, answer "
    "<tool_call>\n{{\"name\": <name>, \"arguments\": <arguments object>}}\n</tool_call>. "
    "Functions:\n{tools}"
)


def _arguments_object(arguments: Any) -> Any:
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments  # not JSON: the template shows the text as it is
    return arguments


def template_messages(messages: Sequence[dict[str, Any]],
                      history_id: Callable[[str], str] | None = None
                      ) -> list[dict[str, Any]]:
    """Messages in the shape chat templates expect (see module doc); inputs unchanged."""
    out = []
    for message in messages:
        message = dict(message)
        if message.get("role") == "assistant" and message.get("content") is None:
            message["content"] = ""
        if message.get("tool_calls"):
            calls = []
            for call in message["tool_calls"]:
                call = dict(call)
                function = dict(call.get("function") or {})
                if "arguments" in function:
                    function["arguments"] = _arguments_object(function["arguments"])
                call["function"] = function
                if history_id and isinstance(call.get("id"), str):
                    call["id"] = history_id(call["id"])
                calls.append(call)
            message["tool_calls"] = calls
        if history_id and isinstance(message.get("tool_call_id"), str):
            message["tool_call_id"] = history_id(message["tool_call_id"])
        out.append(message)
    return out


def fallback_tools_message(tools: Sequence[dict[str, Any]]) -> str:
    """Each function's description as compact JSON, one a line, after the call syntax."""
    listed = "\n".join(json.dumps(tool.get("function", tool), ensure_ascii=False,
                                   separators=(",", ":")) for tool in tools)
    return FALLBACK_TOOLS_INTRO.format(tools=listed)


def _call_text(call: dict[str, Any]) -> str:
    function = call.get("function") or {}
    body = {"name": function.get("name"), "arguments": _arguments_object(
        function.get("arguments", {}))}
    return f"<tool_call>\n{json.dumps(body, ensure_ascii=False)}\n</tool_call>"


def tools_in_system_message(messages: Sequence[dict[str, Any]],
                            tools: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation rewritten for a template that knows no tools (module doc)."""
    intro = fallback_tools_message(tools)
    out: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        if role == "assistant" and message.get("tool_calls"):
            parts = [message.get("content") or ""] + [_call_text(c) for c in
                                                       message["tool_calls"]]
            out.append({"role": "assistant", "content": "\n".join(p for p in parts if p)})
        elif role == "tool":
            out.append({"role": "user", "content":
                        f"<tool_response>\n{message.get('content') or ''}\n</tool_response>"})
        else:
            out.append(dict(message))
    if out and out[0].get("role") == "system":
        out[0]["content"] = f"{out[0].get('content') or ''}\n\n{intro}".lstrip()
    else:
        out.insert(0, {"role": "system", "content": intro})
    return out


def render_chat(tokenizer: Tokenizer, messages: Sequence[dict[str, Any]],
                tools: Sequence[dict[str, Any]] | None = None,
                template_kwargs: dict[str, Any] | None = None,
                history_id: Callable[[str], str] | None = None,
                add_generation_prompt: bool = True) -> str:
    """The prompt text for a conversation, with tools if any (module doc)."""
    prepared = template_messages(messages, history_id)
    if tools and not tokenizer.template_knows("tools"):
        prepared, tools = tools_in_system_message(prepared, tools), None
    return tokenizer.apply_chat_template(prepared, add_generation_prompt=add_generation_prompt,
                                         tools=list(tools) if tools else None,
                                         **(template_kwargs or {}))
