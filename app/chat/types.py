"""Protocol-neutral results of parsing a model's chat output: tool calls, content and
reasoning, whole or as stream deltas. The protocol layers (OpenAI chat today, Responses and
Anthropic Messages later) translate these into their own shapes."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ToolCall:
    """One complete call: `arguments` is a JSON object as text."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of call number `index` in a stream: the first piece of a call carries its id
    and name, later pieces only argument text (as OpenAI's streamed `delta.tool_calls`)."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True)
class ChatDelta:
    """What one piece of model output added: answer text, reasoning text, call pieces."""

    content: str = ""
    reasoning: str = ""
    tool_calls: tuple[ToolCallDelta, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.content or self.reasoning or self.tool_calls)

    def __add__(self, other: ChatDelta) -> ChatDelta:
        return ChatDelta(self.content + other.content, self.reasoning + other.reasoning,
                         self.tool_calls + other.tool_calls)


@dataclass
class ParsedMessage:
    """A whole answer: what the deltas of one stream add up to."""

    content: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)

    @classmethod
    def from_deltas(cls, deltas: Iterable[ChatDelta]) -> ParsedMessage:
        message = cls()
        calls: dict[int, list[str]] = {}
        for delta in deltas:
            message.content += delta.content
            message.reasoning += delta.reasoning
            for piece in delta.tool_calls:
                if piece.index not in calls:
                    # the first piece of a call names it; a piece for an unseen index
                    # without an id and name would be a parser bug
                    assert piece.id is not None and piece.name is not None, piece
                    calls[piece.index] = [piece.id, piece.name, ""]
                calls[piece.index][2] += piece.arguments
        message.tool_calls = [ToolCall(*calls[i]) for i in sorted(calls)]
        return message
