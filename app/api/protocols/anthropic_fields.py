"""Anthropic Messages API request and response bodies (POST /v1/messages and
/v1/messages/count_tokens), as its SDK sends and reads them.

Whole request bodies forbid unknown fields (400 naming them, as everywhere here). Content
blocks and tools ignore fields they do not use (`cache_control`, `citations`, a tool
block's `caller`, ...): clients send assistant turns back as they got them, with fields
of their own. Each top-level field is implemented, accepted and ignored (IGNORED_FIELDS:
it changes nothing a local model computes) or refused with 400 (app/api/protocols/
anthropic_messages.py says why); README.md lists them all."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.api.schemas import MAX_STOP_CHARS

_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)
_LOOSE = ConfigDict(extra="ignore", allow_inf_nan=False)

# Accepted and ignored (README.md lists them, a test keeps the two in step).
IGNORED_FIELDS = ("metadata", "service_tier", "cache_control", "inference_geo",
                  "diagnostics", "user_profile_id", "workspace_id")


# ---------------------------------------------------------------------------- content


class TextBlock(BaseModel):
    model_config = _LOOSE
    type: Literal["text"]
    text: str


class ToolUseBlock(BaseModel):
    """A call the model made, sent back in an assistant turn."""

    model_config = _LOOSE
    type: Literal["tool_use"]
    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    input: dict[str, Any]


class ToolResultBlock(BaseModel):
    """The answer to a call, in a user turn: text, or text blocks."""

    model_config = _LOOSE
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: str | list[dict[str, Any]] = ""
    is_error: bool = False


class ThinkingBlock(BaseModel):
    model_config = _LOOSE
    type: Literal["thinking"]
    thinking: str
    signature: str = ""


class RedactedThinkingBlock(BaseModel):
    model_config = _LOOSE
    type: Literal["redacted_thinking"]
    data: str = ""


class MediaBlock(BaseModel):
    """Images and documents: accepted by the schema, refused with 400 (text models)."""

    model_config = _LOOSE
    type: Literal["image", "document"]


ContentBlock = Annotated[TextBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock
                         | RedactedThinkingBlock | MediaBlock, Field(discriminator="type")]


class InputMessage(BaseModel):
    model_config = _LOOSE
    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]


# ---------------------------------------------------------------------------- tools


class ToolDefinition(BaseModel):
    """A client tool ({name, description, input_schema}); a server tool (a `type` such as
    web_search_20250305, bash_20250124) passes the schema and is refused with 400."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    type: str | None = Field(None, description="null or \"custom\": a client tool; others "
                                               "(server tools) are refused")
    description: str | None = None
    input_schema: dict[str, Any] | None = Field(
        None, description="JSON Schema of the call's `input` (required for client tools)")
    # accepted and ignored on a client tool
    cache_control: dict[str, Any] | None = None
    strict: bool | None = None
    eager_input_streaming: bool | None = None
    defer_loading: bool | None = None
    input_examples: list[dict[str, Any]] | None = None
    allowed_callers: list[Any] | None = None


class ToolChoiceAuto(BaseModel):
    model_config = _STRICT
    type: Literal["auto"]
    disable_parallel_tool_use: bool = False


class ToolChoiceAny(BaseModel):
    model_config = _STRICT
    type: Literal["any"]
    disable_parallel_tool_use: bool = False


class ToolChoiceTool(BaseModel):
    model_config = _STRICT
    type: Literal["tool"]
    name: str
    disable_parallel_tool_use: bool = False


class ToolChoiceNone(BaseModel):
    model_config = _STRICT
    type: Literal["none"]


ToolChoice = Annotated[ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone,
                       Field(discriminator="type")]


class ThinkingEnabled(BaseModel):
    model_config = _STRICT
    type: Literal["enabled"]
    budget_tokens: int = Field(ge=1, description="most reasoning tokens (Anthropic's "
                                                 "minimum of 1024 is not enforced)")
    display: Literal["summarized", "omitted"] | None = None


