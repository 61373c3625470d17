"""Chat templates with tools render as transformers renders them (each family's real
template), plus the fallback for templates that know no tools and Mistral's id rule."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from jinja2 import TemplateError

from app.chat.ids import as_mistral_id
from app.chat.jinja import compile_template
from app.chat.registry import tool_parser_for_template
from app.chat.templates import render_chat, template_messages
from app.tokenizer import Tokenizer, TokenizerError
from app.train.bpe import CHAT_TEMPLATE
from tests.chat.families import FAMILIES, save_family_tokenizer

TOOLS: list[dict[str, Any]] = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather in a city.",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "description": "City name, e.g. Zürich"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"]}}},
    {"type": "function", "function": {
        "name": "now", "description": "The time.",
        "parameters": {"type": "object", "properties": {}}}},
]


def conversation(call_id: str) -> list[dict[str, Any]]:
    """A two-turn tool loop as an OpenAI client sends it: arguments as JSON text, nulls."""
    return [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Weather in Zürich?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call_id, "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Zürich"}'}}]},
        {"role": "tool", "tool_call_id": call_id, "name": "get_weather",
         "content": '{"temperature": 21}'},
    ]


def transformers_shape(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same conversation written the way transformers' docs ask: arguments as dicts
    (and content "" beside calls: Qwen3's template fails on a missing one)."""
    out = copy.deepcopy(messages)
    for message in out:
        if message["role"] == "assistant" and message["content"] is None:
            message["content"] = ""
        for call in message.get("tool_calls") or []:
            call["function"]["arguments"] = json.loads(call["function"]["arguments"])
    return out


@pytest.fixture(scope="module")
def family_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: Tokenizer) -> Any:
    made: dict[str, Path] = {}

    def make(name: str) -> Path:
        if name not in made:
            made[name] = tmp_path_factory.mktemp(name)
            save_family_tokenizer(name, tokenizer, made[name])
        return made[name]

    return make


def reference(directory: Path) -> Any:
    from transformers import PreTrainedTokenizerFast

    logging.getLogger("transformers").setLevel(logging.ERROR)
    return PreTrainedTokenizerFast.from_pretrained(directory)


# (family, call id the template accepts)
CASES = [("qwen2_5", "call_Ab3xYz"), ("llama3_1", "call_Ab3xYz"),
         ("mistral_v0_3", "Ab3xYz789"), ("qwen3", "call_Ab3xYz")]


@pytest.mark.parametrize(("family", "call_id"), CASES)
def test_tools_tool_calls_and_results_render_as_in_transformers(
        family: str, call_id: str, family_dir: Any) -> None:
    directory = family_dir(family)
    ours = Tokenizer.from_dir(directory)
    hf = reference(directory)
    messages = conversation(call_id)
    kwargs = {"date_string": "26 Jul 2024"}  # Llama 3.1 prints today's date otherwise
    expected = hf.apply_chat_template(transformers_shape(messages), tools=TOOLS,
                                      tokenize=False, add_generation_prompt=True, **kwargs)
    assert render_chat(ours, messages, TOOLS, kwargs) == expected
    # the tools and the call really are in the prompt (not a template that ignores them)
    assert "get_weather" in expected and "Zürich" in expected and "21" in expected
    # and the plain tokenizer call, given transformers' shape, is the same
    assert ours.apply_chat_template(transformers_shape(messages), tools=TOOLS,
                                    **kwargs) == expected
    assert tool_parser_for_template(ours.chat_template) == FAMILIES[family].tool_parser


def test_llama_template_reads_todays_date_from_strftime_now(family_dir: Any) -> None:
    directory = family_dir("llama3_1")
    messages = [{"role": "user", "content": "hi"}]
    expected = reference(directory).apply_chat_template(messages, tools=TOOLS, tokenize=False,
                                                        add_generation_prompt=True)
    assert render_chat(Tokenizer.from_dir(directory), messages, TOOLS) == expected


def test_chat_template_kwargs_reach_the_template(family_dir: Any) -> None:
    """enable_thinking=False makes Qwen3's prompt close an empty <think> block."""
    directory = family_dir("qwen3")
    ours, hf = Tokenizer.from_dir(directory), reference(directory)
    messages = [{"role": "user", "content": "2+2?"}]
    for kwargs in ({}, {"enable_thinking": False}, {"enable_thinking": True}):
        expected = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                          **kwargs)
        assert render_chat(ours, messages, template_kwargs=kwargs) == expected
    assert render_chat(ours, messages, template_kwargs={"enable_thinking": False}).endswith(
        "<think>\n\n</think>\n\n")


