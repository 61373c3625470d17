"""The <think> reasoning parser: reasoning apart from the answer, whether the model opens
<think> itself or the prompt did, with the same incremental contract as tool calls; and
reasoning followed by tool calls."""

from __future__ import annotations

import pytest

from app.chat.output import ChatOutputParser
from app.chat.reasoning import DeepSeekR1ReasoningParser, ThinkReasoningParser, starts_in_reasoning
from app.chat.registry import (
    REASONING_PARSERS,
    TOOL_PARSERS,
    reasoning_parser_for_template,
    resolve_reasoning_parser,
)
from app.chat.types import ParsedMessage, ToolCall
from tests.chat.families import FAMILIES, TEMPLATES
from tests.chat.streaming import byte_splits, counting_ids, parse_pieces

# (parser, prompt opened <think>, output, reasoning, content)
CASES = [
    ("qwen3", False, "<think>\nThe user greets.\n</think>\n\nHello! 👋", "\nThe user greets.\n",
     "Hello! 👋"),
    ("qwen3", False, "Hello without thinking.", "", "Hello without thinking."),
    ("qwen3", False, "  <think>x</think>y", "x", "y"),
    ("qwen3", False, "<thinking is a word>", "", "<thinking is a word>"),
    ("qwen3", False, "<think>cut off by max_tokens", "cut off by max_tokens", ""),
    ("qwen3", True, "Two and two.\n</think>\n\n4", "Two and two.\n", "4"),
    ("qwen3", True, "still thinking </thin", "still thinking </thin", ""),
    ("qwen3", False, "a</think>b", "", "a</think>b"),
    ("deepseek_r1", False, "Two and two.\n</think>\n\n4", "Two and two.\n", "4"),
    ("deepseek_r1", False, "<think>\nTwo.\n</think>\n\n4", "\nTwo.\n", "4"),
    ("deepseek_r1", True, "\n</think>\n\n4", "\n", "4"),
]


def maker(name: str, opened: bool, tools: str | None = None) -> ChatOutputParser:
    return ChatOutputParser(TOOL_PARSERS[tools](counting_ids()) if tools else None,
                            REASONING_PARSERS[name](opened))


@pytest.mark.parametrize(("name", "opened", "text", "reasoning", "content"), CASES)
def test_reasoning_apart_from_the_answer(name: str, opened: bool, text: str, reasoning: str,
                                         content: str) -> None:
    whole = maker(name, opened).parse(text)
    assert whole == ParsedMessage(content, reasoning, [])
    for pieces in byte_splits(text):
        assert parse_pieces(lambda: maker(name, opened), pieces) == whole, pieces


def test_reasoning_then_tool_calls() -> None:
    text = ('<think>\nI need the weather.\n</think>\n\nChecking.\n<tool_call>\n'
            '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>')
    expected = ParsedMessage("Checking.", "\nI need the weather.\n",
                             [ToolCall("call_0", "get_weather", '{"city": "Paris"}')])
    assert maker("qwen3", False, "hermes").parse(text) == expected
    for pieces in byte_splits(text):
        assert parse_pieces(lambda: maker("qwen3", False, "hermes"), pieces) == expected
    # a call written inside the reasoning is reasoning, not a call
    inside = '<think><tool_call>{"name": "x", "arguments": {}}</tool_call></think>ok'
    assert maker("qwen3", False, "hermes").parse(inside).tool_calls == []


def test_in_reasoning_tracks_the_state() -> None:
    parser = maker("qwen3", False)
    assert not parser.in_reasoning
    parser.feed("<think>hm")
    assert parser.in_reasoning
    parser.feed("</think>done")
    assert not parser.in_reasoning
    assert maker("deepseek_r1", False).in_reasoning


def test_prompt_opened_think_is_detected_from_the_rendered_prompt() -> None:
    assert starts_in_reasoning("<｜User｜>2+2?<｜Assistant｜><think>\n")
    assert not starts_in_reasoning("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert not starts_in_reasoning("<|im_start|>assistant\n")


def test_auto_picks_the_think_parser_from_the_template() -> None:
    for name in ("qwen3", "deepseek_r1"):
        template = (TEMPLATES / FAMILIES[name].template).read_text()
        assert reasoning_parser_for_template(template) == "qwen3"
    assert reasoning_parser_for_template((TEMPLATES / "qwen2_5_instruct.jinja").read_text()) is None
    assert resolve_reasoning_parser(None, "<think>") is None
    assert resolve_reasoning_parser("deepseek_r1", None) is DeepSeekR1ReasoningParser
    assert resolve_reasoning_parser("auto", "{{ '<think>' }}") is ThinkReasoningParser
