"""Compile a constraint in a child process that is killed at the time limit.

llguidance's work is Rust code that a thread cannot interrupt: a compile abandoned by
`asyncio.wait_for` kept its thread (and a core) busy until it finished, which for a
JSON Schema with 10,000 optional properties is about 20 s (the cost grows with the square
of their number). llguidance's own limits (`LLParserLimits`: lexer fuel, grammar size,
lexer states) count work, not time; that schema stays under all of them, so they cannot
enforce `--structured-output-timeout`.

So the whole compile (source -> grammar, validation against the tokenizer, building the
lexer and parser) runs first in `python -m app.structured_check`, which is killed when
the time is up. Only a grammar that compiled there within the limit is compiled again in
the server (the same deterministic work, so it is bounded by the same limit); that second
compile is what the engine's matchers come from (a matcher cannot cross processes).

Protocol: one JSON object on stdin (`CheckRequest`), one on stdout: `{"grammar": text}`
or `{"error": message}`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TypedDict

from llguidance import LLMatcher, LLTokenizer

from app.structured_grammar import GrammarError, grammar_for


class CheckRequest(TypedDict):
    tokenizer_json: str  # the `tokenizers` library's tokenizer.json text
    n_vocab: int
    eos_token: int | None
    kind: str
    value: str
    strict: bool


class CheckTimeout(Exception):
    """The compile did not finish within the limit (its process was killed)."""


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


def check_in_child(request: CheckRequest, limit_s: float) -> str:
    """`request` compiled in a child process within `limit_s` seconds: its grammar;
    CheckTimeout (the child is killed) or CheckFailed otherwise."""
    # The child imports this very `app` package, wherever the server found it.
    package_root = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(filter(None, (package_root, os.environ.get("PYTHONPATH"))))
    child = subprocess.Popen([sys.executable, "-m", "app.structured_check"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": path})
    try:
        out, err = child.communicate(json.dumps(request), timeout=limit_s)
    except subprocess.TimeoutExpired:
        raise CheckTimeout from None
    finally:
        # On time-out and on any other exit: the compile never outlives the request.
        child.kill()
        child.wait()
    try:
        answer = json.loads(out)
    except json.JSONDecodeError:
        raise CheckFailed(f"the constraint compiler exited with {child.returncode}: "
                          f"{err.strip()[-300:]}") from None
    if "error" in answer:
        raise CheckFailed(str(answer["error"]))
    return str(answer["grammar"])


def main() -> None:
    request: CheckRequest = json.loads(sys.stdin.read())
    tokenizer = LLTokenizer(request["tokenizer_json"], n_vocab=request["n_vocab"],
                            eos_token=request["eos_token"])
    try:
        answer = {"grammar": compile_grammar(tokenizer, request["kind"], request["value"],
                                             request["strict"])}
    except CheckFailed as exc:
        answer = {"error": str(exc)}
    sys.stdout.write(json.dumps(answer))


if __name__ == "__main__":
    main()