def test_reasoning_in_history_is_given_under_each_name(family_dir: Any) -> None:
    """transformers hands a message's reasoning to templates as reasoning_content (Qwen3
    reads it) whichever of reasoning_content / reasoning / thinking the caller used."""
    directory = family_dir("qwen3")
    ours, hf = Tokenizer.from_dir(directory), reference(directory)
    for key in ("reasoning_content", "reasoning", "thinking"):
        messages = [{"role": "user", "content": "2+2?"},
                    {"role": "assistant", "content": "4", key: "two and two"}]
        expected = hf.apply_chat_template(messages, tokenize=False)
        assert ours.apply_chat_template(messages, add_generation_prompt=False) == expected
        assert "two and two" in expected


def test_mistral_history_ids_become_nine_characters(family_dir: Any) -> None:
    """A client's `call_...` ids make Mistral's template raise; rendered for Mistral they
    map to 9 characters, the call and its result to the same ones."""
    ours = Tokenizer.from_dir(family_dir("mistral_v0_3"))
    messages = conversation("call_5f1c2a9e0b7d4c3e")
    with pytest.raises(TokenizerError, match="length 9"):
        render_chat(ours, messages, TOOLS)
    short = as_mistral_id("call_5f1c2a9e0b7d4c3e")
    assert len(short) == 9 and short.isalnum() and as_mistral_id(short) == short
    text = render_chat(ours, messages, TOOLS, history_id=as_mistral_id)
    assert text.count(f'"{short}"') == 2  # the call's "id" and the result's "call_id"


def test_template_without_tools_gets_them_in_a_system_message(tokenizer: Tokenizer) -> None:
    plain = Tokenizer(backend=tokenizer.backend, chat_template=CHAT_TEMPLATE)
    assert not plain.template_knows("tools")
    text = render_chat(plain, conversation("call_1"), TOOLS)
    system = text.split("<|im_end|>")[0]
    assert system.startswith("<|im_start|>system\nYou are terse.\n\n# Tools")
    assert json.dumps(TOOLS[0]["function"], ensure_ascii=False, separators=(",", ":")) in system
    assert "<tool_call>" in system  # the syntax the hermes parser reads
    assert ('<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": '
            '{"city": "Zürich"}}\n</tool_call><|im_end|>') in text
    assert ('<|im_start|>user\n<tool_response>\n{"temperature": 21}\n</tool_response>'
            '<|im_end|>') in text
    assert tool_parser_for_template(plain.chat_template) == "hermes"
    # no system message of its own: one is added
    text = render_chat(plain, [{"role": "user", "content": "hi"}], TOOLS)
    assert text.startswith("<|im_start|>system\n# Tools")


def test_template_messages_leaves_the_request_alone() -> None:
    messages = conversation("call_1")
    before = copy.deepcopy(messages)
    shaped = template_messages(messages)
    assert messages == before
    assert shaped[2]["tool_calls"][0]["function"]["arguments"] == {"city": "Zürich"}
    bad = [{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]
    assert template_messages(bad)[0]["tool_calls"][0]["function"]["arguments"] == "{oops"


def test_environment_matches_transformers_helpers() -> None:
    """tojson's options, dict(), loop controls, {% generation %}, and namespaces that
    refuse underscore attributes, as in transformers' environment."""
    render = lambda source, **ctx: compile_template(source).render(**ctx)  # noqa: E731
    assert render("{{ x | tojson }}", x={"b": "é<>", "a": 1}) == '{"b": "é<>", "a": 1}'
    assert render("{{ x | tojson(indent=2, sort_keys=true) }}", x={"b": 1, "a": 2}) == (
        '{\n  "a": 2,\n  "b": 1\n}')
    assert render("{{ x | tojson(separators=(',', ':')) }}", x=[1, 2]) == "[1,2]"
    assert render("{{ x | tojson(ensure_ascii=true) }}", x="é") == '"\\u00e9"'
    assert render("{{ dict(a=1) | tojson }}") == '{"a": 1}'
    assert render("{% for i in [1, 2, 3] %}{% if i == 2 %}{% break %}{% endif %}{{ i }}"
                  "{% endfor %}") == "1"
    assert render("{% generation %}kept{% endgeneration %}") == "kept"
    assert render("{% set ns = namespace(n=1) %}{% set ns.n = 2 %}{{ ns.n }}") == "2"
    with pytest.raises(TemplateError):
        render("{% set ns = namespace(_x=1) %}")
    with pytest.raises(TemplateError):
        render("{{ messages.__class__ }}{{ ().__class__.__mro__ }}")
