"""Whole-answer grammars for llguidance (Lark dialect; app/structured.py compiles them as
`grammar` constraints): an `answer` rule (tool calls, a JSON schema, or free text) behind
the model's reasoning, and the thinking budget.

With a reasoning parser the grammar lets the model think first (free text up to the
closing tag; optional when the prompt did not open the tag) and constrains only the answer
after it. A thinking budget caps the reasoning at N tokens (`max_tokens` on the thought
rule): after N, the closing tag is the only token allowed, so it is forced. That needs the
closing tag to be one token of the vocabulary (as `</think>` is in Qwen3 and DeepSeek-R1);
otherwise a budget is refused.

Markers that are one added token of the vocabulary (`<think>`, `<tool_call>`) are matched as
that token (`<[id]>`): llguidance treats added tokens as special, so their text alone
would never match them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from app.chat.errors import BudgetUnsupported

ANY_TEXT = "/(.|\\n)*/"
# JSON on one line with ", " and ": " (as the families write calls, and as app/structured.py
# does): no free whitespace for a small model to loop on.
JSON_OPTIONS = {"x-guidance": {"whitespace_flexible": False, "item_separator": ", ",
                               "key_separator": ": "}}

TokenIds = Mapping[str, int]  # added token text -> id


@dataclass(frozen=True)
class ReasoningSpec:
    open_tag: str = "<think>"
    close_tag: str = "</think>"
    opened: bool = False  # the prompt already ends inside the open tag
    budget: int | None = None  # most reasoning tokens, then the close tag is forced


def added_token_ids(tokens: Mapping[int, Any]) -> dict[str, int]:
    """Added-token text -> id, from tokenizers' get_added_tokens_decoder()."""
    return {str(getattr(token, "content", token)): int(i) for i, token in tokens.items()}


def piece(text: str, token_ids: TokenIds) -> str:
    """A literal: its added token if it is one, else its text."""
    return f"<[{token_ids[text]}]>" if text in token_ids else json.dumps(text)


def pieces(texts: Sequence[str], token_ids: TokenIds) -> str:
    return " ".join(piece(text, token_ids) for text in texts)


def json_value(schema: Mapping[str, Any]) -> str:
    """`%json {...}` for a schema, one-line JSON. `::=` would make app/structured.py read the
    grammar as GBNF; `\\u003d` is the same JSON."""
    text = json.dumps({**schema, **JSON_OPTIONS}, ensure_ascii=False)
    return "%json " + text.replace("::=", "::\\u003d")


def free_text(name: str, token_ids: TokenIds, exclude: frozenset[str] = frozenset()
              ) -> list[str]:
    """Rule `name`: any text, and any added token but those in `exclude`. A text lexeme
    never holds an added token (llguidance treats them all as special), so a free answer
    that is only text would forbid, say, Qwen3's `<think>`. Pass token_ids without the
    end-of-sequence tokens: those end the answer rather than belong to it."""
    others = sorted(i for text, i in token_ids.items() if text not in exclude)
    if not others:
        return [f"{name}: {ANY_TEXT}"]
    return [f"{name}: ({name}_text | {name}_token)*", f"{name}_text: /(.|\\n)+/",
            f"{name}_token: <[{','.join(map(str, others))}]>"]


def free_answer(token_ids: TokenIds) -> list[str]:
    return free_text("answer", token_ids)


def json_answer(schema: Mapping[str, Any]) -> list[str]:
    return [f"answer: {json_value(schema)}"]


def chat_grammar(answer: list[str] | None, reasoning: ReasoningSpec | None,
                 token_ids: TokenIds) -> str | None:
    """The grammar for an answer's rules behind reasoning; None when nothing constrains."""
    if answer is None:
        if reasoning is None or reasoning.budget is None:
            return None
        answer = free_answer(token_ids)
    return "%llguidance {}\n" + "\n".join([*_start(reasoning, token_ids), *answer]) + "\n"


def _start(reasoning: ReasoningSpec | None, ids: TokenIds) -> list[str]:
    if reasoning is None:
        return ["start: answer"]
    limit = f"[max_tokens={reasoning.budget}]" if reasoning.budget is not None else ""
    rules = ["BLANK: /[ \\t\\r\\n]*/", f"THOUGHT: {ANY_TEXT}"]
    if reasoning.close_tag in ids:
        # free text ends at the close tag by itself (it cannot hold that token); after
        # `budget` tokens the tag is all that may follow. llguidance counts max_tokens on a
        # terminal only, so budgeted reasoning is text: other added tokens are refused in it
        if limit:
            rules.append(f"thought{limit}: THOUGHT")
        else:
            rules += free_text("thought", ids, frozenset({reasoning.close_tag}))
        rules.append(f"think_end: {piece(reasoning.close_tag, ids)}")
    elif limit:
        # llguidance counts max_tokens on a lexeme; a text tag would have to end a lazy one
        raise BudgetUnsupported(
            f"a thinking budget needs {reasoning.close_tag} to be one token of the "
            "model's vocabulary (it is in Qwen3's and DeepSeek-R1's)")
    else:
        rules += [f"thought[lazy]: THOUGHT {json.dumps(reasoning.close_tag)}",
                  "think_end: \"\""]
    if reasoning.opened:
        rules.append("start: thought think_end BLANK answer")
    else:
        rules.append(f"start: ({piece(reasoning.open_tag, ids)} thought think_end BLANK)? "
                     "answer")
    return rules
