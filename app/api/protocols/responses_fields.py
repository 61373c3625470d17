"""The request body of OpenAI's Responses API (POST /v1/responses) and its field policy:
what is implemented, what is accepted and ignored (README lists them), and what is refused
with 400 because this server cannot do what it asks. `input` items and `tools` stay plain
JSON here: app/api/protocols/openai_responses.py checks them one by one, so a 400 names
the item (`input[2].content[0]`) and says what is wrong in the Responses API's own words.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.api.errors import BadRequest
from app.api.schemas import CACHE_SALT_DOC, CacheSalt, StopStr, Strict

MAX_METADATA_KEYS = 16  # OpenAI's limits on metadata, enforced the same way
MetadataKey = Annotated[str, Field(max_length=64)]
MetadataValue = Annotated[str, Field(max_length=512)]

# Accepted and ignored (README.md lists them): who the caller is, caching and billing
# hints, and include values that ask for nothing this server has.
IGNORED_FIELDS = ("user", "safety_identifier", "prompt_cache_key", "prompt_cache_retention",
                  "service_tier", "stream_options", "max_tool_calls")
IGNORED_INCLUDES = ("reasoning.encrypted_content",)

# field -> (values that ask for nothing, why others are refused)
_REFUSED: dict[str, tuple[tuple[Any, ...], str]] = {
    "background": ((None, False), "background responses are not implemented"),
    "conversation": ((None,), "conversations are not stored here: use "
                              "previous_response_id or send the items"),
    "prompt": ((None,), "stored prompt templates are not available here"),
    "context_management": ((None, []), "context compaction is not implemented"),
    "truncation": ((None, "disabled"), "input is never truncated: a prompt too long for "
                                       "the context gets 400"),
    "top_logprobs": ((None, 0), "logprobs are not returned on /v1/responses (use "
                                "/v1/chat/completions)"),
}


class TextFormat(BaseModel):
    """text.format: text | json_object | json_schema (name, schema, strict)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, populate_by_name=True)
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(None, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    description: str | None = None
    strict: bool | None = None


class TextConfig(Strict):
    format: TextFormat | None = Field(
        None, description="the answer's form: {\"type\": \"text\"} (default), "
                          "{\"type\": \"json_object\"} or {\"type\": \"json_schema\", "
                          "\"name\", \"schema\", \"strict\"}, through structured output")
    verbosity: Literal["low", "medium", "high"] | None = Field(
        None, description="only \"medium\" (the served models take no verbosity control)")


class ReasoningConfig(Strict):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = Field(
        None, description="a thinking budget where the model has a reasoning parser "
                          "(see README); otherwise ignored")
    summary: Literal["auto", "concise", "detailed"] | None = Field(
        None, description="accepted; the reasoning item carries the reasoning text itself "
                          "(`content`), its `summary` is empty")
    generate_summary: Literal["auto", "concise", "detailed"] | None = Field(
        None, description="older name of summary; accepted")


class ResponsesRequest(Strict):
    model: str | None = Field(None, description="served model name (default: the first LM)")
    input: str | list[dict[str, Any]] = Field(
        description="a user message as text, or a list of items: messages (role user | "
                    "system | developer | assistant, text content), function_call and "
                    "function_call_output items; reasoning items are accepted and dropped")
    instructions: str | None = Field(None, description="a system message before the input "
                                                        "(not carried by previous_response_id)")
    max_output_tokens: int | None = Field(
        None, ge=1, description="tokens to generate at most, reasoning included (default: "
                                "until the context is full, up to --max-tokens-limit)")
    temperature: float | None = Field(None, ge=0, le=2, description="default 1; 0 is greedy")
    top_p: float | None = Field(None, gt=0, le=1, description="nucleus sampling mass")
    tools: list[dict[str, Any]] | None = Field(
        None, description="function tools, in the Responses API's flat shape: {\"type\": "
                          "\"function\", \"name\", \"description\", \"parameters\", "
                          "\"strict\"}; built-in tools (web_search, file_search, ...) get 400")
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = Field(
        None, description="none | auto (default) | required | {\"type\": \"function\", "
                          "\"name\": ...}")
    parallel_tool_calls: bool | None = Field(
        None, description="false: at most one call per answer (default true)")
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    stream: bool = Field(False, description="Server-Sent Events: response.created, "
                                            "response.output_text.delta, ...")
    store: bool | None = Field(None, description="keep the answer for GET and "
                                                 "previous_response_id (default true)")
    previous_response_id: str | None = Field(
        None, description="continue a stored response: its input and output items come "
                          "before this input")
    metadata: dict[MetadataKey, MetadataValue] | None = Field(
        None, max_length=MAX_METADATA_KEYS, description="echoed back and stored")
    include: list[str] | None = Field(
        None, description="only [\"reasoning.encrypted_content\"] (ignored: reasoning is "
                          "returned as text)")
    # accepted and ignored (README)
    user: str | None = Field(None, description="echoed; otherwise ignored")
    safety_identifier: str | None = Field(None, description="ignored")
    prompt_cache_key: str | None = Field(None, description="ignored: the prefix cache works "
                                                           "without it (see cache_salt)")
    prompt_cache_retention: str | None = Field(None, description="ignored")
    service_tier: str | None = Field(None, description="ignored")
    stream_options: dict[str, Any] | None = Field(None, description="ignored")
    max_tool_calls: int | None = Field(None, ge=1, description="ignored: there are no "
                                                               "built-in tools to limit")
    # refused unless they ask for nothing (README)
    background: bool | None = Field(None, description="only false")
    conversation: str | dict[str, Any] | None = Field(None, description="not supported")
    prompt: dict[str, Any] | None = Field(None, description="not supported")
    context_management: list[Any] | None = Field(None, description="not supported")
    truncation: Literal["auto", "disabled"] | None = Field(None, description="only "
                                                                            "\"disabled\"")
    top_logprobs: int | None = Field(None, ge=0, description="only 0")
    # this server's extensions, as on its chat completions (vLLM's names)
    seed: int | None = Field(None, ge=0, le=2**62, description="reproducible sampling")
    top_k: int = Field(0, ge=0, description="sample among the k most likely (0: off)")
    min_p: float = Field(0.0, ge=0, le=1, description="drop tokens below min_p x max prob")
    repetition_penalty: float = Field(1.0, gt=0, le=10)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    stop: StopStr | Annotated[list[Annotated[StopStr, Field(min_length=1)]],
                              Field(max_length=16)] | None = Field(
        None, description="stop strings (not included in the output)")
    min_tokens: int = Field(0, ge=0, description="no end of answer before this many tokens")
    ignore_eos: bool = False
    cache_salt: CacheSalt | None = Field(None, description=CACHE_SALT_DOC)

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"model": "default-lm", "input": "Tell me a fortune.", "max_output_tokens": 16,
         "seed": 1}]})


