"""vLLM's and SGLang's extension fields, as the routers people put in front of replicas
send them. vllm-router (and sglang-router, its sibling) re-serializes every completions
and chat request with its own defaults for these added, e.g. on completions
`{"no_stop_trim": false, "ignore_eos": false, "skip_special_tokens": true,
"return_hidden_states": false}`, and on chat also `continue_final_message`,
`separate_reasoning`, `stream_reasoning` and `include_reasoning`. Each is implemented
here, or accepted where its value asks for nothing we do not do and refused (400 saying
so) where it asks for something we cannot do; README.md lists them beside the OpenAI
fields. Unknown fields still get 400: only these names are added.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from app.api.errors import BadRequest


class SamplingExtensionFields(BaseModel):
    """Extension fields of completions and chat (and /v1/generate) that change decoding
    or detokenization."""

    include_stop_str_in_output: bool = Field(
        False, description="vLLM: keep the stop string that ended the text in the output")
    no_stop_trim: bool = Field(
        False, description="SGLang's name for include_stop_str_in_output (either turns it on)")
    skip_special_tokens: bool | None = Field(
        None, description="vLLM: false keeps special tokens in the text (default true; a "
                          "tool-call parser that reads a special marker turns it off itself)")
    return_hidden_states: bool = Field(
        False, description="SGLang: only false (hidden states are not returned)")
    speculative: bool = Field(
        True, description="false: no speculative decoding for this request (when the "
                          "server has --speculative-config); the output is the same")


class ChatExtensionFields(BaseModel):
    """Extension fields of chat: how the template renders and reasoning is returned."""

    add_generation_prompt: bool = Field(
        True, description="vLLM: false renders the conversation without the assistant's "
                          "opening")
    continue_final_message: bool = Field(
        False, description="vLLM: the last message (an assistant's) is left open and the "
                           "answer continues it; needs add_generation_prompt false")
    separate_reasoning: bool = Field(
        True, description="SGLang: false leaves reasoning in content, as the model wrote it")
    include_reasoning: bool = Field(
        True, description="vLLM: false drops reasoning_content from the answer")
    stream_reasoning: bool = Field(
        True, description="SGLang: only true (reasoning streams as it is made)")


def include_stop(fields: SamplingExtensionFields) -> bool:
    return fields.include_stop_str_in_output or fields.no_stop_trim


def refuse_unsupported_extensions(fields: BaseModel) -> None:
    """400 for an extension value that asks for something this server does not do."""
    if getattr(fields, "return_hidden_states", False):
        raise BadRequest("return_hidden_states: not supported (hidden states are not "
                         "returned)", param="return_hidden_states")
    if getattr(fields, "stream_reasoning", True) is False:
        raise BadRequest("stream_reasoning false: not supported (reasoning streams as it "
                         "is made)", param="stream_reasoning")
