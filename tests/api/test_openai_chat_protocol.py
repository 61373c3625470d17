"""Translation between OpenAI chat shapes and the internal chat path (app/chat)."""

from __future__ import annotations

from app.api.chat_pipeline import ChatAnswers
from app.api.protocols.openai_chat import (
    chat_input,
    chat_options,
    delta_payload,
    finish_reason,
    message_payload,
    stream_delta,
    whole_message,
)
from app.api.schemas import ChatCompletionRequest
from app.chat.hermes import HermesToolParser
from app.chat.plan import ChatPlan
from app.chat.types import ChatDelta, ParsedMessage, ToolCall, ToolCallDelta


def test_stream_delta_shapes() -> None:
    first = ToolCallDelta(0, id="call_1", name="now")
    args = ToolCallDelta(0, arguments='{"tz": "UTC"}')
    assert delta_payload(ChatDelta("Hi", "hm", (first, args))) == {
        "reasoning_content": "hm", "content": "Hi", "tool_calls": [
            {"index": 0, "id": "call_1", "type": "function",
             "function": {"name": "now", "arguments": ""}},
            {"index": 0, "function": {"arguments": '{"tz": "UTC"}'}}]}
    assert delta_payload(ChatDelta()) == {}


def test_message_shapes_and_finish_reason() -> None:
    calls = [ToolCall("call_1", "now", "{}")]
    assert message_payload(ParsedMessage("", "", calls), reasoning=False) == {
        "role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "now", "arguments": "{}"}}]}
    assert message_payload(ParsedMessage("4", "2+2", []), reasoning=True) == {
        "role": "assistant", "content": "4", "reasoning_content": "2+2"}
    assert message_payload(ParsedMessage(), reasoning=False)["content"] == ""
    assert finish_reason("stop", True) == "tool_calls"
    assert finish_reason("length", True) == "length"
    assert finish_reason("stop", False) == "stop"


def test_request_fields_become_chat_options() -> None:
    body = ChatCompletionRequest.model_validate({
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "now",
                                                    "parameters": {"type": "object"}}}],
        "tool_choice": {"type": "function", "function": {"name": "now"}},
        "parallel_tool_calls": False, "chat_template_kwargs": {"enable_thinking": False},
        "thinking_budget": 64, "response_format": {"type": "json_object"},
        "max_completion_tokens": 5, "temperature": 0.5})
    options = chat_options(body)
    assert options.tools == [{"type": "function", "function": {
        "name": "now", "parameters": {"type": "object"}}}]
    assert options.tool_choice == {"type": "function", "function": {"name": "now"}}
    assert not options.parallel_tool_calls and options.reasoning_budget == 64
    assert options.template_kwargs == {"enable_thinking": False}
    chat = chat_input(body)
    assert chat.options == options and chat.sampling is body
    assert chat.structured is not None and chat.structured.kind == "json_object"
    assert chat.max_tokens == 5 and chat.max_tokens_param == "max_completion_tokens"
    assert chat.messages == [{"role": "user", "content": "hi"}]
    plain = ChatCompletionRequest.model_validate({"messages": [{"role": "user",
                                                                "content": "hi"}]})
    assert chat_options(plain).parallel_tool_calls and chat_options(plain).tools == []


def test_answer_parsers_stream_and_whole_and_count_failures() -> None:
    plan = ChatPlan(prompt="", grammar=None, skip_special_tokens=True,
                    tool_parser=HermesToolParser, reasoning_parser=None,
                    prompt_opened_reasoning=False, tool_choice="auto")
    failures: list[int] = []
    answers = ChatAnswers(plan, on_malformed=failures.append)
    text = 'Hi <tool_call>{"name": "now", "arguments": {}}</tool_call><tool_call>{bad</tool_call>'
    message, finish = whole_message(answers, text, "stop")
    # whitespace around a valid call is its layout; the malformed one is content
    assert finish == "tool_calls" and message["content"] == "Hi<tool_call>{bad</tool_call>"
    assert failures == [1]
    first, reason = stream_delta(answers, 0, text[:20], None)
    assert reason is None and first == {"content": "Hi"} and not answers.made_calls(0)
    rest, reason = stream_delta(answers, 0, text[20:], "stop")
    assert reason == "tool_calls" and rest["tool_calls"][0]["function"]["name"] == "now"
    assert failures == [1, 1] and answers.made_calls(0)
    # the protocol-neutral side: the stream's deltas add up to the whole message
    neutral = ChatAnswers(plan, on_malformed=failures.append)
    pieces = [neutral.stream(0, text[i:i + 7], i + 7 >= len(text))
              for i in range(0, len(text), 7)]
    streamed, whole = ParsedMessage.from_deltas(pieces), neutral.whole(text)
    assert streamed.content == whole.content == "Hi<tool_call>{bad</tool_call>"
    assert [(c.name, c.arguments) for c in streamed.tool_calls] == [
        (c.name, c.arguments) for c in whole.tool_calls] == [("now", "{}")]
    plain = ChatAnswers(ChatPlan("", None, True, None, None, False, "none"), failures.append)
    assert not plain.parsing
    assert stream_delta(plain, 0, "x", None) == ({"content": "x"}, None)
    assert whole_message(plain, "x", "stop") == ({"content": "x"}, "stop")
