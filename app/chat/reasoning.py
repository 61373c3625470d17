"""Reasoning parsers: the `<think>...</think>` part of an answer (DeepSeek-R1, Qwen3, QwQ)
apart from the answer itself, with the incremental contract of app/chat/parsing.py.

Two ways a template starts the reasoning: the model writes `<think>` itself (Qwen3: and
may skip thinking altogether), or the prompt already ends with `<think>` (DeepSeek-R1's
templates; Qwen3 with a template that opens it), so the answer starts inside the reasoning
and only `</think>` shows where it ends. `starts_in_reasoning(prompt)` tells which; the
`deepseek_r1` parser also assumes it when the model never writes `<think>` at all (R1
models were trained to think first).
"""

from __future__ import annotations

from typing import ClassVar

from app.chat.parsing import IncrementalParser, leading_space, marker_tail
from app.chat.types import ChatDelta

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def starts_in_reasoning(prompt: str) -> bool:
    """Whether the rendered prompt leaves the answer inside an open `<think>`."""
    return prompt.rstrip().endswith(THINK_OPEN)


class ThinkReasoningParser(IncrementalParser):
    """Splits `<think>reasoning</think>answer`; the answer then goes on to a tool parser."""

    name: ClassVar[str] = "qwen3"
    # Reasoning from the first token even without `<think>` (see module doc).
    always_reasons: ClassVar[bool] = False
    open_tag: ClassVar[str] = THINK_OPEN
    close_tag: ClassVar[str] = THINK_CLOSE

    def __init__(self, prompt_opened: bool = False) -> None:
        self._pending = ""
        reasoning_first = prompt_opened or self.always_reasons
        # opening: a `<think>` the model may still write at the start
        self._state = "opening" if reasoning_first else "start"

    @property
    def in_reasoning(self) -> bool:
        """True until the reasoning has ended (for a thinking budget)."""
        return self._state in ("opening", "reasoning")

    def _drain(self, final: bool) -> ChatDelta:
        reasoning: list[str] = []
        content: list[str] = []
        while self._pending:
            text = self._pending
            if self._state in ("start", "opening"):
                rest = text.lstrip()
                if not final and self.open_tag.startswith(rest) and rest != self.open_tag:
                    break  # may still become `<think>`
                if rest.startswith(self.open_tag):
                    self._pending = rest[len(self.open_tag):]
                    self._state = "reasoning"
                else:
                    self._state = "reasoning" if self._state == "opening" else "answer"
            elif self._state == "reasoning":
                at = text.find(self.close_tag)
                if at >= 0:
                    reasoning.append(text[:at])
                    self._pending = text[at + len(self.close_tag):]
                    self._state = "after_reasoning"
                    continue
                keep = 0 if final else marker_tail(text, self.close_tag)
                reasoning.append(text[:len(text) - keep])
                self._pending = text[len(text) - keep:]
                if keep:
                    break
            elif self._state == "after_reasoning":
                # the blank lines after `</think>` separate the parts; not the answer's
                space = leading_space(text)
                if space == len(text) and not final:
                    break
                self._pending = text[space:]
                self._state = "answer"
            else:
                content.append(text)
                self._pending = ""
        return ChatDelta(content="".join(content), reasoning="".join(reasoning))


class DeepSeekR1ReasoningParser(ThinkReasoningParser):
    name = "deepseek_r1"
    always_reasons = True
