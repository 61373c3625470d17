"""Tool-call grammars compile in the structured-output module and admit exactly the
family's calls of the offered tools: required, named, parallel or one, auto (free text
until the family's marker), and after reasoning."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.chat.errors import BudgetUnsupported, ToolChoiceError
from app.chat.grammar import (
    ReasoningSpec,
    added_token_ids,
    chat_grammar,
    json_answer,
)
from app.chat.registry import TOOL_PARSERS
from app.chat.tool_constraints import chosen_tools, tool_call_rules
from app.structured import ConstraintCompiler, ConstraintSpec
from app.tokenizer import Tokenizer
from tests.chat.families import save_family_tokenizer
from tests.chat.test_templates import TOOLS

CALLS = {  # family -> (two calls, a call with a wrong argument name)
    "hermes": ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
               '</tool_call>\n<tool_call>\n{"name": "now", "arguments": {}}\n</tool_call>',
               '<tool_call>\n{"name": "get_weather", "arguments": {"town": "Paris"}}\n'
               '</tool_call>'),
    "llama3_json": ('{"name": "get_weather", "parameters": {"city": "Paris"}}; '
                    '{"name": "now", "parameters": {}}',
                    '{"name": "get_weather", "arguments": {"city": "Paris"}}'),
    "mistral": ('[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}, '
                '{"name": "now", "arguments": {}}]',
                '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": 3}}]'),
}
ONE_CALL = {
    "hermes": '<tool_call>\n{"name": "now", "arguments": {}}\n</tool_call>',
    "llama3_json": '{"name": "now", "parameters": {}}',
    "mistral": '[TOOL_CALLS][{"name": "now", "arguments": {}}]',
}
FAMILY_OF = {"hermes": "qwen3", "llama3_json": "llama3_1", "mistral": "mistral_v0_3"}


class Checker:
    """Compiles grammars for one tokenizer and says whether a text is a complete match."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.compiler = ConstraintCompiler(tokenizer, tokenizer.vocab_size)
        self.ids = added_token_ids(tokenizer.backend.get_added_tokens_decoder())

    def grammar(self, parser: str, tool_choice: Any, parallel: bool = True,
                reasoning: ReasoningSpec | None = None) -> str | None:
        rules = tool_call_rules(TOOL_PARSERS[parser].syntax, TOOLS, tool_choice, parallel,
                                self.ids)
        return chat_grammar(rules, reasoning, self.ids)

    def accepts(self, grammar: str | None, text: str) -> bool:
        assert grammar is not None
        matcher = self.compiler.compile(ConstraintSpec("grammar", grammar, "tools")).new_matcher()
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return bool(matcher.try_consume_tokens(ids) == len(ids) and matcher.is_accepting())


@pytest.fixture(scope="module")
def checker(tmp_path_factory: pytest.TempPathFactory, tokenizer: Tokenizer) -> Any:
    made: dict[str, Checker] = {}

    def make(family: str) -> Checker:
        if family not in made:
            directory: Path = tmp_path_factory.mktemp(family)
            made[family] = Checker(save_family_tokenizer(family, tokenizer, directory))
        return made[family]

    return make


@pytest.mark.parametrize("parser", sorted(CALLS))
def test_required_named_and_single_calls(parser: str, checker: Any) -> None:
    check = checker(FAMILY_OF[parser])
    two, wrong = CALLS[parser]
    required = check.grammar(parser, "required")
    assert check.accepts(required, two)
    assert check.accepts(required, ONE_CALL[parser])
    assert not check.accepts(required, wrong)
    assert not check.accepts(required, "Sure, here is the weather.")
    if parser == "mistral":  # v0.3 writes a space after the marker
        assert check.accepts(required, ONE_CALL[parser].replace("]", "] ", 1))
    single = check.grammar(parser, "required", parallel=False)
    assert check.accepts(single, ONE_CALL[parser]) and not check.accepts(single, two)
    named = check.grammar(parser, {"type": "function", "function": {"name": "now"}})
    assert check.accepts(named, ONE_CALL[parser]) and not check.accepts(named, two)


@pytest.mark.parametrize("parser", ["hermes", "mistral"])
def test_auto_is_free_text_until_a_call_starts(parser: str, checker: Any) -> None:
    check = checker(FAMILY_OF[parser])
    auto = check.grammar(parser, "auto")
    two, wrong = CALLS[parser]
    assert check.accepts(auto, "Plain answer, no call.")
    assert check.accepts(auto, "Let me look that up. " + two)
    assert not check.accepts(auto, "Let me look that up. " + wrong)


def test_auto_without_a_marker_and_none_leave_decoding_free(checker: Any) -> None:
    check = checker("llama3_1")
    assert check.grammar("llama3_json", "auto") is None
    assert check.grammar("hermes", "none") is None


def test_markers_that_are_plain_text(tokenizer: Tokenizer) -> None:
    """A vocabulary without <tool_call> / <think> tokens: the markers are text, and auto's
    trigger and the reasoning's end are found lazily."""
    check = Checker(tokenizer)
    assert "<tool_call>" not in check.ids
    assert check.accepts(check.grammar("hermes", "required"), CALLS["hermes"][0])
    auto = check.grammar("hermes", "auto")
    assert check.accepts(auto, "text <tool_c then " + CALLS["hermes"][0] + " and more")
    assert not check.accepts(auto, "text " + CALLS["hermes"][1])
    thinking = check.grammar("hermes", "required", reasoning=ReasoningSpec(opened=True))
    assert check.accepts(thinking, "hmm </thin> ok\n</think>\n\n" + ONE_CALL["hermes"])
    assert not check.accepts(thinking, "hmm\n</think>\n\nNo call.")


