"""OpenAI chat request and response fields for tool calling and reasoning (issue 23)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)
_LOOSE = ConfigDict(extra="ignore", allow_inf_nan=False)


class FunctionDefinition(BaseModel):
    model_config = _STRICT
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = Field(
        None, description="JSON Schema of the arguments object")
    strict: bool | None = Field(
        None, description="accepted; calls are always constrained once begun where the "
                          "model family's syntax allows it (see README)")


class ToolDefinition(BaseModel):
    model_config = _STRICT
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    model_config = _STRICT
    name: str


class NamedToolChoice(BaseModel):
    model_config = _STRICT
    type: Literal["function"]
    function: NamedFunction


class CalledFunction(BaseModel):
    model_config = _LOOSE
    name: str
    arguments: str = Field(description="the arguments object as JSON text")


class ToolCall(BaseModel):
    """A call in an assistant message: made by the model, sent back by the client."""

    model_config = _LOOSE
    id: str
    type: Literal["function"] = "function"
    function: CalledFunction


class ToolRequestFields(BaseModel):
    """The chat request's tool-calling and reasoning fields."""

    tools: list[ToolDefinition] | None = Field(
        None, description="functions the model may call (OpenAI's shape)")
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = Field(
        None, description="none | auto (default with tools) | required | "
                          "{\"type\": \"function\", \"function\": {\"name\": ...}}; required "
                          "and named calls are constrained to valid calls")
    parallel_tool_calls: bool | None = Field(
        None, description="false: at most one call per answer (default true)")
    chat_template_kwargs: dict[str, Any] | None = Field(
        None, description="extra variables for the chat template, e.g. "
                          "{\"enable_thinking\": false}")
    thinking_budget: int | None = Field(
        None, ge=1, description="most reasoning tokens (with a reasoning parser); then the "
                                "end of thinking is forced")
