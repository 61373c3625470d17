"""Hostile and malformed requests: each gets a clear 4xx with the one error shape, the
server never crashes and keeps answering."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.live import LiveServer

FLAGS = ("--num-kv-blocks", "256", "--block-size", "4", "--max-num-seqs", "8",
         "--max-num-batched-tokens", "64")


@pytest.fixture(scope="module")
def server(hf_checkpoint: Any) -> Any:
    lm, _ = hf_checkpoint("llama_gqa_llama3")
    cls, _ = hf_checkpoint("gpt2_cls")
    with LiveServer("--model", f"lm={lm}", "--model", f"cls={cls}", *FLAGS) as live:
        yield live


JSON = {"content-type": "application/json"}
CASES: list[tuple[str, str, bytes | dict[str, Any], dict[str, str], int]] = [
    ("invalid JSON", "/v1/generate", b'{"prompt": "hi",', JSON, 400),
    ("JSON not an object", "/v1/generate", b'[1, 2, 3]', JSON, 400),
    ("wrong content type", "/v1/generate", b'prompt=hi', {"content-type": "text/plain"}, 400),
    ("invalid UTF-8", "/v1/generate", b'{"prompt": "\xff\xfe bad"}', JSON, 400),
    ("lone surrogate", "/v1/generate", b'{"prompt": "\\ud800 alone"}', JSON, 400),
    ("lone surrogate in chat", "/v1/chat/completions",
     b'{"messages": [{"role": "user", "content": "\\udfff"}]}', JSON, 400),
    ("lone surrogate label", "/v1/classify",
     b'{"text": "x", "candidate_labels": ["\\ud800"]}', JSON, 422),
    ("NaN temperature", "/v1/generate", b'{"prompt": "hi", "temperature": NaN}', JSON, 422),
    ("infinite top_p", "/v1/generate", b'{"prompt": "hi", "top_p": Infinity}', JSON, 422),
    ("negative temperature", "/v1/generate", {"prompt": "hi", "temperature": -1}, {}, 422),
    ("negative max_tokens", "/v1/generate", {"prompt": "hi", "max_tokens": -5}, {}, 422),
    ("huge max_tokens", "/v1/generate", {"prompt": "hi", "max_tokens": 10**12}, {}, 400),
    ("huge n", "/v1/generate", {"prompt": "hi", "n": 10**6}, {}, 400),
    ("huge top_k", "/v1/predict", {"text": "hi", "top_k": 10**9}, {}, 400),
    ("huge top_logprobs", "/v1/generate", {"prompt": "hi", "top_logprobs": 10**6}, {}, 400),
    ("unknown model", "/v1/generate", {"prompt": "hi", "model": "../../etc/passwd"}, {}, 404),
    ("unknown field", "/v1/predict", {"text": "hi", "evil": True}, {}, 400),
    ("empty prompt", "/v1/generate", {"prompt": ""}, {}, 400),
    ("empty list", "/v1/generate", {"prompt": []}, {}, 422),
    ("too many inputs", "/v1/predict", {"text": ["a"] * 1000}, {}, 400),
    ("wrong type", "/v1/classify", {"text": 42}, {}, 422),
    ("bad logit_bias key", "/v1/generate", {"prompt": "hi", "logit_bias": {"x": 1}}, {}, 400),
    ("token id out of range", "/v1/detokenize", {"tokens": [10**9]}, {}, 400),
    ("stop token out of range", "/v1/generate", {"prompt": "hi", "stop_token_ids": [10**9]},
     {}, 400),
    ("chat with no messages", "/v1/chat/completions", {"messages": []}, {}, 422),
    ("chat with bad role", "/v1/chat/completions",
     {"messages": [{"role": "root", "content": "x"}]}, {}, 422),
]


@pytest.mark.parametrize(("name", "path", "body", "headers", "status"), CASES,
                         ids=[c[0] for c in CASES])
def test_hostile_request_gets_a_clear_answer(server: LiveServer, name: str, path: str,
                                             body: Any, headers: dict[str, str],
                                             status: int) -> None:
    if isinstance(body, bytes):
        r = httpx.post(server.url + path, content=body, headers=headers, timeout=30)
    else:
        r = httpx.post(server.url + path, json=body, timeout=30)
    assert r.status_code == status, r.text
    if status != 200:
        error = r.json()["error"]
        assert error["code"] == status and error["message"] and "Traceback" not in r.text


def test_ten_megabyte_body_is_refused_early(server: LiveServer) -> None:
    body = b'{"prompt": "' + b"a" * (10 * 2**20) + b'"}'
    r = httpx.post(server.url + "/v1/generate", content=body, headers=JSON, timeout=30)
    assert r.status_code == 413 and r.json()["error"]["type"] == "request_too_large"


def test_chunked_body_over_the_limit_is_refused(server: LiveServer) -> None:
    def chunks() -> Any:
        yield b'{"prompt": "'
        for _ in range(40):
            yield b"a" * 65536
        yield b'"}'

    r = httpx.post(server.url + "/v1/generate", content=chunks(), headers=JSON, timeout=30)
    assert r.status_code == 413


def test_hundred_thousand_token_prompt(server: LiveServer) -> None:
    prompt = "ab " * 100_000  # ~100k tokens, within the 1 MiB body limit
    r = httpx.post(server.url + "/v1/generate", json={"prompt": prompt}, timeout=60)
    assert r.status_code == 400 and "too long" in r.json()["error"]["message"]


def test_deeply_nested_json(server: LiveServer) -> None:
    body = b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    r = httpx.post(server.url + "/v1/generate", content=body, headers=JSON, timeout=30)
    assert 400 <= r.status_code < 500


def test_still_healthy_and_correct_afterwards(server: LiveServer) -> None:
    assert httpx.get(server.url + "/readyz").status_code == 200
    a = httpx.post(server.url + "/v1/generate", json={"prompt": "hello", "max_tokens": 8,
                                                      "temperature": 0}, timeout=30).json()
    b = httpx.post(server.url + "/v1/generate", json={"prompt": "hello", "max_tokens": 8,
                                                      "temperature": 0}, timeout=30).json()
    assert a["text"] == b["text"] and a["usage"]["completion_tokens"] == 8
    info = httpx.get(server.url + "/v1/info").json()
    assert all(m["kv_blocks_used"] == 0 for m in info["models"])
    json.dumps(info)
