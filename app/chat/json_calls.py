"""Families whose calls are bare JSON after an optional marker token: Llama 3.1+
(`<|python_tag|>{"name": ..., "parameters": {...}}`, several joined by `;`) and Mistral
(`[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`).

A call unit is: whitespace, the marker (optional at the very start of the answer, since a
tokenizer that drops special tokens on decoding drops the marker too), whitespace, one JSON
value. Anywhere else only the marker starts a unit: JSON in the middle of prose is prose.
A unit whose JSON is malformed or not shaped like calls is content, unchanged.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

from app.chat.parsing import (
    CallText,
    JsonEnd,
    Step,
    ToolCallParser,
    leading_space,
    split_at_marker,
)


class JsonCallParser(ToolCallParser):
    marker: ClassVar[str]
    openers: ClassVar[str]  # the characters a unit's JSON may start with
    separator: ClassVar[str | None] = None  # between consecutive units, besides whitespace

    def __init__(self, new_id: Callable[[], str] | None = None) -> None:
        super().__init__(new_id)
        self._state = "start"  # start | text | unit | after_call
        self._json: JsonEnd | None = None

    @abstractmethod
    def calls_from(self, value: Any) -> tuple[CallText, ...] | None:
        """The calls a unit's JSON value holds, or None if it is not calls."""

    def _step(self, text: str, final: bool) -> Step | None:
        if self._state == "start":
            rest = text.lstrip()
            if not final and (not rest or (self.marker.startswith(rest) and rest != self.marker)):
                return None
            self._state = "unit" if self._starts_unit(rest) else "text"
        if self._state == "after_call":
            return self._after_call(text, final)
        if self._state == "unit":
            return self._unit(text, final)
        start, found = split_at_marker(text, (self.marker,), final)
        if found:
            self._state = "unit"
        if start:
            return Step(start, content=text[:start])
        return self._unit(text, final) if found else None

    def _starts_unit(self, text: str) -> bool:
        return text.startswith(self.marker) or (bool(text) and text[0] in self.openers)

    def _after_call(self, text: str, final: bool) -> Step | None:
        space = leading_space(text)
        rest = text[space:]
        if not rest:
            return Step(space)  # whitespace after a call is layout
        if self.separator and rest.startswith(self.separator):
            after = rest[len(self.separator):].lstrip()
            if not final and (not after or (self.marker.startswith(after)
                                            and after != self.marker)):
                return None
            if self._starts_unit(after):
                self._state = "unit"
                return Step(len(text) - len(after))
        self._state = "text"
        return Step(space) if space else self._step(text, final)

    def _unit(self, text: str, final: bool) -> Step | None:
        at = leading_space(text)
        marked = text.startswith(self.marker, at)
        if marked:
            at += len(self.marker)
        at += leading_space(text[at:])
        if at == len(text) or text[at] not in self.openers:
            if at == len(text) and not final:
                return None
            if marked:  # the marker, then no JSON (Llama's built-in tools write code)
                self.malformed += 1
            self._state = "text"
            return Step(at, content=text[:at]) if at else self._step(text, final)
        if self._json is None or self._json.start != at:
            self._json = JsonEnd(at)
        end = self._json.end(text)
        if end is None:
            if not final:
                return None
            end = len(text)
        self._json = None
        try:
            calls = self.calls_from(json.loads(text[at:end]))
        except ValueError:
            calls = None
        if not calls:
            if marked:
                self.malformed += 1
            self._state = "text"
            return Step(end, content=text[:end])
        self._state = "after_call"
        return Step(end, calls=calls)