@pytest.mark.parametrize("opened", [False, True])
def test_constraint_applies_after_reasoning(opened: bool, checker: Any) -> None:
    check = checker("qwen3")
    grammar = check.grammar("hermes", "required", reasoning=ReasoningSpec(opened=opened))
    thought = "Weather needs a call.\n</think>\n\n"
    assert check.accepts(grammar, ("" if opened else "<think>\n") + thought + CALLS["hermes"][0])
    assert not check.accepts(grammar, ("" if opened else "<think>\n") + thought + "It is sunny.")
    if not opened:  # thinking is optional when the prompt did not open it
        assert check.accepts(grammar, ONE_CALL["hermes"])


def test_tool_choice_checks() -> None:
    assert chosen_tools(TOOLS, None) == ("auto", TOOLS)
    assert chosen_tools([], None) == ("none", [])
    assert chosen_tools(TOOLS, {"type": "function", "function": {"name": "now"}}) == (
        "required", [TOOLS[1]])
    for bad, message in [("sometimes", "not one of"), ({"type": "function"}, "function.name"),
                         ({"type": "function", "function": {"name": "nope"}}, "not in")]:
        with pytest.raises(ToolChoiceError, match=message):
            chosen_tools(TOOLS, bad)
    with pytest.raises(ToolChoiceError, match="needs `tools`"):
        chosen_tools([], "required")


def test_a_description_holding_gbnf_syntax_stays_lark() -> None:
    """`::=` in a tool's description must not make the grammar read as GBNF."""
    tools = [{"type": "function", "function": {
        "name": "f", "description": "rule ::= x",
        "parameters": {"type": "object", "properties": {"a": {"description": "b ::= c"}}}}}]
    rules = tool_call_rules(TOOL_PARSERS["hermes"].syntax, tools, "required")
    assert rules is not None and "::=" not in "".join(rules)


def test_thinking_budget_forces_the_end_of_reasoning(checker: Any) -> None:
    """After `budget` reasoning tokens the close tag is the only token allowed; the answer
    after it is free (no other constraint)."""
    check = checker("qwen3")
    for opened in (True, False):
        grammar = chat_grammar(None, ReasoningSpec(opened=opened, budget=4), check.ids)
        assert grammar is not None
        matcher = check.compiler.compile(
            ConstraintSpec("grammar", grammar, "reasoning")).new_matcher()
        if not opened:
            assert matcher.consume_tokens(check.tokenizer.encode("<think>"))
        thought = check.tokenizer.encode(" one two three four five six")
        assert matcher.try_consume_tokens(thought) == 4  # the fifth is refused
        assert matcher.compute_ff_tokens() == [check.ids["</think>"]]
    assert chat_grammar(None, ReasoningSpec(), check.ids) is None  # no budget, no answer rule
    assert chat_grammar(None, None, check.ids) is None


def test_thinking_budget_needs_the_close_tag_to_be_a_token(tokenizer: Tokenizer) -> None:
    with pytest.raises(BudgetUnsupported, match="one token"):
        chat_grammar(None, ReasoningSpec(budget=4), Checker(tokenizer).ids)


def test_free_text_lets_other_added_tokens_through(checker: Any) -> None:
    """llguidance treats every added token as special, out of any text lexeme: free parts
    of a grammar must still let the model write them (Qwen3's <think> before an auto
    answer, a <tool_call> mentioned while reasoning), but not the token that ends the part
    or the trigger."""
    check = checker("qwen3")
    auto = check.grammar("hermes", "auto")
    assert check.accepts(auto, "<think>\nok\n</think>\n\nPlain answer.")
    thinking = check.grammar("hermes", "required", reasoning=ReasoningSpec(opened=True))
    assert check.accepts(thinking, "Maybe <tool_call> now?\n</think>\n\n" + ONE_CALL["hermes"])
    budgeted = chat_grammar(None, ReasoningSpec(opened=True, budget=50), check.ids)
    assert check.accepts(budgeted, "Short.\n</think>\n\nAnswer with <tool_call> text.")


def test_json_answer_after_reasoning(checker: Any) -> None:
    check = checker("qwen3")
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
              "additionalProperties": False}
    grammar = chat_grammar(json_answer(schema), ReasoningSpec(opened=True), check.ids)
    assert check.accepts(grammar, 'Count.\n</think>\n\n{"n": 3}')
    assert not check.accepts(grammar, "Count.\n</think>\n\nthree")


def test_arguments_hold_only_declared_properties_unless_allowed(checker: Any) -> None:
    check = checker("qwen3")
    open_tools = [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "integer"}}}}}]
    rules = tool_call_rules(TOOL_PARSERS["hermes"].syntax, open_tools, "required", True,
                            check.ids)
    grammar = chat_grammar(rules, None, check.ids)
    call = '<tool_call>\n{{"name": "f", "arguments": {}}}\n</tool_call>'
    assert check.accepts(grammar, call.format('{"a": 1}'))
    assert not check.accepts(grammar, call.format('{"a": 1, "b": 2}'))
    open_tools[0]["function"]["parameters"]["additionalProperties"] = True
    rules = tool_call_rules(TOOL_PARSERS["hermes"].syntax, open_tools, "required", True,
                            check.ids)
    assert check.accepts(chat_grammar(rules, None, check.ids), call.format('{"a": 1, "b": 2}'))
