"""Valid-by-construction tool calls: a Lark grammar (llguidance's dialect, compiled by
app/structured.py as a `grammar` constraint) that only admits the family's call syntax
with each tool's parameter schema as the arguments.

  tool_choice "required"        one call or more (one if parallel_tool_calls is false)
  tool_choice {"function": f}   the same, with f only
  tool_choice "auto"            free text, but once the family's trigger marker appears
                                the call after it is constrained (families with a marker)
  tool_choice "none"            no grammar (the route does not offer tools)

Markers that are one added token of the vocabulary (`<tool_call>`, `[TOOL_CALLS]`) are
matched as that token (`<[id]>`): llguidance treats added tokens as special, so their text
alone would never match. With a reasoning parser the grammar first lets the model think
(free text up to `</think>`) and constrains the answer after it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from app.chat.call_syntax import CallSyntax

# JSON on one line with ", " and ": " (as the families write calls, and as app/structured.py
# does): no free whitespace for a small model to loop on.
_JSON_OPTIONS = {"x-guidance": {"whitespace_flexible": False, "item_separator": ", ",
                                "key_separator": ": "}}
_ANY_TEXT = "/(.|\\n)*/"

TokenIds = Mapping[str, int]  # added token text -> id


class ToolChoiceError(ValueError):
    """tool_choice names no offered tool, or asks for something unknown (a 400)."""

    def __init__(self, message: str, param: str = "tool_choice") -> None:
        super().__init__(message)
        self.message, self.param = message, param


def function_of(tool: Mapping[str, Any]) -> Mapping[str, Any]:
    """The function description of an OpenAI tool entry (`{"type": "function", "function":
    {...}}`), or the entry itself when it is already flat."""
    function = tool.get("function")
    return function if isinstance(function, Mapping) else tool


def chosen_tools(tools: Sequence[Mapping[str, Any]], tool_choice: Any
                 ) -> tuple[str, list[Mapping[str, Any]]]:
    """(mode, the tools a call may use): mode is none | auto | required."""
    if tool_choice is None:
        tool_choice = "auto" if tools else "none"
    if isinstance(tool_choice, str):
        if tool_choice not in ("none", "auto", "required"):
            raise ToolChoiceError(f"tool_choice {tool_choice!r} is not one of none, auto, "
                                  "required or a {\"type\": \"function\", ...} object")
        if tool_choice != "none" and not tools:
            raise ToolChoiceError(f"tool_choice {tool_choice!r} needs `tools`")
        return tool_choice, list(tools)
    name = (tool_choice.get("function") or {}).get("name") if isinstance(
        tool_choice, Mapping) else None
    if not isinstance(name, str):
        raise ToolChoiceError("tool_choice object needs function.name")
    named = [tool for tool in tools if function_of(tool).get("name") == name]
    if not named:
        raise ToolChoiceError(f"tool_choice names {name!r}, which is not in `tools`")
    return "required", named


def _json(schema: Mapping[str, Any]) -> str:
    # `::=` would make app/structured.py read the grammar as GBNF; `\u003d` is the same JSON
    return json.dumps({**schema, **_JSON_OPTIONS}, ensure_ascii=False).replace(
        "::=", "::\\u003d")


def call_schema(tool: Mapping[str, Any], argument_key: str) -> dict[str, Any]:
    """One call of `tool` as a JSON object: its name, then arguments of its schema."""
    function = function_of(tool)
    parameters = function.get("parameters") or {"type": "object", "properties": {}}
    return {"type": "object",
            "properties": {"name": {"const": function["name"]}, argument_key: parameters},
            "required": ["name", argument_key], "additionalProperties": False}


def _piece(text: str, token_ids: TokenIds) -> str:
    return f"<[{token_ids[text]}]>" if text in token_ids else json.dumps(text)


def _pieces(texts: Sequence[str], token_ids: TokenIds) -> str:
    return " ".join(_piece(text, token_ids) for text in texts)


def _calls_rules(syntax: CallSyntax, tools: Sequence[Mapping[str, Any]], parallel: bool,
                 token_ids: TokenIds, with_open: bool = True) -> list[str]:
    """Rules whose `calls` is the family's calls (after the trigger if not `with_open`)."""
    schemas = [call_schema(tool, syntax.argument_key) for tool in tools]
    opening = syntax.open if with_open else syntax.open[1:]
    if syntax.as_list:
        array: dict[str, Any] = {"type": "array", "items": {"anyOf": schemas}, "minItems": 1}
        if not parallel:
            array["maxItems"] = 1
        return [f"calls: {_pieces(opening, token_ids)} %json {_json(array)}"]
    rules = [f"fn_{i}: %json {_json(schema)}" for i, schema in enumerate(schemas)]
    rules.append("fn: " + " | ".join(f"fn_{i}" for i in range(len(schemas))))
    close = _pieces(syntax.close, token_ids)
    rules.append(f"call: {_pieces(syntax.open, token_ids)} fn {close}".replace("  ", " "))
    if not with_open:
        rules.append(f"first: {_pieces(opening, token_ids)} fn {close}".replace("  ", " "))
        first = "first"
    else:
        first = "call"
    between = json.dumps(syntax.between) + " " if syntax.between else ""
    rules.append(f"calls: {first} ({between}call)*" if parallel else f"calls: {first}")
    return rules


