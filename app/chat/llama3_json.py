"""Llama 3.1+ JSON tool calls (Meta's JSON-based tool calling, as in the Llama 3.1 template):
`{"name": "f", "parameters": {...}}`, possibly after `<|python_tag|>`, several joined by `;`."""

from __future__ import annotations

from typing import Any, ClassVar

from app.chat.call_syntax import CallSyntax
from app.chat.json_calls import JsonCallParser
from app.chat.parsing import CallText, call_from_object


class Llama3JsonToolParser(JsonCallParser):
    name = "llama3_json"
    template_markers: ClassVar[tuple[str, ...]] = ("<|python_tag|>", '"parameters": dictionary')
    needs_special_tokens = True
    # Llama 3.1's template asks for bare JSON (no marker): nothing to trigger "auto" on
    syntax = CallSyntax(between="; ", argument_key="parameters")
    marker = "<|python_tag|>"
    openers = "{"
    separator = ";"

    def calls_from(self, value: Any) -> tuple[CallText, ...] | None:
        call = call_from_object(value, ("parameters", "arguments"))
        return None if call is None else (call,)
