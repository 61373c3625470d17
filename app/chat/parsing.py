"""The incremental contract every output parser (tool calls, reasoning) keeps.

A parser is fed the model's text in pieces and answers, for each piece, only what is decided
whatever text may follow: text that could still turn into a marker (`<tool_c` of
`<tool_call>`) or whitespace that may turn out to precede a call is held back, and a call is
given out only once its JSON is complete and valid. `finish()` decides the rest. So a stream
cut anywhere adds up to the same message as the whole text fed at once; a call that turns out
malformed, and text that only looks like a call, come back as content, unchanged.

Each parser is a small state machine over its pending text: `_step(text, final)` looks at
the pending text from its start and returns one decided `Step` (how much it consumed, what
that produced), or None when it cannot decide yet (never when `final`).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from app.chat.call_syntax import CallSyntax
from app.chat.ids import openai_tool_call_id
from app.chat.types import ChatDelta, ToolCallDelta

# (name, arguments as a JSON object's text)
CallText = tuple[str, str]


@dataclass(frozen=True)
class Step:
    consumed: int
    content: str = ""
    calls: tuple[CallText, ...] = ()


def marker_tail(text: str, marker: str) -> int:
    """Length of the longest tail of `text` that begins `marker` without being all of it."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:size]):
            return size
    return 0


def held_back(text: str, markers: tuple[str, ...]) -> int:
    """How many characters at the end of `text` must wait: the longest tail that begins a
    marker, plus the whitespace before it (whitespace right before a call is the call's)."""
    hold = max(marker_tail(text, marker) for marker in markers)
    rest = text[:len(text) - hold]
    return hold + len(rest) - len(rest.rstrip())


def split_at_marker(text: str, markers: tuple[str, ...], final: bool) -> tuple[int, bool]:
    """(n, found): text[:n] is content for certain; with `found`, a call unit (whitespace,
    then a marker) starts at n."""
    positions = [i for i in (text.find(m) for m in markers) if i >= 0]
    if positions:
        at = min(positions)
        return len(text[:at].rstrip()), True
    if final:
        return len(text), False
    return len(text) - held_back(text, markers), False


def leading_space(text: str) -> int:
    return len(text) - len(text.lstrip())


def arguments_text(arguments: Any) -> str | None:
    """A call's arguments as JSON text, or None when they are not a JSON object (some models
    write the object as a JSON string; that is accepted)."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    return json.dumps(arguments, ensure_ascii=False)


def call_from_object(value: Any, argument_keys: tuple[str, ...]) -> CallText | None:
    """A call written as {"name": ..., <an argument key>: {...}}; None if `value` is not one."""
    if not isinstance(value, dict):
        return None
    name = value.get("name")
    if not isinstance(name, str) or not name:
        return None
    # the arguments key is required: `{"name": "Bob"}` in an answer is prose, not a call
    present = [key for key in argument_keys if key in value]
    arguments = arguments_text(value[present[0]]) if present else None
    return None if arguments is None else (name, arguments)


class JsonEnd:
    """Finds where the JSON object or array starting at `start` ends, keeping its place
    between calls so a growing text is scanned once. Only brackets outside strings count;
    whether the text is valid JSON is json.loads' business."""

    def __init__(self, start: int) -> None:
        self.start = start
        self._at = start
        self._depth = 0
        self._in_string = False
        self._escaped = False

    def end(self, text: str) -> int | None:
        for i in range(self._at, len(text)):
            char = text[i]
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif char == "\\":
                    self._escaped = True
                elif char == '"':
                    self._in_string = False
            elif char == '"':
                self._in_string = True
            elif char in "{[":
                self._depth += 1
            elif char in "}]":
                self._depth -= 1
                if self._depth == 0:
                    self._at = i + 1
                    return i + 1
        self._at = len(text)
        return None


class IncrementalParser(ABC):
    """Text fed piece by piece; what is undecided waits in `_pending` until later text or
    the end decides it, so any split of the text parses as the whole does."""

    _pending: str

    def feed(self, text: str) -> ChatDelta:
        self._pending += text
        return self._drain(final=False)

    def finish(self) -> ChatDelta:
        return self._drain(final=True)

    @abstractmethod
    def _drain(self, final: bool) -> ChatDelta:
        """What `_pending` decides now (all of it when `final`)."""


class ToolCallParser(IncrementalParser):
    """Splits a model's answer into content and tool calls, incrementally (see module doc)."""

    name: ClassVar[str]
    syntax: ClassVar[CallSyntax]
    # Text in a chat template that shows the template was written for this family.
    template_markers: ClassVar[tuple[str, ...]] = ()
    # The marker is a special token: decode with special tokens kept, or it is lost.
    needs_special_tokens: ClassVar[bool] = False

    @staticmethod
    def new_id() -> str:
        """The id of a call this family's model made."""
        return openai_tool_call_id()

    @staticmethod
    def history_id(call_id: str) -> str:
        """A client's call id as the family's template takes it (Mistral's: 9 characters)."""
        return call_id

    def __init__(self, new_id: Callable[[], str] | None = None) -> None:
        self._pending = ""
        self._calls = 0
        # Units that began with the family's call marker but were not valid calls (they
        # came back as content): the parse failures a metric counts.
        self.malformed = 0
        self._make_id = new_id or type(self).new_id

    def _drain(self, final: bool) -> ChatDelta:
        content: list[str] = []
        pieces: list[ToolCallDelta] = []
        while self._pending:
            step = self._step(self._pending, final)
            if step is None:
                break
            assert step.consumed > 0, "a parser step must make progress"
            self._pending = self._pending[step.consumed:]
            content.append(step.content)
            for name, arguments in step.calls:
                index = self._calls
                self._calls += 1
                pieces.append(ToolCallDelta(index, id=self._make_id(), name=name))
                pieces.append(ToolCallDelta(index, arguments=arguments))
        return ChatDelta(content="".join(content), tool_calls=tuple(pieces))

    @abstractmethod
    def _step(self, text: str, final: bool) -> Step | None:
        """One decided step over the pending `text` (see module doc)."""
