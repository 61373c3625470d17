"""Response examples for the OpenAPI schema (/docs): real outputs of the shipped models
(`make serve`), as the README shows them; streams as the exact Server-Sent Events the
routes send. tests/api/test_openapi_docs.py validates every one against its route's
response schema, so an example cannot drift from what the route returns.
"""

from __future__ import annotations

import json
from typing import Any


def _sse(*events: dict[str, Any]) -> str:
    """Events as the routes send them (app.api.serving.sse), then [DONE]."""
    return "".join(f"data: {json.dumps(e, ensure_ascii=False)}\n\n" for e in events) + (
        "data: [DONE]\n\n")


def _usage(prompt: int, completion: int = 0) -> dict[str, Any]:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion, "cached_tokens": 0,
            "prompt_tokens_details": {"cached_tokens": 0}}


_TOP_2 = [{"token": " a", "token_id": 262, "prob": 0.0779598280787468,
           "logprob": -2.5515615940093994},
          {"token": " that", "token_id": 337, "prob": 0.07033726572990417,
           "logprob": -2.6544535160064697}]
PREDICT: dict[str, Any] = {
    "model": "default-lm", "predictions": _TOP_2, "argmax": _TOP_2[0],
    "results": [{"index": 0, "predictions": _TOP_2, "argmax": _TOP_2[0], "prompt_tokens": 5,
                 "distribution": None}],
    "usage": _usage(5)}


_MENCKEN = " that they are not to be\na good thing.\n\t\t-- H. L. Mencken"
GENERATE: dict[str, Any] = {
    "id": "98a06137753344e08bd4d042dc079595", "model": "default-lm", "text": _MENCKEN,
    "finish_reason": "stop",
    "results": [{"index": 0, "prompt_index": 0, "text": _MENCKEN, "finish_reason": "stop",
                 "tokens": None, "logprobs": None, "prompt_logprobs": None}],
    "usage": _usage(6, 20)}


_SCORES = [{"label": "computers", "score": 0.9987115859985352},
           {"label": "food", "score": 0.0003099848690908402}]
CLASSIFY: dict[str, Any] = {
    "model": "fortune-classifier", "label": "computers", "score": 0.9987115859985352,
    "scores": _SCORES,
    "results": [{"index": 0, "label": "computers", "score": 0.9987115859985352,
                 "scores": _SCORES}],
    "usage": _usage(15)}


COMPLETION: dict[str, Any] = {"id": "cmpl-96a95181127f4102954f155ed8237b2a",
     "object": "text_completion",
     "created": 1796034990,
     "model": "default-lm",
     "choices": [{"index": 0,
                  "text": ", a man who has a man is a man who is",
                  "finish_reason": "length",
                  "logprobs": None,
                  "prompt_logprobs": None}],
     "usage": _usage(4, 12),
     "system_fingerprint": "fp_69359a12701f"}


CHAT: dict[str, Any] = {"id": "chatcmpl-80c38da0289c4048856aeabed3068922",
     "object": "chat.completion",
     "created": 1796034992,
     "model": "default-lm",
     "choices": [{"index": 0,
                  "message": {"role": "assistant",
                              "content": "\tIn the other side of the night\n"
                                         "\tAnd the man was a man"},
                  "finish_reason": "length",
                  "logprobs": None}],
     "usage": _usage(14, 16),
     "system_fingerprint": "fp_69359a12701f"}


# The first 4 of default-lm's 256 numbers.
EMBEDDINGS: dict[str, Any] = {"object": "list",
     "data": [{"object": "embedding",
               "index": 0,
               "embedding": [-0.011754706853209472, -0.054582037201065775,
                             -0.0002169894375595603, -0.016004153198378116]}],
     "model": "default-lm",
     "usage": {"prompt_tokens": 4, "total_tokens": 4}}


PERPLEXITY: dict[str, Any] = {"model": "default-lm",
     "window": 256,
     "stride": 128,
     "mean_nll": 5.766419106059605,
     "perplexity": 319.3919736678646,
     "results": [{"index": 0,
                  "tokens": 10,
                  "scored_tokens": 9,
                  "mean_nll": 5.766419106059605,
                  "perplexity": 319.3919736678646,
                  "logprobs": None}],
     "usage": _usage(10, 0)}


