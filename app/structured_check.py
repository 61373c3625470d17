"""The constraint compile check's child process (`python -m app.structured_check FILE`),
long-lived, killed when a check runs past its time limit (the server's side, which starts,
times and restarts it, is app/structured_checker.py).

llguidance's work is Rust code that a thread cannot interrupt: a compile abandoned by
`asyncio.wait_for` kept its thread (and a core) busy until it finished, which for a
JSON Schema with 10,000 optional properties is about 20 s (the cost grows with the square
of their number). llguidance's own limits (`LLParserLimits`: lexer fuel, grammar size,
lexer states) count work, not time; that schema stays under all of them, so they cannot
enforce `--structured-output-timeout`.

So the whole compile (source -> grammar, validation against the tokenizer, building the
lexer and parser) runs first in this child process, which is killed when the time is
up. Only a grammar that compiled there within the limit is compiled again in the server
(the same deterministic work, so it is bounded by the same limit); that second compile is
what the engine's matchers come from (a matcher cannot cross processes).

Protocol: FILE holds a `TokenizerSpec`; once llguidance's tokenizer is built from it (once
per child) the child writes `{"ready": true}`. Then, one JSON line each way per check: a
`CheckRequest` on stdin, `{"grammar": text}` or `{"error": message}` on stdout; the child
ends when its stdin closes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TypedDict

from llguidance import LLMatcher, LLTokenizer

from app.structured_grammar import GrammarError, grammar_for


class TokenizerSpec(TypedDict):
    """What the child builds llguidance's tokenizer from (given to it as a file)."""

    tokenizer_json: str  # the `tokenizers` library's tokenizer.json text
    n_vocab: int
    eos_token: int | None


class CheckRequest(TypedDict):
    kind: str
    value: str
    strict: bool


class CheckTimeout(Exception):
    """The check did not finish within the limit (the child was killed if it had begun)."""


class CheckFailed(Exception):
    """The source does not compile; the message is llguidance's (or ours)."""


def compile_grammar(tokenizer: LLTokenizer, kind: str, value: str, strict: bool) -> str:
    """The checked grammar of a constraint; CheckFailed with the reason otherwise."""
    try:
        grammar = grammar_for(kind, value, strict)
    except GrammarError as exc:
        raise CheckFailed(str(exc)) from None
    label = kind.replace("_", " ")
    is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar, tokenizer)
    if is_error:
        first = " ".join(messages[0].split()) if messages else "rejected"
        raise CheckFailed(f"invalid {label}: {first[:300]}")
    matcher = LLMatcher(tokenizer, grammar, log_level=0)
    if matcher.is_error():
        raise CheckFailed(f"invalid {label}: {matcher.get_error()[:300]}")
    return grammar


def _answer(message: dict[str, str | bool]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main() -> None:
    spec: TokenizerSpec = json.loads(Path(sys.argv[1]).read_text())
    tokenizer = LLTokenizer(spec["tokenizer_json"], n_vocab=spec["n_vocab"],
                            eos_token=spec["eos_token"])
    _answer({"ready": True})
    while line := sys.stdin.readline():  # until the server closes our stdin
        request: CheckRequest = json.loads(line)
        try:
            answer: dict[str, str | bool] = {"grammar": compile_grammar(
                tokenizer, request["kind"], request["value"], request["strict"])}
        except CheckFailed as exc:
            answer = {"error": str(exc)}
        _answer(answer)


if __name__ == "__main__":
    main()
