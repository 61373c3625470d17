"""The extension fields that vllm-router / sglang-router add to every request they
forward (app/api/router_fields.py): the exact bodies such a router sends are served, and
each field does what vLLM / SGLang document, in process."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.api.router_fields import SamplingExtensionFields, include_stop
from app.api.schemas import ChatCompletionRequest
from app.api.serving import sampling_params
from app.chat.plan import ChatOptions, plan_chat
from app.config import Settings
from app.tokenizer import Tokenizer
from tests.api.test_chat_tools import streamed
from tests.chat.families import build_family_checkpoint

# What vllm-router 0.1.17 forwarded for `{"model", "prompt", "max_tokens": 5}` and for
# `{"model", "messages", "max_tokens": 5}` (captured from the router binary).
ROUTER_COMPLETION = {"prompt": "Hello", "max_tokens": 5, "stream": False, "echo": False,
                     "no_stop_trim": False, "ignore_eos": False, "skip_special_tokens": True,
                     "return_hidden_states": False}
ROUTER_CHAT = {"messages": [{"role": "user", "content": "Hi"}], "stream": False,
               "max_tokens": 5, "logprobs": False, "no_stop_trim": False,
               "ignore_eos": False, "continue_final_message": False,
               "skip_special_tokens": True, "separate_reasoning": True,
               "stream_reasoning": True, "return_hidden_states": False,
               "include_reasoning": True}


def test_a_routers_bodies_are_served_whole_and_streamed(api: Any) -> None:
    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        for route, request in (("/v1/completions", ROUTER_COMPLETION),
                               ("/v1/chat/completions", ROUTER_CHAT)):
            r = await client.post(route, json={"model": "lm", **request})
            assert r.status_code == 200, r.text
            r = await client.post(route, json={"model": "lm", **request, "stream": True})
            assert r.status_code == 200, r.text
            assert r.text.rstrip().endswith("data: [DONE]")
        # a client's own unknown field is still refused
        r = await client.post("/v1/completions", json={**ROUTER_COMPLETION, "no_stop_trimm": 1})
        assert r.status_code == 400 and r.json()["error"]["param"] == "no_stop_trimm"

    api(body)


def test_refused_values_say_so() -> None:
    settings = Settings()
    for field, value in (("return_hidden_states", True), ("stream_reasoning", False)):
        body = ChatCompletionRequest.model_validate({**ROUTER_CHAT, field: value})
        with pytest.raises(Exception) as caught:
            sampling_params(body, settings)
        assert getattr(caught.value, "param", None) == field, caught.value
    params = sampling_params(ChatCompletionRequest.model_validate(
        {**ROUTER_CHAT, "skip_special_tokens": False, "no_stop_trim": True}), settings)
    assert not params.skip_special_tokens and params.include_stop_str_in_output
    assert include_stop(SamplingExtensionFields(include_stop_str_in_output=True))
    assert not include_stop(SamplingExtensionFields())


def test_stop_string_kept_with_include_stop_str_in_output(api: Any) -> None:
    """vLLM's include_stop_str_in_output and SGLang's no_stop_trim keep the stop string
    that ended the text, whole and streamed; without them it is cut."""

    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        base = {"model": "lm", "prompt": "The", "max_tokens": 24, "temperature": 0}
        free = (await client.post("/v1/completions", json=base)).json()["choices"][0]["text"]
        stop = free[len(free) // 2:len(free) // 2 + 2]
        assert len(stop) == 2, free
        cut = free[:free.index(stop)]
        for extra, text in (({}, cut), ({"include_stop_str_in_output": True}, cut + stop),
                            ({"no_stop_trim": True}, cut + stop)):
            request = {**base, "stop": [stop], **extra}
            r = await client.post("/v1/completions", json=request)
            choice = r.json()["choices"][0]
            assert (choice["text"], choice["finish_reason"]) == (text, "stop"), extra
            async with client.stream("POST", "/v1/completions",
                                     json={**request, "stream": True}) as s:
                pieces = [json.loads(line[6:])["choices"] async for line in s.aiter_lines()
                          if line.startswith("data: {")]
            assert "".join(c[0]["text"] for c in pieces if c) == text

    api(body)


def test_continue_final_message(api: Any, tokenizer: Tokenizer) -> None:
    """The last assistant message is left open: the prompt ends with its text (no end of
    turn, no new assistant opening), and the answer continues it."""
    messages = [{"role": "user", "content": "Tell me"}, {"role": "assistant",
                                                         "content": "Once upon a"}]
    plan = plan_chat(tokenizer, messages, ChatOptions(add_generation_prompt=False,
                                                      continue_final_message=True))
    closed = plan_chat(tokenizer, messages, ChatOptions(add_generation_prompt=False))
    assert plan.prompt.endswith("Once upon a") and not closed.prompt.endswith("Once upon a")
    assert closed.prompt.startswith(plan.prompt)

    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        request = {"model": "lm", "messages": messages, "max_tokens": 3,
                   "add_generation_prompt": False, "continue_final_message": True}
        r = await client.post("/v1/chat/completions", json=request)
        assert r.status_code == 200, r.text
        counted = await client.post("/v1/tokenize", json={"model": "lm",
                                                         "text": plan.prompt})
        assert r.json()["usage"]["prompt_tokens"] == counted.json()["count"]
        for bad, words in (({"add_generation_prompt": True}, "add_generation_prompt"),
                           ({"messages": messages[:1]}, "assistant")):
            r = await client.post("/v1/chat/completions", json={**request, **bad})
            assert r.status_code == 400, r.text
            error = r.json()["error"]
            assert error["param"] == "continue_final_message" and words in error["message"]

    api(body)


def test_reasoning_fields(api: Any, tokenizer: Tokenizer, tmp_path: Any) -> None:
    """include_reasoning false drops reasoning_content (the answer is the same);
    separate_reasoning false leaves the reasoning in content, as the model wrote it."""
    logging.getLogger("transformers").setLevel(logging.ERROR)
    directory = build_family_checkpoint("deepseek_r1", tokenizer, tmp_path)

    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        request = {"model": "r1", "messages": [{"role": "user", "content": "Hi"}],
                   "max_tokens": 12, "temperature": 1.0, "seed": 9, "thinking_budget": 4}
        r = await client.post("/v1/chat/completions", json=request)
        parsed = r.json()["choices"][0]["message"]
        assert parsed["reasoning_content"], parsed
        r = await client.post("/v1/chat/completions", json={**request,
                                                            "include_reasoning": False})
        dropped = r.json()["choices"][0]["message"]
        assert "reasoning_content" not in dropped and dropped["content"] == parsed["content"]
        stream = await streamed(client, {**request, "include_reasoning": False})
        assert stream["reasoning_content"] == ""
        assert stream["content"] == (parsed["content"] or "")
        # (a thinking budget needs the reasoning parser that separate_reasoning turns off)
        free = {**request, "thinking_budget": None}
        r = await client.post("/v1/chat/completions", json=free)
        reasoned = r.json()["choices"][0]["message"]
        r = await client.post("/v1/chat/completions", json={**free,
                                                            "separate_reasoning": False})
        raw = r.json()["choices"][0]["message"]
        assert "reasoning_content" not in raw and reasoned["reasoning_content"]
        assert reasoned["reasoning_content"].strip() in raw["content"]
        r = await client.post("/v1/chat/completions", json={**request,
                                                            "separate_reasoning": False})
        assert r.status_code == 400 and "reasoning parser" in r.json()["error"]["message"]

    api(body, models=[f"r1={directory}"], reasoning_parser="auto")
