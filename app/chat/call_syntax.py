"""How a model family writes its tool calls, as data: what the constraint grammars of
app/chat/tool_constraints.py are built from. Each tool-call parser names its syntax."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CallSyntax:
    # Pieces before and after each call's JSON object; a piece that is one added token of
    # the vocabulary (`<tool_call>`) is matched as that token.
    open: tuple[str, ...] = ()
    close: tuple[str, ...] = ()
    between: str = ""  # between parallel calls
    argument_key: str = "arguments"  # {"name": ..., <argument_key>: {...}}
    as_list: bool = False  # all calls in one JSON array after `open` (Mistral)
    # A space may follow `open` (Mistral v0.3 writes `[TOOL_CALLS] [`, later ones `[TOOL_CALLS][`)
    space_after_open: bool = False
    # The marker that starts calls in the middle of free text (tool_choice "auto"); None
    # when calls cannot be told from text until they are complete (bare JSON).
    trigger: str | None = None
