"""One answer's parser: reasoning first (if the model reasons), then tool calls in what
follows the reasoning. Each stage keeps the incremental contract, so the pair does too."""

from __future__ import annotations

from app.chat.parsing import ToolCallParser
from app.chat.reasoning import ThinkReasoningParser
from app.chat.types import ChatDelta, ParsedMessage


class ChatOutputParser:
    def __init__(self, tools: ToolCallParser | None = None,
                 reasoning: ThinkReasoningParser | None = None) -> None:
        self.tools = tools
        self.reasoning = reasoning

    @property
    def in_reasoning(self) -> bool:
        return self.reasoning is not None and self.reasoning.in_reasoning

    def feed(self, text: str) -> ChatDelta:
        return self._answer(self.reasoning.feed(text) if self.reasoning else ChatDelta(text))

    def finish(self) -> ChatDelta:
        last = self._answer(self.reasoning.finish()) if self.reasoning else ChatDelta()
        return last + self.tools.finish() if self.tools else last

    def _answer(self, delta: ChatDelta) -> ChatDelta:
        if self.tools is None:
            return delta
        found = self.tools.feed(delta.content)
        return ChatDelta(found.content, delta.reasoning, found.tool_calls)

    @property
    def malformed_calls(self) -> int:
        """Calls the model began (its marker) that were not valid: left in the content."""
        return self.tools.malformed if self.tools else 0

    def parse(self, text: str) -> ParsedMessage:
        """A whole answer at once (a fresh parser per answer)."""
        return ParsedMessage.from_deltas([self.feed(text), self.finish()])
