"""Structured output: constraints that make generated text parse (JSON Schema, JSON, regex,
choice, grammar), compiled by llguidance, the constraint engine vLLM and llama.cpp use.

A request's constraint is compiled once per (kind, canonical source, strict) and tokenizer
into a validated grammar and a template matcher; every completion of the request gets its
own copy of the template (a matcher is a parser state over the completion's tokens). The
engine's worker asks each matcher for the mask of allowed next tokens, applies it before
sampling (so `processed` logprobs reflect it; `raw` ones stay the model's), and feeds it
the sampled token. A preempted sequence keeps its matcher: its output tokens do not change
when its KV cache is recomputed, so neither does the parser state.

Kinds (the request fields that produce them are in app/api/structured_fields.py; the
source -> grammar rules, booleans and `strict` included, in app/structured_grammar.py):
  json_schema  a JSON Schema (llguidance's JSON Schema support; unsupported keywords are
               refused with llguidance's message)
  json_object  any JSON object
  regex        the whole output matches the regex
  choice       the output is exactly one of the strings
  grammar      a Lark grammar (llguidance's dialect), or GBNF (llama.cpp's; converted)

Compiling is bounded in time by running it first in a long-lived child process, one per
compiler, that is killed (and replaced) at the limit (app/structured_checker.py; why
llguidance's own limits cannot do that: app/structured_check.py). `close()` stops it.
"""

from __future__ import annotations

import contextlib
import functools
import json
from dataclasses import dataclass
from typing import Protocol

from llguidance import LLMatcher, LLTokenizer

from app.structured_check import CheckFailed, CheckTimeout, TokenizerSpec
from app.structured_checker import MAX_PENDING, CompileChecker
from app.tokenizer import Tokenizer

KINDS = ("json_schema", "json_object", "regex", "choice", "grammar")
CACHE_SIZE = 128  # compiled constraints kept per tokenizer


class InvalidConstraint(ValueError):
    """A schema, regex, grammar or choice list that cannot be compiled; the message names
    the problem (it becomes a 400)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.message, self.param = message, param


class ConstraintTooSlow(Exception):
    """A constraint that did not compile within the time limit (its compile was stopped)."""

    def __init__(self, kind: str, limit_s: float, param: str) -> None:
        super().__init__(f"the {kind.replace('_', ' ')} took longer than {limit_s:g} s to "
                         "compile")
        self.kind, self.limit_s, self.param = kind, limit_s, param


@dataclass(frozen=True)
class ConstraintSpec:
    kind: str  # one of KINDS
    value: str  # the schema as JSON text, the regex, the choices as a JSON list, the grammar
    param: str  # the request field it came from, for error messages
    strict: bool = False  # json_schema: objects admit only their listed properties


class Matcher(Protocol):
    """One completion's parser state (llguidance's LLMatcher), as the engine uses it."""

    def is_error(self) -> bool: ...

    def compute_bitmask(self) -> bytes:
        """One bit per vocabulary token (little-endian within a byte): allowed next."""
        ...

    def consume_token(self, sampled_token: int) -> bool: ...

    # speculative decoding: how many of these tokens the grammar accepts from the current
    # state (the state unchanged), several tokens at once, and stepping back n tokens
    def validate_tokens(self, tokens: list[int]) -> int: ...

    def consume_tokens(self, tokens: list[int]) -> bool: ...

    def rollback(self, num_tokens: int) -> bool: ...


@dataclass(frozen=True)
class Constraint:
    """A compiled constraint: hand each completion `new_matcher()`."""

    spec: ConstraintSpec
    grammar: str
    template: LLMatcher  # in its initial state

    def new_matcher(self) -> Matcher:
        return self.template.deep_copy()


def canonical(spec: ConstraintSpec) -> ConstraintSpec:
    """`spec` with what does not change its grammar taken out: the param (error messages
    only) and, for JSON sources, spacing (not key order: the order of `properties` is the
    order the output writes them in); the cache key."""
    value = spec.value
    if spec.kind in ("json_schema", "choice"):
        with contextlib.suppress(json.JSONDecodeError):  # left as given: compiling refuses it
            value = json.dumps(json.loads(value), separators=(",", ":"))
    return ConstraintSpec(spec.kind, value, "", spec.strict and spec.kind == "json_schema")


class ConstraintCompiler:
    """Compiles constraints against one tokenizer (vocabulary), each within `limit_s`
    seconds, and keeps the last CACHE_SIZE results (an lru_cache per compiler, so per
    vocabulary, keyed by the canonical spec). Thread-safe: compiling runs in worker
    threads, off the event loop. At most `max_pending` new constraints are checked or
    wait for their check at once (more: QueueFull). `close()` when done."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, limit_s: float = 10.0,
                 max_pending: int = MAX_PENDING) -> None:
        self._source = tokenizer
        self._vocab_size = vocab_size
        self.limit_s = limit_s
        self._checker = CompileChecker(self._tokenizer_spec, max_pending)
        self._compile_canonical = functools.lru_cache(maxsize=CACHE_SIZE)(self._compile)

    @functools.cached_property
    def _eos(self) -> int | None:
        return next(iter(self._source.eos_ids), None)

    @functools.cached_property
    def _tokenizer_json(self) -> str:
        return str(self._source.backend.to_str())

    @functools.cached_property
    def _tokenizer(self) -> LLTokenizer:
        return LLTokenizer(self._tokenizer_json, n_vocab=self._vocab_size, eos_token=self._eos)

    def compile(self, spec: ConstraintSpec) -> Constraint:
        """`spec` compiled; InvalidConstraint or ConstraintTooSlow (naming spec.param)."""
        try:
            grammar, template = self._compile_canonical(canonical(spec))
        except CheckFailed as exc:
            raise InvalidConstraint(str(exc), spec.param) from None
        except CheckTimeout:
            raise ConstraintTooSlow(spec.kind, self.limit_s, spec.param) from None
        return Constraint(spec, grammar, template)

    def _tokenizer_spec(self) -> TokenizerSpec:
        return {"tokenizer_json": self._tokenizer_json, "n_vocab": self._vocab_size,
                "eos_token": self._eos}

    def _compile(self, spec: ConstraintSpec) -> tuple[str, LLMatcher]:
        grammar = self._checker.check(
            {"kind": spec.kind, "value": spec.value, "strict": spec.strict}, self.limit_s)
        # It compiled in the child within the limit: the same work here is as bounded.
        template = LLMatcher(self._tokenizer, grammar, log_level=0)
        if template.is_error():
            raise CheckFailed(f"invalid {spec.kind.replace('_', ' ')}: "
                              f"{template.get_error()[:300]}")
        return grammar, template

    def cached(self) -> int:
        return self._compile_canonical.cache_info().currsize

    @property
    def checker_pid(self) -> int | None:
        """The compile check's child process (None until the first new constraint)."""
        return self._checker.pid

    def close(self) -> None:
        """Stop the compile check's child process; later new constraints are refused
        (EngineStopped), cached ones are still handed out."""
        self._checker.close()
