"""Domain errors of the chat path: requests it cannot serve as asked. They name no request
field; app/api/errors.py maps each class to its field and a 400."""

from __future__ import annotations


class ChatRequestError(ValueError):
    """A chat request the chat path cannot serve as asked."""


class ToolChoiceError(ChatRequestError):
    """tool_choice names no offered tool, or asks for something unknown."""


class AnswerFormatConflict(ChatRequestError):
    """A required or named tool call and a response format both decide the answer."""


class BudgetUnsupported(ChatRequestError):
    """A thinking budget this model's vocabulary cannot enforce."""


class ContinuationError(ChatRequestError):
    """continue_final_message on a conversation whose last message cannot be continued."""
