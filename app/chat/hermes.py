"""Hermes / Qwen2.5 / Qwen3 tool calls, any number of them, text before them allowed. A
call left open when the answer ends (max tokens, or a model that omits the closing tag)
still counts if its JSON is complete:

    <tool_call>\n{"name": "f", "arguments": {...}}\n</tool_call>
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import ClassVar

from app.chat.call_syntax import CallSyntax
from app.chat.parsing import (
    Step,
    ToolCallParser,
    call_from_object,
    leading_space,
    split_at_marker,
)

OPEN, CLOSE = "<tool_call>", "</tool_call>"


class HermesToolParser(ToolCallParser):
    name = "hermes"
    template_markers: ClassVar[tuple[str, ...]] = (OPEN,)
    syntax = CallSyntax(open=(OPEN, "\n"), close=("\n", CLOSE), between="\n", trigger=OPEN)

    def __init__(self, new_id: Callable[[], str] | None = None) -> None:
        super().__init__(new_id)
        self._after_call = False

    def _step(self, text: str, final: bool) -> Step | None:
        if self._after_call:
            # whitespace between and after calls is the calls' layout, not an answer
            space = leading_space(text)
            if space == len(text):
                return Step(space)
            self._after_call = False
            if space:
                return Step(space)
        start, found = split_at_marker(text, (OPEN,), final)
        if not found or start > 0:
            return Step(start, content=text[:start]) if start else None
        body_at = text.index(OPEN) + len(OPEN)
        close = text.find(CLOSE, body_at)
        if close < 0 and not final:
            return None
        end = len(text) if close < 0 else close + len(CLOSE)
        body = text[body_at:] if close < 0 else text[body_at:close]
        try:
            call = call_from_object(json.loads(body), ("arguments", "parameters"))
        except ValueError:
            call = None
        if call is None:
            self.malformed += 1
            return Step(end, content=text[:end])
        self._after_call = True
        return Step(end, calls=(call,))