def refuse_unsupported(body: ResponsesRequest) -> None:
    """400 naming the first field that asks for what this server does not do."""
    for name, (off, why) in _REFUSED.items():
        value = getattr(body, name)
        if not any(value == ok for ok in off):
            raise BadRequest(f"{name}: not supported ({why})", param=name)
    if body.text is not None and body.text.verbosity not in (None, "medium"):
        raise BadRequest(f"text.verbosity {body.text.verbosity!r}: not supported (the served "
                         "models take no verbosity control; only \"medium\")",
                         param="text.verbosity")
    for value in body.include or ():
        if value not in IGNORED_INCLUDES:
            raise BadRequest(f"include {value!r}: not supported (only "
                             f"{', '.join(IGNORED_INCLUDES)}, which is ignored)",
                             param="include")


# ---------------------------------------------------------------------------- responses


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: dict[str, int] = Field(
        description="cached_tokens: prompt tokens served from the prefix cache")
    output_tokens: int
    output_tokens_details: dict[str, int] = Field(
        description="reasoning_tokens: the reasoning item's text, in tokens")
    total_tokens: int


class ResponseObject(BaseModel):
    """OpenAI's Response object (the SDK's `Response` model validates it)."""

    id: str
    object: Literal["response"]
    created_at: int
    status: Literal["completed", "incomplete", "in_progress", "failed"]
    error: dict[str, Any] | None = None
    incomplete_details: dict[str, Any] | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    model: str
    output: list[dict[str, Any]] = Field(
        description="items: reasoning {summary, content: [reasoning_text]}, message "
                    "{content: [output_text]}, function_call {call_id, name, arguments}")
    parallel_tool_calls: bool
    previous_response_id: str | None = None
    reasoning: dict[str, Any]
    store: bool
    temperature: float
    text: dict[str, Any]
    tool_choice: str | dict[str, Any]
    tools: list[dict[str, Any]]
    top_p: float
    truncation: Literal["disabled"]
    usage: ResponseUsage | None = None
    user: str | None = None
    metadata: dict[str, str]
    background: bool


class DeletedResponse(BaseModel):
    id: str
    object: Literal["response"] = "response"
    deleted: bool = True