TOKENIZE: dict[str, Any] = {"model": "default-lm",
     "tokens": [7092, 689],
     "token_strings": ["Hello", "Ġworld"],
     "count": 2,
     "max_model_len": 256}


DETOKENIZE: dict[str, Any] = {"model": "default-lm", "text": "Hello world"}


VLLM_TOKENIZE: dict[str, Any] = {"count": 2, "max_model_len": 256, "tokens": [7092, 689],
                                 "token_strs": None}


VLLM_DETOKENIZE: dict[str, Any] = {"prompt": "Hello world"}


TOKENIZER_INFO: dict[str, Any] = {"model": "default-lm",
     "tokenizer_class": "PreTrainedTokenizerFast",
     "bos_token": "<|endoftext|>",
     "eos_token": "<|endoftext|>",
     "pad_token": "<|pad|>",
     "bos_token_id": 0,
     "eos_token_id": 0,
     "pad_token_id": 1,
     "add_bos_token": False,
     "chat_template": "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n"
                      "' + message['content'] + '<|im_end|>' + '\n"
                      "' }}{% endfor %}{% if add_generation_prompt %}{{ "
                      "'<|im_start|>assistant\n"
                      "' }}{% endif %}",
     "model_max_length": 256,
     "vocab_size": 8192}


# With --lora fortunes=adapters/fortunes: an adapter is listed after the models, its
# parent the model it adapts and its root its folder (as vLLM lists them).
MODELS: dict[str, Any] = {"object": "list",
     "data": [{"id": "default-lm",
               "object": "model",
               "created": 1796034989,
               "owned_by": "local",
               "root": "models/default-lm",
               "parent": None,
               "max_model_len": 256},
              {"id": "fortune-classifier",
               "object": "model",
               "created": 1796034989,
               "owned_by": "local",
               "root": "models/fortune-classifier",
               "parent": None,
               "max_model_len": 256},
              {"id": "fortunes",
               "object": "model",
               "created": 1796034990,
               "owned_by": "local",
               "root": "adapters/fortunes",
               "parent": "default-lm",
               "max_model_len": 256}]}

# vLLM's runtime LoRA endpoints (app/api/routes/lora.py): plain text on success.
LORA_LOADED = "Success: LoRA adapter 'fortunes' added successfully."
LORA_UNLOADED = "Success: LoRA adapter 'fortunes' removed successfully."


