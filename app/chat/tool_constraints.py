"""Valid-by-construction tool calls: grammar rules (app/chat/grammar.py puts them behind
reasoning and hands them to the structured-output module) that only admit the family's
call syntax with each tool's parameter schema as the arguments.

  tool_choice "required"        one call or more (one if parallel_tool_calls is false)
  tool_choice {"function": f}   the same, with f only
  tool_choice "auto"            free text, but once the family's trigger marker appears
                                the call after it is constrained (families with a marker)
  tool_choice "none"            no rules (the route does not offer tools)
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from app.chat.call_syntax import CallSyntax
from app.chat.errors import ToolChoiceError
from app.chat.grammar import ANY_TEXT, TokenIds, free_text, json_value, piece, pieces


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


def call_schema(tool: Mapping[str, Any], argument_key: str) -> dict[str, Any]:
    """One call of `tool` as a JSON object: its name, then arguments of its schema."""
    function = function_of(tool)
    parameters = dict(function.get("parameters") or {"type": "object", "properties": {}})
    # Arguments hold the declared properties only, unless the schema says otherwise: a
    # subset of what it allows, and what every caller means (OpenAI's strict mode demands
    # it be written out); a model left free to invent keys can ramble until max_tokens.
    if parameters.get("type") == "object":
        parameters.setdefault("additionalProperties", False)
    return {"type": "object",
            "properties": {"name": {"const": function["name"]}, argument_key: parameters},
            "required": ["name", argument_key], "additionalProperties": False}


def _sequence(*parts: str) -> str:
    return " ".join(part for part in parts if part)


def _calls_rules(syntax: CallSyntax, tools: Sequence[Mapping[str, Any]], parallel: bool,
                 token_ids: TokenIds, with_open: bool = True) -> list[str]:
    """Rules whose `calls` is the family's calls (after the trigger if not `with_open`)."""
    schemas = [call_schema(tool, syntax.argument_key) for tool in tools]
    opening = syntax.open if with_open else syntax.open[1:]
    if syntax.as_list:
        array: dict[str, Any] = {"type": "array", "items": {"anyOf": schemas}, "minItems": 1}
        if not parallel:
            array["maxItems"] = 1
        space = '" "?' if syntax.space_after_open else ""
        return ["calls: " + _sequence(pieces(opening, token_ids), space, json_value(array))]
    rules = [f"fn_{i}: {json_value(schema)}" for i, schema in enumerate(schemas)]
    rules.append("fn: " + " | ".join(f"fn_{i}" for i in range(len(schemas))))
    close = pieces(syntax.close, token_ids)
    rules.append("call: " + _sequence(pieces(syntax.open, token_ids), "fn", close))
    if not with_open:
        rules.append("first: " + _sequence(pieces(opening, token_ids), "fn", close))
        first = "first"
    else:
        first = "call"
    between = json.dumps(syntax.between) + " " if syntax.between else ""
    rules.append(f"calls: {first} ({between}call)*" if parallel else f"calls: {first}")
    return rules


def tool_call_rules(syntax: CallSyntax, tools: Sequence[Mapping[str, Any]], tool_choice: Any,
                    parallel: bool = True, token_ids: TokenIds | None = None
                    ) -> list[str] | None:
    """The `answer` rules for a request's tools, or None when decoding stays free ("none",
    or "auto" for a family without a trigger marker)."""
    ids = token_ids or {}
    mode, allowed = chosen_tools(tools, tool_choice)
    if mode == "none" or (mode == "auto" and syntax.trigger is None):
        return None
    if mode == "required":
        return ["answer: calls", *_calls_rules(syntax, allowed, parallel, ids)]
    assert syntax.trigger is not None and syntax.open[:1] == (syntax.trigger,)
    rules = ["answer: segment* free" if parallel else "answer: segment? free",
             *_calls_rules(syntax, allowed, parallel, ids, with_open=False)]
    if syntax.trigger in ids:  # free text cannot hold the trigger token: it ends there
        rules += [*free_text("free", ids, frozenset({syntax.trigger})),
                  f"segment: free {piece(syntax.trigger, ids)} calls"]
    else:
        rules += [f"TEXT: {ANY_TEXT}", *free_text("free", ids),
                  f"trigger[lazy]: TEXT {json.dumps(syntax.trigger)}",
                  "segment: trigger calls"]
    return rules