class ThinkingAdaptive(BaseModel):
    model_config = _STRICT
    type: Literal["adaptive"]
    display: Literal["summarized", "omitted"] | None = None


class ThinkingDisabled(BaseModel):
    model_config = _STRICT
    type: Literal["disabled"]


Thinking = Annotated[ThinkingEnabled | ThinkingAdaptive | ThinkingDisabled,
                     Field(discriminator="type")]


class OutputFormat(BaseModel):
    model_config = _STRICT
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    format: OutputFormat | None = Field(None, description="JSON outputs: the answer follows "
                                                          "this JSON Schema")
    effort: str | None = Field(None, description="refused: use thinking.budget_tokens")


class Metadata(BaseModel):
    model_config = _LOOSE
    user_id: str | None = None


# ---------------------------------------------------------------------------- requests

StopSequence = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]


class CountTokensRequest(BaseModel):
    """The prompt part of a Messages request: what count_tokens counts."""

    model: str | None = Field(None, description="served model name (default: the first LM)")
    messages: Annotated[list[InputMessage], Field(min_length=1)]
    system: str | list[TextBlock] | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None
    output_config: OutputConfig | None = None
    # accepted and ignored
    cache_control: dict[str, Any] | None = None
    user_profile_id: str | None = None
    workspace_id: str | None = None

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, json_schema_extra={
        "examples": [{"model": "default-lm", "messages": [{"role": "user",
                                                           "content": "Hello"}]}]})


class MessagesRequest(CountTokensRequest):
    max_tokens: int = Field(ge=1, description="tokens to generate at most (required)")
    stop_sequences: Annotated[list[StopSequence], Field(max_length=16)] | None = None
    temperature: float = Field(1.0, ge=0, le=1, description="0 means greedy")
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="0: off")
    stream: bool = False
    seed: int | None = Field(None, ge=0, le=2**62, description="extension (not Anthropic's): "
                                                               "reproducible sampling")
    # accepted and ignored
    metadata: Metadata | None = None
    service_tier: str | None = None
    inference_geo: str | None = None
    diagnostics: dict[str, Any] | None = None
    # refused unless empty: code execution's container
    container: str | dict[str, Any] | None = Field(None, description="refused: no code "
                                                                     "execution")

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, json_schema_extra={
        "examples": [
            {"model": "default-lm", "max_tokens": 32,
             "messages": [{"role": "user", "content": "Tell me a joke"}]},
            {"model": "default-lm", "max_tokens": 60,
             "messages": [{"role": "user", "content": "Weather in Paris?"}],
             "tools": [{"name": "get_weather", "description": "Current weather in a city",
                        "input_schema": {"type": "object",
                                         "properties": {"city": {"type": "string"}},
                                         "required": ["city"]}}],
             "tool_choice": {"type": "any"}}]})


# ---------------------------------------------------------------------------- responses


class AnthropicUsage(BaseModel):
    input_tokens: int = Field(description="prompt tokens not read from the prefix cache")
    output_tokens: int
    cache_read_input_tokens: int = Field(0, description="prompt tokens read from the prefix "
                                                        "cache")
    cache_creation_input_tokens: int = Field(0, description="always 0: caching is automatic")


class MessageResponse(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[dict[str, Any]] = Field(
        description="thinking (with a reasoning parser), text and tool_use blocks")
    stop_reason: Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]
    stop_sequence: str | None = None
    usage: AnthropicUsage


class TokenCount(BaseModel):
    input_tokens: int


class AnthropicErrorDetail(BaseModel):
    type: str = Field(description="invalid_request_error, authentication_error, "
                                  "not_found_error, request_too_large, rate_limit_error, "
                                  "api_error, overloaded_error")
    message: str


class AnthropicErrorResponse(BaseModel):
    type: Literal["error"] = "error"
    error: AnthropicErrorDetail