def _lora_error(code: int, type_: str, message: str, param: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


LORA_ERRORS: dict[int, tuple[str, dict[str, Any]]] = {
    400: ("A path outside --lora-dir, a folder that holds no usable adapter (its message "
          "says what is wrong), a name already loaded or taken by a model, an unknown field",
          _lora_error(400, "invalid_request_error", "lora_path '../elsewhere' is outside the "
                      "server's LoRA folder (--lora-dir): runtime loads are confined to it",
                      "lora_path")),
    404: ("Runtime loading is off (--allow-runtime-lora), or no adapter of that name is "
          "loaded", _lora_error(404, "not_found_error",
                                "The lora adapter 'fortunes' cannot be found.", "lora_name")),
    413: ("Request body over --max-body-bytes", _lora_error(
        413, "request_too_large", "request body exceeds the limit of 1048576 bytes", None)),
    422: ("A known field with the wrong type", _lora_error(
        422, "invalid_request_error", "lora_name: Input should be a valid string",
        "lora_name")),
    503: ("Loading, or draining after SIGTERM", _lora_error(
        503, "service_unavailable", "the server is not ready (starting)", None)),
}


def _served(name: str, task: str, architecture: str, parameters: int,
            labels: list[str] | None) -> dict[str, Any]:
    """One shipped model in /v1/info, idle."""
    return {"name": name, "path": f"models/{name}", "task": task, "architecture": architecture,
            "dtype": "float32", "device": "cpu", "max_model_len": 256, "vocab_size": 8192,
            "parameters": parameters, "labels": labels, "kv_cache_blocks": 512,
            "block_size": 16, "kv_blocks_used": 0, "running_requests": 0,
            "waiting_requests": 0, "compile": "off (--compile off)",
            "weights": "not packed (--prepack off)", "quantization": "none",
            "max_loras": 0, "adapters": []}


# With --compile off --prepack off; by default they say what was measured.
INFO: dict[str, Any] = {"version": "0.1.0",
     "phase": "ready",
     "models": [_served("default-lm", "causal_lm", "LlamaForCausalLM", 6524160, None),
                _served("fortune-classifier", "sequence_classification",
                        "LlamaForSequenceClassification", 6526720,
                        ["computers", "education", "food", "law", "love", "medicine",
                         "politics", "science", "sports", "startrek"])],
     "limits": {"max_body_bytes": 1048576,
                "max_prompt_tokens": 0,
                "max_tokens_limit": 2048,
                "default_max_tokens": 64,
                "max_inputs": 32,
                "max_n": 8,
                "max_top_logprobs": 20,
                "max_predict_top_k": 100,
                "max_full_distribution": 65536,
                "max_candidate_labels": 32,
                "max_num_seqs": 8,
                "max_num_batched_tokens": 64,
                "max_waiting_requests": 128,
                "max_waiting_tokens": 65536,
                "drain_timeout": 30.0}}


READY: dict[str, Any] = {"status": "ok",
     "phase": "ready",
     "models": {"default-lm": "running", "fortune-classifier": "running"},
     "reason": None}


def _chunks(header: dict[str, Any], choices: list[dict[str, Any]],
            usage: dict[str, Any]) -> str:
    """An OpenAI stream: one chunk per choice delta, then the usage chunk."""
    return _sse(*({**header, "choices": [c]} for c in choices),
                {**header, "choices": [], "usage": usage})


GENERATE_STREAM = _sse(
    *({"index": 0, "prompt_index": 0, "text": text, "finish_reason": finish}
      for text, finish in ((" the", None), (" way of the", "length"))),
    {"id": "79266dea533e491aab26d2a74cc5575d", "model": "default-lm", "usage": _usage(2, 4)})


COMPLETION_STREAM = _chunks(
    {"id": "cmpl-f87a2415e0b0453991d0d4a63f4fb923", "object": "text_completion",
     "created": 1796034991, "model": "default-lm", "system_fingerprint": "fp_69359a12701f"},
    [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None,
      "prompt_logprobs": None}
     for text, finish in ((",", None), (" a man", "length"))],
    _usage(4, 3))


CHAT_STREAM = _chunks(
    {"id": "chatcmpl-e7c58cf9faa04c53bcafe78c7ee291f7", "object": "chat.completion.chunk",
     "created": 1796034993, "model": "default-lm", "system_fingerprint": "fp_69359a12701f"},
    [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
     for delta, finish in (({"content": "\t", "role": "assistant"}, None),
                           ({"content": "In the"}, "length"))],
    _usage(14, 3))

# Chat with tools and reasoning (app/chat). The tool call is the shipped default-lm's own
# answer to the request example with tools (app/api/schemas.py) and "seed": 5: valid by
# construction (tool_choice required), and no wiser than a 2M-parameter model.
_CALL_ARGUMENTS = "{\"city\": \".anotherer */  It's walking, repeated it\"}"
CHAT_TOOL_CALLS: dict[str, Any] = {"id": "chatcmpl-2dac4f8092c74470be2aa952db378619",
     "object": "chat.completion",
     "created": 1796590347,
     "model": "default-lm",
     "choices": [{"index": 0,
                  "message": {"role": "assistant", "content": None,
                              "tool_calls": [{"id": "call_K2cIjnuI7yTgJeQQts8echBr",
                                              "type": "function",
                                              "function": {"name": "get_weather",
                                                           "arguments": _CALL_ARGUMENTS}}]},
                  "finish_reason": "tool_calls",
                  "logprobs": None}],
     "usage": _usage(144, 52),
     "system_fingerprint": "fp_69359a12701f"}

_TOOL_CHUNK = {"id": "chatcmpl-810fd9dbcee044c3b0a14f7ae4707376",
               "object": "chat.completion.chunk", "created": 1796590350, "model": "default-lm",
               "system_fingerprint": "fp_69359a12701f"}
