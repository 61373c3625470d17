"""Structured output: constraints that make generated text parse (JSON Schema, JSON, regex,
choice, grammar), compiled by llguidance, the constraint engine vLLM and llama.cpp use.

A request's constraint is compiled once per (kind, spec) and tokenizer into a validated
grammar and a template matcher; every completion of the request gets its own copy of the
template (a matcher is a parser state over the completion's tokens). The engine's worker
asks each matcher for the mask of allowed next tokens, applies it before sampling (so
`processed` logprobs reflect it; `raw` ones stay the model's), and feeds it the sampled
token. A preempted sequence keeps its matcher: its output tokens do not change when its
KV cache is recomputed, so neither does the parser state.

Kinds (the request fields that produce them are in app/api/structured_fields.py):
  json_schema  a JSON Schema (llguidance's JSON Schema support; unsupported keywords are
               refused with llguidance's message)
  json_object  any JSON object
  regex        the whole output matches the regex
  choice       the output is exactly one of the strings
  grammar      a Lark grammar (llguidance's dialect), or GBNF (llama.cpp's; converted)
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from llguidance import LLMatcher, LLTokenizer

from app.tokenizer import Tokenizer

KINDS = ("json_schema", "json_object", "regex", "choice", "grammar")
# JSON as one line, `", "` and `": "` between items (as vLLM's default): a small model
# given free whitespace between tokens can spend its whole max_tokens on blanks. A schema
# may opt back in with {"x-guidance": {"whitespace_flexible": true}}.
JSON_OPTIONS: Any = {"whitespace_flexible": False}
CACHE_SIZE = 128  # compiled constraints kept per tokenizer


class InvalidConstraint(ValueError):
    """A schema, regex, grammar or choice list that cannot be compiled; the message names
    the problem (it becomes a 400)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.message, self.param = message, param


@dataclass(frozen=True)
class ConstraintSpec:
    kind: str  # one of KINDS
    value: str  # the schema as JSON text, the regex, the choices as a JSON list, the grammar
    param: str  # the request field it came from, for error messages


@dataclass(frozen=True)
class Constraint:
    """A compiled constraint: hand each completion `new_matcher()`."""

    spec: ConstraintSpec
    grammar: str
    template: Any  # LLMatcher in its initial state

    def new_matcher(self) -> Any:
        return self.template.deep_copy()


def _grammar(spec: ConstraintSpec) -> str:
    if spec.kind == "json_schema":
        try:
            return str(LLMatcher.grammar_from_json_schema(spec.value, defaults=JSON_OPTIONS))
        except ValueError as exc:
            raise InvalidConstraint(f"invalid JSON Schema: {exc}", spec.param) from None
    if spec.kind == "json_object":
        return str(LLMatcher.grammar_from_json_schema('{"type": "object"}',
                                                      defaults=JSON_OPTIONS))
    if spec.kind == "regex":
        return str(LLMatcher.grammar_from_regex(spec.value))
    if spec.kind == "choice":
        choices = json.loads(spec.value)
        pattern = "|".join(re.escape(c) for c in choices)
        return str(LLMatcher.grammar_from_regex(f"(?:{pattern})"))
    if spec.kind == "grammar":
        text = spec.value
        if "::=" in text:  # GBNF (llama.cpp's format)
            from llguidance.gbnf_to_lark import gbnf_to_lark

            try:
                text = gbnf_to_lark(text)
            except Exception as exc:  # the converter raises plain exceptions
                raise InvalidConstraint(f"invalid GBNF grammar: {exc}", spec.param) from None
        return str(LLMatcher.grammar_from_lark(text))
    raise InvalidConstraint(f"unknown constraint kind {spec.kind!r}", spec.param)


class ConstraintCompiler:
    """Compiles constraints against one tokenizer; a bounded LRU cache of the results.
    Thread-safe: compiling runs in worker threads, off the event loop."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int) -> None:
        self._source = tokenizer
        self._vocab_size = vocab_size
        self._ll: LLTokenizer | None = None
        self._cache: OrderedDict[ConstraintSpec, Constraint] = OrderedDict()
        self._lock = threading.Lock()

    def _tokenizer(self) -> LLTokenizer:
        if self._ll is None:
            eos = list(self._source.eos_ids)
            self._ll = LLTokenizer(self._source.backend.to_str(), n_vocab=self._vocab_size,
                                   eos_token=eos[0] if eos else None)
        return self._ll

    def compile(self, spec: ConstraintSpec) -> Constraint:
        with self._lock:
            hit = self._cache.get(spec)
            if hit is not None:
                self._cache.move_to_end(spec)
                return hit
            tokenizer = self._tokenizer()
        grammar = _grammar(spec)
        is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar, tokenizer)
        if is_error:
            first = " ".join(messages[0].split()) if messages else "rejected"
            raise InvalidConstraint(f"invalid {spec.kind.replace('_', ' ')}: {first[:300]}",
                                    spec.param)
        template = LLMatcher(tokenizer, grammar, log_level=0)
        if template.is_error():
            raise InvalidConstraint(f"invalid {spec.kind.replace('_', ' ')}: "
                                    f"{template.get_error()}", spec.param)
        constraint = Constraint(spec, grammar, template)
        with self._lock:
            self._cache[spec] = constraint
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return constraint

    def cached(self) -> int:
        return len(self._cache)
