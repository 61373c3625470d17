"""Translation between OpenAI chat shapes and the internal chat path (app/chat)."""

from __future__ import annotations

from app.api.protocols.openai_chat import (
    chat_options,
    delta_payload,
    finish_reason,
    message_payload,
)
from app.api.tool_fields import NamedToolChoice, ToolDefinition
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
    tool = ToolDefinition.model_validate(
        {"type": "function", "function": {"name": "now", "parameters": {"type": "object"}}})
    named = NamedToolChoice.model_validate({"type": "function", "function": {"name": "now"}})
    options = chat_options([tool], named, False, {"enable_thinking": False}, 64)
    assert options.tools == [{"type": "function", "function": {
        "name": "now", "parameters": {"type": "object"}}}]
    assert options.tool_choice == {"type": "function", "function": {"name": "now"}}
    assert not options.parallel_tool_calls and options.reasoning_budget == 64
    assert chat_options(None, None, None, None, None).parallel_tool_calls
