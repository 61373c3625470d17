"""A structured-output constraint's source (JSON Schema, regex, choice list, grammar) ->
llguidance grammar text. Pure and quick: the expensive part (building the lexer and
parser for a tokenizer) is app.structured_check's. Imports no other `app` module, so the
compile child process starts fast.

JSON Schema handling beyond llguidance's own:
  booleans     `true` (any JSON value) compiles as `{}`; `false` (no value) is refused
               here, before compiling. Booleans inside a schema are llguidance's (it
               supports them; an unsatisfiable one is refused with its message).
  strict       OpenAI's `json_schema.strict: true`: every object schema that does not
               say `additionalProperties` (or `unevaluatedProperties`) admits only its
               listed properties, at every depth (xgrammar's strict mode, OpenAI's
               Structured Outputs). Without strict, JSON Schema's default holds: objects
               admit other keys unless the schema says `additionalProperties: false`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from llguidance import LLMatcher
from llguidance.gbnf_to_lark import gbnf_to_lark

if TYPE_CHECKING:  # a TypedDict of the stubs only
    from llguidance._lib import JsonCompileOptions

# JSON as one line, `,` and `:` between items (as vLLM's default): a small model given
# free whitespace between tokens can spend its whole max_tokens on blanks. A schema may
# opt back in with {"x-guidance": {"whitespace_flexible": true}}.
JSON_OPTIONS: JsonCompileOptions = {"whitespace_flexible": False}

# Keywords whose value is one subschema, a list of them, or a name -> subschema map.
_ONE = ("additionalProperties", "unevaluatedProperties", "items", "additionalItems",
        "contains", "not", "if", "then", "else", "propertyNames", "unevaluatedItems")
_LIST = ("anyOf", "oneOf", "allOf", "prefixItems")
_MAP = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")


class GrammarError(ValueError):
    """The source cannot become a grammar; the message says why."""


def _is_object_schema(schema: dict[str, Any]) -> bool:
    kind = schema.get("type")
    if kind == "object" or (isinstance(kind, list) and "object" in kind):
        return True
    return any(k in schema for k in ("properties", "required", "patternProperties"))


def close_objects(schema: Any) -> Any:
    """A copy of `schema` where every object schema without `additionalProperties` or
    `unevaluatedProperties` gets `additionalProperties: false` (strict mode)."""
    if isinstance(schema, list):  # `items` as a list (draft 4 tuples)
        return [close_objects(s) for s in schema]
    if not isinstance(schema, dict):  # a boolean subschema, or a keyword's plain value
        return schema
    closed: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _ONE or key in _LIST:
            closed[key] = close_objects(value)
        elif key in _MAP and isinstance(value, dict):
            closed[key] = {name: close_objects(sub) for name, sub in value.items()}
        else:
            closed[key] = value
    if (_is_object_schema(closed) and "additionalProperties" not in closed
            and "unevaluatedProperties" not in closed):
        closed["additionalProperties"] = False
    return closed


def json_schema_grammar(schema_text: str, strict: bool) -> str:
    try:
        schema = json.loads(schema_text)
    except json.JSONDecodeError as exc:
        raise GrammarError(f"invalid JSON Schema: not JSON ({exc})") from None
    if schema is False:
        raise GrammarError("invalid JSON Schema: `false` admits no value, so nothing can "
                           "be generated")
    if schema is True:  # any JSON value; llguidance's options need an object schema
        schema = {}
    if not isinstance(schema, dict):
        raise GrammarError("invalid JSON Schema: a schema is an object or a boolean")
    if strict:
        schema = close_objects(schema)
    try:
        return str(LLMatcher.grammar_from_json_schema(json.dumps(schema),
                                                      defaults=JSON_OPTIONS))
    except ValueError as exc:
        raise GrammarError(f"invalid JSON Schema: {exc}") from None


def _json_object_grammar(_: str, strict: bool) -> str:
    return json_schema_grammar('{"type": "object"}', strict=False)


def _regex_grammar(pattern: str, _: bool) -> str:
    return str(LLMatcher.grammar_from_regex(pattern))


def _choice_grammar(choices_json: str, _: bool) -> str:
    choices = json.loads(choices_json)
    return _regex_grammar("(?:" + "|".join(re.escape(c) for c in choices) + ")", False)


def _lark_grammar(text: str, _: bool) -> str:
    if "::=" in text:  # GBNF (llama.cpp's format)
        try:
            text = gbnf_to_lark(text)
        except Exception as exc:  # the converter raises plain exceptions
            raise GrammarError(f"invalid GBNF grammar: {exc}") from None
    return str(LLMatcher.grammar_from_lark(text))


# kind -> (source text, strict) -> grammar; the kinds of app.structured.KINDS
GRAMMARS: dict[str, Callable[[str, bool], str]] = {
    "json_schema": json_schema_grammar,
    "json_object": _json_object_grammar,
    "regex": _regex_grammar,
    "choice": _choice_grammar,
    "grammar": _lark_grammar,
}


def grammar_for(kind: str, value: str, strict: bool) -> str:
    build = GRAMMARS.get(kind)
    if build is None:
        raise GrammarError(f"unknown constraint kind {kind!r}")
    return build(value, strict)
