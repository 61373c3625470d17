"""Mistral tool calls: `[TOOL_CALLS][{"name": "f", "arguments": {...}}, ...]` (v0.3 / Nemo /
Small). Ids are 9 letters and digits, as Mistral's templates require of the history."""

from __future__ import annotations

from typing import Any, ClassVar

from app.chat.call_syntax import CallSyntax
from app.chat.ids import as_mistral_id, mistral_tool_call_id
from app.chat.json_calls import JsonCallParser
from app.chat.parsing import CallText, call_from_object


class MistralToolParser(JsonCallParser):
    name = "mistral"
    template_markers: ClassVar[tuple[str, ...]] = ("[TOOL_CALLS]",)
    needs_special_tokens = True
    syntax = CallSyntax(open=("[TOOL_CALLS]",), as_list=True, trigger="[TOOL_CALLS]",
                        space_after_open=True)

    @staticmethod
    def new_id() -> str:
        return mistral_tool_call_id()

    @staticmethod
    def history_id(call_id: str) -> str:
        return as_mistral_id(call_id)
    marker = "[TOOL_CALLS]"
    openers = "[{"

    def calls_from(self, value: Any) -> tuple[CallText, ...] | None:
        items = value if isinstance(value, list) else [value]
        calls = [call_from_object(item, ("arguments", "parameters")) for item in items]
        if not calls or any(call is None for call in calls):
            return None
        return tuple(call for call in calls if call is not None)