# The same request streamed: the call's id and name come once, then argument fragments.
CHAT_TOOL_CALLS_STREAM = _chunks(_TOOL_CHUNK, [
    {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
    for delta, finish in (
        ({"role": "assistant"}, None),
        ({"tool_calls": [{"index": 0, "id": "call_h2yDlbDEHU0Cc3hbwnxvvyYq",
                          "type": "function",
                          "function": {"name": "get_weather", "arguments": ""}},
                         {"index": 0, "function": {"arguments": _CALL_ARGUMENTS}}]}, None),
        ({}, "tool_calls"))], _usage(144, 52))

# A reasoning model's answer (the shipped models do not reason): a checkpoint with a
# <think> template served with --reasoning-parser auto (or qwen3 / deepseek_r1).
CHAT_REASONING: dict[str, Any] = {"id": "chatcmpl-5b0c1e8f3d2a4c6e9f7a1b2c3d4e5f60",
     "object": "chat.completion",
     "created": 1796590400,
     "model": "qwen3-0.6b",
     "choices": [{"index": 0,
                  "message": {"role": "assistant", "content": "17 × 3 = 51.",
                              "reasoning_content": "17 × 3 is 10 × 3 plus 7 × 3: "
                                                   "30 + 21 = 51."},
                  "finish_reason": "stop",
                  "logprobs": None}],
     "usage": _usage(14, 38),
     "system_fingerprint": "fp_1c7a0e52d93b"}

CHAT_MORE: dict[str, dict[str, Any]] = {
    "tool_calls": {"summary": "Tool calls (finish_reason tool_calls)",
                   "value": CHAT_TOOL_CALLS},
    "reasoning": {"summary": "Reasoning apart from the answer (reasoning_content)",
                  "value": CHAT_REASONING}}
CHAT_STREAM_MORE: dict[str, dict[str, Any]] = {
    "tool_calls": {"summary": "Streamed tool calls (delta.tool_calls)",
                   "value": CHAT_TOOL_CALLS_STREAM}}

NOT_READY: dict[str, Any] = {"status": "unavailable", "phase": "starting",
                             "models": {}, "reason": "phase is starting"}

METRICS = ('llm_generation_tokens_total{model="default-lm"} 180.0\n'
           'llm_requests_running{model="default-lm"} 0.0\n'
           'llm_kv_cache_usage_ratio{model="default-lm"} 0.0\n')

# ----------------------------------------------------------- what routers read (routers)
GET_LOAD: list[dict[str, int]] = [{"dp_rank": 0, "num_reqs": 3, "num_waiting_reqs": 1,
                                   "num_tokens": 416}]
GET_MODEL_INFO: dict[str, Any] = {
    "model_path": "models/default-lm", "tokenizer_path": "models/default-lm",
    "served_model_name": "default-lm", "is_generation": True, "max_model_len": 256,
    "weight_version": "fp_69359a12701f"}
SERVER_INFO: dict[str, Any] = {
    "version": "0.1.0",
    "vllm_config": {
        "model_config": {"model": "default-lm", "served_model_name": "default-lm",
                         "max_model_len": 256, "dtype": "float32"},
        "cache_config": {"block_size": 16, "num_gpu_blocks": 1024,
                         "enable_prefix_caching": True},
        "scheduler_config": {"max_num_seqs": 64, "max_num_batched_tokens": 2048}},
    "server_args": {"host": "127.0.0.1", "port": 8000, "block_size": 16,
                    "max_num_seqs": 64, "metrics_compat": "vllm"},
    "internal_states": [{"num_reqs": 0, "num_waiting_reqs": 0, "kv_blocks_used": 0}]}


# --- OpenAI Responses API (/v1/responses): real outputs of default-lm, for
# {"input": "Tell me a fortune.", "max_output_tokens": 40, "seed": 17} (whole) and the
# same with "max_output_tokens": 2, "stream": true (its named events, no [DONE])
def _named(*events: dict[str, Any]) -> str:
    """Events as /v1/responses sends them: named, typed, numbered."""
    numbered = ({"type": e["type"], "sequence_number": n, **e} for n, e in enumerate(events))
    return "".join(f"event: {e['type']}\ndata: {json.dumps(e, ensure_ascii=False)}\n\n"
                   for e in numbered)


def _response(rid: str, created: int, status: str, max_output: int,
              output: list[dict[str, Any]], usage: dict[str, Any] | None) -> dict[str, Any]:
    return {"id": rid, "object": "response", "created_at": created, "status": status,
            "error": None, "incomplete_details": {"reason": "max_output_tokens"}
            if status == "incomplete" else None, "instructions": None,
            "max_output_tokens": max_output, "model": "default-lm", "output": output,
            "parallel_tool_calls": True, "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None}, "store": True,
            "temperature": 1.0, "text": {"format": {"type": "text"}}, "tool_choice": "auto",
            "tools": [], "top_p": 1.0, "truncation": "disabled", "usage": usage,
            "user": None, "metadata": {}, "background": False}


def _response_usage(prompt: int, output: int) -> dict[str, Any]:
    return {"input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": output, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + output}


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message(mid: str, status: str, text: str | None) -> dict[str, Any]:
    return {"id": mid, "type": "message", "role": "assistant", "status": status,
            "content": [] if text is None else [_text_part(text)]}


RESPONSE: dict[str, Any] = _response(
    "resp_6349cb3cd3ae4327b77e2d65f8d52c1a", 1796590275, "completed", 40,
    [_message("msg_e1b7999c7f10465795690f6fc2cf349e", "completed",
              "15t rubys at you.\n\t\t-- Roger White")], _response_usage(15, 13))
_RID, _MID = "resp_cdc88a5dc4fc476cbcaa76e8b8d052da", "msg_87d3592e50844263a09f3dbe32e1330a"
_STARTED = _response(_RID, 1796590275, "in_progress", 2, [], None)
_AT = {"item_id": _MID, "output_index": 0, "content_index": 0}
RESPONSE_STREAM = _named(
    {"type": "response.created", "response": _STARTED},
    {"type": "response.in_progress", "response": _STARTED},
    {"type": "response.output_item.added", "output_index": 0,
     "item": _message(_MID, "in_progress", None)},
    {"type": "response.content_part.added", **_AT, "part": _text_part("")},
    {"type": "response.output_text.delta", **_AT, "delta": "15", "logprobs": []},
    {"type": "response.output_text.delta", **_AT, "delta": "t", "logprobs": []},
    {"type": "response.output_text.done", **_AT, "text": "15t", "logprobs": []},
    {"type": "response.content_part.done", **_AT, "part": _text_part("15t")},
    {"type": "response.output_item.done", "output_index": 0,
     "item": _message(_MID, "incomplete", "15t")},
    {"type": "response.incomplete", "response": _response(
        _RID, 1796590275, "incomplete", 2, [_message(_MID, "incomplete", "15t")],
        _response_usage(15, 2))})
RESPONSE_DELETED: dict[str, Any] = {"id": "resp_6349cb3cd3ae4327b77e2d65f8d52c1a",
                                    "object": "response", "deleted": True}

# ---------------------------------------------------------------- Anthropic Messages API
# Real answers of the shipped default-lm (README "Anthropic Messages API").

def _anthropic_sse(*events: dict[str, Any]) -> str:
    return "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events)


ANTHROPIC_MESSAGE: dict[str, Any] = {
    "id": "msg_8020a80416454655b6a3cd1dc4377c15", "type": "message", "role": "assistant",
    "model": "default-lm", "content": [{"type": "text", "text": "\tIn the"}],
    "stop_reason": "max_tokens", "stop_sequence": None,
    "usage": {"input_tokens": 14, "output_tokens": 3, "cache_read_input_tokens": 0,
              "cache_creation_input_tokens": 0}}

ANTHROPIC_MESSAGE_STREAM = _anthropic_sse(
    {"type": "message_start", "message": {**ANTHROPIC_MESSAGE, "content": [],
                                          "stop_reason": None, "usage": {
        **ANTHROPIC_MESSAGE["usage"], "output_tokens": 0}}},
    {"type": "ping"},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "\t"}},
    {"type": "content_block_delta", "index": 0,
     "delta": {"type": "text_delta", "text": "In the"}},
    {"type": "content_block_stop", "index": 0},
    {"type": "message_delta", "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
     "usage": ANTHROPIC_MESSAGE["usage"]},
    {"type": "message_stop"})

ANTHROPIC_COUNT: dict[str, Any] = {"input_tokens": 14}