def tool_call_grammar(syntax: CallSyntax, tools: Sequence[Mapping[str, Any]], tool_choice: Any,
                      parallel: bool = True, token_ids: TokenIds | None = None,
                      reasoning: tuple[str, str, bool] | None = None) -> str | None:
    """The grammar for a request's tools, or None when decoding stays free ("none", or
    "auto" for a family without a trigger marker). `reasoning`: (open tag, close tag,
    whether the prompt already opened it)."""
    ids = token_ids or {}
    mode, allowed = chosen_tools(tools, tool_choice)
    if mode == "none" or (mode == "auto" and syntax.trigger is None):
        return None
    if mode == "required":
        rules = ["answer: calls", *_calls_rules(syntax, allowed, parallel, ids)]
    else:
        assert syntax.trigger is not None and syntax.open[:1] == (syntax.trigger,)
        rules = [f"TEXT: {_ANY_TEXT}",
                 "answer: segment* TEXT" if parallel else "answer: segment? TEXT",
                 *_calls_rules(syntax, allowed, parallel, ids, with_open=False)]
        if syntax.trigger in ids:  # TEXT cannot hold a special token: it ends there
            rules.append(f"segment: TEXT {_piece(syntax.trigger, ids)} calls")
        else:
            rules += [f"trigger[lazy]: TEXT {json.dumps(syntax.trigger)}",
                      "segment: trigger calls"]
    return "%llguidance {}\n" + "\n".join([*_start(reasoning, ids), *rules]) + "\n"


def _start(reasoning: tuple[str, str, bool] | None, ids: TokenIds) -> list[str]:
    if reasoning is None:
        return ["start: answer"]
    open_tag, close_tag, opened = reasoning
    rules = [f"THOUGHT: {_ANY_TEXT}", "BLANK: /[ \\t\\r\\n]*/"]
    if close_tag in ids:
        rules.append(f"thought: THOUGHT {_piece(close_tag, ids)}")
    else:
        rules.append(f"thought[lazy]: THOUGHT {json.dumps(close_tag)}")
    if opened:
        rules.append("start: thought BLANK answer")
    else:
        rules.append(f"start: ({_piece(open_tag, ids)} thought BLANK)? answer")
    return rules


def added_token_ids(tokens: Mapping[int, Any]) -> dict[str, int]:
    """Added-token text -> id, from tokenizers' get_added_tokens_decoder()."""
    return {str(getattr(token, "content", token)): int(i) for i, token in tokens.items()}


