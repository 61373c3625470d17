"""/v1/completions' echo and legacy logprobs: echo with max_tokens 0 (with and without
logprobs, whole and streamed), text_offset across streamed chunks, characters split
across byte tokens, and the field a logprobs error names."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.api.offsets import assert_offsets_cover

# Three tokens for the test tokenizer, none whole UTF-8: e6 9d | b1 e4 | ba ac.
SPLIT = "東京"


async def streamed(client: httpx.AsyncClient, body: dict[str, Any]) -> list[dict[str, Any]]:
    async with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200, await r.aread()
        return [json.loads(line[6:]) async for line in r.aiter_lines()
                if line.startswith("data: {")]


@pytest.mark.parametrize("logprobs", [None, 1])
def test_echo_without_generating_whole_and_streamed(api: Any, logprobs: int | None) -> None:
    """Defect 2: echo with max_tokens 0 and no logprobs was a 500 ('State' object has no
    attribute 'streams'), streamed too; defect 5: the stream ignored include_usage."""
    request = {"prompt": "Hello world", "max_tokens": 0, "echo": True, "logprobs": logprobs}

    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        tokens = len((await client.post("/v1/tokenize", json={"text": "Hello world"})
                      ).json()["tokens"])
        r = await client.post("/v1/completions", json=request)
        assert r.status_code == 200, r.text
        whole = r.json()
        (choice,) = whole["choices"]
        assert choice["text"] == "Hello world" and choice["finish_reason"] == "length"
        assert (choice["logprobs"] is None) == (logprobs is None)
        assert whole["usage"]["prompt_tokens"] == tokens
        assert whole["usage"]["completion_tokens"] == 0
        events = await streamed(client, {**request,
                                         "stream_options": {"include_usage": True}})
        assert [e["choices"][0]["text"] for e in events[:-1]] == ["Hello world"]
        assert events[-1]["choices"] == [] and events[-1]["usage"] == whole["usage"]
        without = await streamed(client, request)
        assert len(without) == 1 and "usage" not in without[0]

    api(body)


@pytest.mark.parametrize("echo", [False, True])
def test_streamed_text_offset_counts_on_across_chunks(api: Any, echo: bool) -> None:
    """Defect 4: each chunk's text_offset restarted at 0; they equal the whole response's."""
    request = {"prompt": "hello there", "max_tokens": 6, "temperature": 0, "logprobs": 1,
               "ignore_eos": True, "echo": echo}

    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        r = await client.post("/v1/completions", json=request)
        assert r.status_code == 200, r.text
        whole = r.json()["choices"][0]
        chunks = [e["choices"][0] for e in await streamed(client, request)]
        assert len(chunks) > 2  # one chunk per step: the offsets really span chunks
        assert "".join(c["text"] for c in chunks) == whole["text"]
        for field in ("tokens", "text_offset"):
            assert [v for c in chunks for v in c["logprobs"][field]] == whole["logprobs"][
                field], field
        assert whole["logprobs"]["text_offset"][-1] > 0
        assert_offsets_cover(whole["text"], whole["logprobs"]["tokens"],
                             whole["logprobs"]["text_offset"])

    api(body)


@pytest.mark.parametrize("max_tokens", [0, 4])
def test_split_characters_get_byte_tokens_and_offsets_inside_the_text(
        api: Any, max_tokens: int) -> None:
    """Defect 6: for "東京" the tokens were six replacement characters and text_offset ran
    past the end of the text. Tokens that are not whole UTF-8 are written as OpenAI's
    legacy API writes them ("bytes:\\xe6\\x9d"); a character belongs to the token that
    completes it."""
    request = {"prompt": SPLIT, "max_tokens": max_tokens, "echo": True, "logprobs": 2,
               "temperature": 0, "ignore_eos": True}

    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        ids = (await client.post("/v1/tokenize", json={"text": SPLIT,
                                                       "add_special_tokens": False})
               ).json()["tokens"]
        assert len(ids) == 3  # the premise: tokens that split the characters
        r = await client.post("/v1/completions", json=request)
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        text, lp = choice["text"], choice["logprobs"]
        assert text.startswith(SPLIT)
        first = len(lp["tokens"]) - max_tokens - len(ids)
        prompt_tokens = lp["tokens"][first:first + len(ids)]
        raw = SPLIT.encode()
        assert prompt_tokens == ["bytes:" + "".join(f"\\x{b:02x}" for b in raw[i:i + 2])
                                 for i in (0, 2, 4)]
        assert all("\ufffd" not in t for t in lp["tokens"])
        assert all("\ufffd" not in key for top in lp["top_logprobs"] if top for key in top)
        assert_offsets_cover(text, lp["tokens"], lp["text_offset"])
        # A character belongs to the token that completes it: 東 to the second, 京 to
        # the third.
        assert lp["text_offset"][first:first + 3] == [0, 0, 1]
        if max_tokens:
            chunks = [e["choices"][0] for e in await streamed(client, request)]
            assert [o for c in chunks for o in c["logprobs"]["text_offset"]] == lp[
                "text_offset"]

    api(body)


def test_too_many_logprobs_names_the_completions_field(api: Any) -> None:
    """Defect 5: completions' logprobs over the limit got 400 naming top_logprobs (a chat
    field completions does not have)."""

    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        for extra in ({}, {"echo": True}, {"echo": True, "max_tokens": 0}):
            r = await client.post("/v1/completions", json={"prompt": "hi", "logprobs": 25,
                                                           **extra})
            assert r.status_code == 400, r.text
            error = r.json()["error"]
            assert error["param"] == "logprobs" and "top_logprobs" not in error["message"]
        chat = await client.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "hi"}], "logprobs": True,
            "top_logprobs": 25})
        assert chat.status_code == 400 and chat.json()["error"]["param"] == "top_logprobs"

    api(body)


def test_chat_logprobs_bytes_are_the_tokens_own(api: Any) -> None:
    """A token holding part of a character had `bytes` of U+FFFD (239, 191, 189) twice,
    so a client could not put the character together; they are the token's own now."""
    pairs = {SPLIT.encode()[i:i + 2] for i in (0, 2, 4)}

    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        ids = (await client.post("/v1/tokenize", json={"text": SPLIT,
                                                       "add_special_tokens": False})
               ).json()["tokens"]
        r = await client.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
            "logprobs": True, "top_logprobs": 2, "ignore_eos": True, "temperature": 0,
            # Only the three byte-pair tokens can win, and they are all the top two.
            "logit_bias": {str(t): 100 for t in ids}})
        assert r.status_code == 200, r.text
        content = r.json()["choices"][0]["logprobs"]["content"]
        assert len(content) == 3
        for entry in content:
            assert bytes(entry["bytes"]) in pairs, entry
            assert len(entry["top_logprobs"]) == 2
            assert all(bytes(alt["bytes"]) in pairs for alt in entry["top_logprobs"]), entry

    api(body)
