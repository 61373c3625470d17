"""plan_chat: the prompt, parsers, constraint and decoding a chat request gets, per family."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.chat.errors import AnswerFormatConflict, BudgetUnsupported, ToolChoiceError
from app.chat.hermes import HermesToolParser
from app.chat.mistral import MistralToolParser
from app.chat.plan import ChatOptions, plan_chat
from app.chat.reasoning import ThinkReasoningParser
from app.tokenizer import Tokenizer
from app.train.bpe import CHAT_TEMPLATE
from tests.chat.families import save_family_tokenizer
from tests.chat.test_templates import TOOLS, conversation

USER = [{"role": "user", "content": "Weather in Paris?"}]


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory, tokenizer: Tokenizer) -> Any:
    made: dict[str, Tokenizer] = {}

    def make(name: str) -> Tokenizer:
        if name not in made:
            directory: Path = tmp_path_factory.mktemp(name)
            made[name] = save_family_tokenizer(name, tokenizer, directory)
        return made[name]

    return make


def test_tools_offered_parsed_and_constrained(family: Any) -> None:
    tok = family("qwen2_5")
    plan = plan_chat(tok, USER, ChatOptions(tools=TOOLS, tool_choice="required"))
    assert "get_weather" in plan.prompt and plan.tool_parser is HermesToolParser
    assert plan.grammar is not None and "get_weather" in plan.grammar
    assert plan.skip_special_tokens and plan.reasoning_parser is None
    parser = plan.new_parser()
    assert parser is not None
    message = parser.parse('<tool_call>\n{"name": "now", "arguments": {}}\n</tool_call>')
    assert [c.name for c in message.tool_calls] == ["now"]
    auto = plan_chat(tok, USER, ChatOptions(tools=TOOLS))
    assert auto.tool_choice == "auto" and auto.grammar is not None  # constrained after <tool_call>


def test_tool_choice_none_offers_nothing(family: Any) -> None:
    plan = plan_chat(family("qwen2_5"), USER, ChatOptions(tools=TOOLS, tool_choice="none"))
    assert "get_weather" not in plan.prompt
    assert plan.tool_parser is None and plan.grammar is None and plan.new_parser() is None


def test_mistral_keeps_special_tokens_and_maps_history_ids(family: Any) -> None:
    plan = plan_chat(family("mistral_v0_3"), conversation("call_5f1c2a9e0b7d4c3e"),
                     ChatOptions(tools=TOOLS))
    assert plan.tool_parser is MistralToolParser and not plan.skip_special_tokens
    assert "call_5f1c2a9e0b7d4c3e" not in plan.prompt  # 9-character ids instead


def test_reasoning_and_budget(family: Any) -> None:
    tok = family("deepseek_r1")
    plan = plan_chat(tok, USER, ChatOptions(reasoning_budget=8), tool_parser="hermes",
                     reasoning_parser="auto")
    assert plan.reasoning_parser is ThinkReasoningParser and plan.prompt_opened_reasoning
    assert plan.grammar is not None and "max_tokens=8" in plan.grammar
    parser = plan.new_parser()
    assert parser is not None and parser.parse("hm\n</think>\n\n4").reasoning == "hm\n"
    free = plan_chat(tok, USER, ChatOptions(), reasoning_parser="auto")
    assert free.grammar is None  # no budget, no tools: nothing to constrain
    qwen3 = plan_chat(family("qwen3"), USER, ChatOptions(
        template_kwargs={"enable_thinking": False}), reasoning_parser="auto")
    assert not qwen3.prompt_opened_reasoning


def test_template_without_tools_falls_back_to_hermes(tokenizer: Tokenizer) -> None:
    plain = Tokenizer(backend=tokenizer.backend, chat_template=CHAT_TEMPLATE)
    plan = plan_chat(plain, USER, ChatOptions(tools=TOOLS))
    assert plan.tool_parser is HermesToolParser and "<tool_call>" in plan.prompt


def test_bad_requests_raise_domain_errors(family: Any, tokenizer: Tokenizer) -> None:
    with pytest.raises(ToolChoiceError):
        plan_chat(family("qwen2_5"), USER, ChatOptions(tools=TOOLS, tool_choice={
            "type": "function", "function": {"name": "missing"}}))
    plain = Tokenizer(backend=tokenizer.backend, chat_template="{{ '<think>' }}")
    with pytest.raises(BudgetUnsupported, match="one token"):
        plan_chat(plain, USER, ChatOptions(reasoning_budget=5), reasoning_parser="auto")
    with pytest.raises(BudgetUnsupported, match="needs a reasoning parser"):
        plan_chat(family("qwen2_5"), USER, ChatOptions(reasoning_budget=5),
                  reasoning_parser="auto")  # no <think> in Qwen2.5's template


def test_response_format_applies_after_the_reasoning(family: Any) -> None:
    tok = family("deepseek_r1")
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    plan = plan_chat(tok, USER, ChatOptions(answer_schema=schema), reasoning_parser="auto")
    assert plan.grammar is not None and "think_end BLANK answer" in plan.grammar
    assert '"n"' in plan.grammar
    with pytest.raises(AnswerFormatConflict, match="response_format"):
        plan_chat(tok, USER, ChatOptions(tools=TOOLS, tool_choice="required",
                                         answer_schema=schema), reasoning_parser="auto")
