"""OpenAI request fields that this server accepts without acting on them, and those it
refuses because it cannot do what they ask. Tool calling itself (`tools`, `tool_choice`,
`parallel_tool_calls`) is app/api/tool_fields.py.

Every body forbids fields it does not declare (400 naming the field, as OpenAI's API
answers): a typo such as `temprature` must not sample at the default temperature. Fields
of OpenAI's API that change nothing a local model computes (who the caller is, storage
and billing hints) are declared here and ignored; README.md lists them. Fields that ask
for something this server does not do (the legacy `functions` calling, audio, predicted
outputs, web search, reasoning effort, completion suffixes) are declared too, so that a
request using them gets 400 saying they are not supported instead of a reply that quietly
did something else. Their "off" values (an empty `functions` list, `function_call:
"none"`, `modalities: ["text"]`, ...) are accepted, since some clients always send them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from app.api.errors import BadRequest

# Accepted and ignored; also listed in README.md (a test keeps the two in step).
IGNORED_FIELDS = ("user", "metadata", "store", "service_tier", "prompt_cache_key",
                  "safety_identifier")

_NO_TOOLS = "the legacy function calling: send `tools` and `tool_choice` instead"
# field -> (values that ask for nothing, why the others are refused)
_UNSUPPORTED: dict[str, tuple[tuple[Any, ...], str]] = {
    "functions": ((None, []), _NO_TOOLS),
    "function_call": ((None, "none"), _NO_TOOLS + "; only \"none\" is accepted"),
    "modalities": ((None, ["text"]), "text is the only output"),
    "audio": ((None,), "text is the only output"),
    "prediction": ((None,), "predicted outputs are not implemented"),
    "web_search_options": ((None,), "there is no web search"),
    "reasoning_effort": ((None,), "reasoning is bounded by thinking_budget (tokens), not "
                                  "an effort level"),
    "verbosity": ((None,), "the served models take no verbosity control"),
    "suffix": ((None, ""), "insertion (text after the completion) is not implemented"),
}


class IgnoredOpenAIFields(BaseModel):
    """OpenAI fields accepted on completions and chat, with no effect here."""

    user: str | None = Field(None, description="ignored (accepted for OpenAI clients)")
    metadata: dict[str, Any] | None = Field(None, description="ignored")
    store: bool | None = Field(None, description="ignored: nothing is stored")
    service_tier: str | None = Field(None, description="ignored")
    prompt_cache_key: str | None = Field(
        None, description="ignored: the prefix cache works without it (see cache_salt)")
    safety_identifier: str | None = Field(None, description="ignored")


_REFUSED = "refused with 400 unless it asks for nothing (see README)"


class UnsupportedChatFields(BaseModel):
    """OpenAI chat fields for features this server does not have."""

    functions: list[Any] | None = Field(None, description=f"not supported: {_REFUSED}")
    function_call: str | dict[str, Any] | None = Field(
        None, description=f"not supported: only \"none\" is accepted; {_REFUSED}")
    modalities: list[str] | None = Field(None, description="only [\"text\"]")
    audio: dict[str, Any] | None = Field(None, description=f"not supported: {_REFUSED}")
    prediction: dict[str, Any] | None = Field(None, description=f"not supported: {_REFUSED}")
    web_search_options: dict[str, Any] | None = Field(
        None, description=f"not supported: {_REFUSED}")
    reasoning_effort: str | None = Field(None, description=f"not supported: {_REFUSED}")
    verbosity: str | None = Field(None, description=f"not supported: {_REFUSED}")


class UnsupportedCompletionFields(BaseModel):
    """OpenAI legacy-completion fields for features this server does not have."""

    suffix: str | None = Field(None, description=f"not supported: {_REFUSED}")


def refuse_unsupported(body: BaseModel) -> None:
    """400 naming the first field that asks for a feature this server does not have."""
    for name, (off, why) in _UNSUPPORTED.items():
        if name not in type(body).model_fields:
            continue
        value = getattr(body, name)
        if any(value == ok for ok in off):
            continue
        shown = f" {value!r}" if isinstance(value, str) else ""
        raise BadRequest(f"{name}{shown}: not supported ({why})", param=name)
