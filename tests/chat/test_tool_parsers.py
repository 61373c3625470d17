"""Tool-call parsers on recorded answers of each family: one call, several, text then a
call, malformed JSON, false starts; and the incremental contract: any split of the text,
at every byte, in any number of pieces, parses to exactly what the whole text parses to."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.chat.ids import as_mistral_id
from app.chat.output import ChatOutputParser
from app.chat.registry import REASONING_PARSERS, TOOL_PARSERS
from app.chat.types import ParsedMessage, ToolCall
from tests.chat.streaming import byte_splits, counting_ids, parse_pieces

W = '{"city": "Zürich"}'  # arguments as the parsers give them back
# (family, model output, expected content, expected calls as (name, arguments))
RECORDED: list[tuple[str, str, str, list[tuple[str, str]]]] = [
    # hermes: Qwen2.5 / Qwen3 / Hermes 2 Pro
    ("hermes", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Zürich"}}\n'
               '</tool_call>', "", [("get_weather", W)]),
    ("hermes", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Zürich"}}\n'
               '</tool_call>\n<tool_call>\n{"name": "now", "arguments": {}}\n</tool_call>',
     "", [("get_weather", W), ("now", "{}")]),
    ("hermes", 'Let me check that for you.\n\n<tool_call>\n{"name": "get_weather", '
               '"arguments": {"city": "Zürich"}}\n</tool_call>',
     "Let me check that for you.", [("get_weather", W)]),
    ("hermes", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Zür\n</tool_call>',
     '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Zür\n</tool_call>', []),
    ("hermes", "Use the <tool_call> tag to call, like <tool_call>this</tool_call>, ok?",
     "Use the <tool_call> tag to call, like <tool_call>this</tool_call>, ok?", []),
    ("hermes", 'I would write <tool_call', "I would write <tool_call", []),
    ("hermes", '<tool_call>\n{"name": "now", "arguments": {}}', "", [("now", "{}")]),
    ("hermes", '<tool_call>\n{"name": "now", "arguments": "{\\"tz\\": \\"UTC\\"}"}\n'
               '</tool_call>\n\nDone.', "Done.", [("now", '{"tz": "UTC"}')]),
    ("hermes", "<tool_call>\n{\"name\": \"Bob\"}\n</tool_call>",
     "<tool_call>\n{\"name\": \"Bob\"}\n</tool_call>", []),
    # llama3_json: Llama 3.1+
    ("llama3_json", '{"name": "get_weather", "parameters": {"city": "Zürich"}}', "",
     [("get_weather", W)]),
    ("llama3_json", '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Zürich"}}'
                    '; {"name": "now", "parameters": {}}', "",
     [("get_weather", W), ("now", "{}")]),
    ("llama3_json", 'Sure! <|python_tag|>{"name": "now", "parameters": {}}', "Sure!",
     [("now", "{}")]),
    ("llama3_json", '{"name": "get_weather", "parameters": {"city": "Zürich"}',
     '{"name": "get_weather", "parameters": {"city": "Zürich"}', []),
    ("llama3_json", '{"name": "Ada", "born": 1815} is a JSON object.',
     '{"name": "Ada", "born": 1815} is a JSON object.', []),
    ("llama3_json", 'A call looks like {"name": "now", "parameters": {}} in JSON.',
     'A call looks like {"name": "now", "parameters": {}} in JSON.', []),
    ("llama3_json", '{"name": "now", "parameters": {"fmt": "}{"}}; then text',
     "; then text", [("now", '{"fmt": "}{"}')]),
    # mistral: v0.3 / Nemo / Small
    ("mistral", '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Zürich"}}, '
                '{"name": "now", "arguments": {}}]', "", [("get_weather", W), ("now", "{}")]),
    ("mistral", 'Checking. [TOOL_CALLS][{"name": "now", "arguments": {}}]', "Checking.",
     [("now", "{}")]),
    ("mistral", '[{"name": "now", "arguments": {}}]', "", [("now", "{}")]),
    ("mistral", '[TOOL_CALLS] [{"name": "now", "arguments": {]', '[TOOL_CALLS] [{"name": "now", '
                '"arguments": {]', []),
    ("mistral", "[1] Smith, J. (2020). A study.", "[1] Smith, J. (2020). A study.", []),
    ("mistral", '[TOOL_CALLS] [{"name": "now", "arguments": {}}, {"nom": "x"}]',
     '[TOOL_CALLS] [{"name": "now", "arguments": {}}, {"nom": "x"}]', []),
]
IDS = [f"{family}-{i}" for i, (family, *_) in enumerate(RECORDED)]


def maker(family: str) -> ChatOutputParser:
    return ChatOutputParser(TOOL_PARSERS[family](counting_ids()))


@pytest.mark.parametrize(("family", "text", "content", "calls"), RECORDED, ids=IDS)
def test_recorded_answers_parse(family: str, text: str, content: str,
                                calls: list[tuple[str, str]]) -> None:
    whole = maker(family).parse(text)
    assert whole == ParsedMessage(content, "", [
        ToolCall(f"call_{i}", name, arguments) for i, (name, arguments) in enumerate(calls)])
    for call in whole.tool_calls:
        assert isinstance(json.loads(call.arguments), dict)


@pytest.mark.parametrize(("family", "text", "content", "calls"), RECORDED, ids=IDS)
def test_every_byte_split_parses_as_the_whole(family: str, text: str, content: str,
                                              calls: list[tuple[str, str]]) -> None:
    whole = maker(family).parse(text)
    for pieces in byte_splits(text):
        assert parse_pieces(lambda: maker(family), pieces) == whole, pieces


@settings(max_examples=60, deadline=None)
@given(case=st.sampled_from(RECORDED), cuts=st.lists(st.integers(0, 200), max_size=12))
def test_any_number_of_pieces_parses_as_the_whole(
        case: tuple[str, str, str, list[tuple[str, str]]], cuts: list[int]) -> None:
    family, text = case[0], case[1]
    points = sorted({min(c, len(text)) for c in cuts})
    pieces = [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]
    assert parse_pieces(lambda: maker(family), pieces) == maker(family).parse(text)


def test_one_character_at_a_time_streams_ids_names_then_arguments() -> None:
    """The stream's shape: content before a call as it comes; each call's first delta has
    its index, id and name (no arguments), the next its arguments."""
    text = 'Hi.\n<tool_call>\n{"name": "now", "arguments": {"tz": "UTC"}}\n</tool_call>'
    parser = maker("hermes")
    deltas = [parser.feed(char) for char in text] + [parser.finish()]
    assert "".join(d.content for d in deltas) == "Hi."
    assert deltas[2].content == "." and not any(d.tool_calls for d in deltas[:-2])
    pieces = [p for d in deltas for p in d.tool_calls]
    assert [(p.index, p.id, p.name, p.arguments) for p in pieces] == [
        (0, "call_0", "now", ""), (0, None, None, '{"tz": "UTC"}')]


def test_default_ids() -> None:
    openai_id = ChatOutputParser(TOOL_PARSERS["hermes"]()).parse(
        '<tool_call>{"name": "now", "arguments": {}}</tool_call>').tool_calls[0].id
    assert openai_id.startswith("call_") and len(openai_id) == 29 and openai_id[5:].isalnum()
    mistral_id = ChatOutputParser(TOOL_PARSERS["mistral"]()).parse(
        '[TOOL_CALLS][{"name": "now", "arguments": {}}]').tool_calls[0].id
    assert len(mistral_id) == 9 and mistral_id.isalnum()
    assert as_mistral_id(mistral_id) == mistral_id


@pytest.mark.parametrize(("family", "text", "malformed"), [
    ("hermes", '<tool_call>{"name": "a", "arguments": {}}</tool_call><tool_call>{oops'
               '</tool_call>', 1),
    ("hermes", "Use the <tool_call> tag, like <tool_call>this</tool_call>.", 1),
    ("hermes", "No call at all.", 0),
    ("llama3_json", '<|python_tag|>{"name": 1}', 1),
    ("llama3_json", "<|python_tag|>print(1)", 1),
    ("llama3_json", '{"name": "Ada", "born": 1815} is JSON.', 0),  # no marker: just prose
    ("mistral", '[TOOL_CALLS] [{"name": "now", "arguments": {]', 1),
    ("mistral", "[1] Smith.", 0),
])
def test_malformed_calls_are_counted(family: str, text: str, malformed: int) -> None:
    """Parse failures (for the metric): units that began with the call marker only."""
    parser = maker(family)
    parser.parse(text)
    assert parser.malformed_calls == malformed


# Pieces that answers are made of, markers and JSON fragments included, so that generated
# texts hit every state of every parser (partial markers, calls cut short, stray closers).
FRAGMENTS = ["<tool_call>", "</tool_call>", "<|python_tag|>", "[TOOL_CALLS]", "<think>",
             "</think>", '{"name": "f", "arguments": {"a": 1}}',
             '{"name": "g", "parameters": {}}', '[{"name": "h", "arguments": {}}]', "{", "}",
             "[", "]", '"', "\\", ";", " ", "\n", "<tool", "_call>", "text", "é🦊", "<", ">"]


@settings(max_examples=150, deadline=None)
@given(family=st.sampled_from(sorted(TOOL_PARSERS)),
       parts=st.lists(st.sampled_from(FRAGMENTS), max_size=14),
       cuts=st.lists(st.integers(0, 400), max_size=6),
       reasoning=st.sampled_from(["none", "qwen3", "qwen3 opened", "deepseek_r1"]))
def test_generated_answers_parse_the_same_in_any_pieces(
        family: str, parts: list[str], cuts: list[int], reasoning: str) -> None:
    """Made-up answers from the fragments above, cut anywhere: the same message as the
    whole; and without reasoning, an answer with no call is the text unchanged."""
    name, _, opened = reasoning.partition(" ")

    def make() -> ChatOutputParser:
        return ChatOutputParser(TOOL_PARSERS[family](counting_ids()),
                                REASONING_PARSERS[name](bool(opened))
                                if name != "none" else None)

    text = "".join(parts)
    points = sorted({min(c, len(text)) for c in cuts})
    pieces = [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]
    whole = make().parse(text)
    assert parse_pieces(make, pieces) == whole
    if not whole.tool_calls and name == "none":
        assert whole.content == text
