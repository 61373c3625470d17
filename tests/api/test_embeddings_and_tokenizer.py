"""/v1/embeddings (pooling checked against `transformers`' final hidden states, for a
language model and a classifier) and vLLM's /tokenize, /detokenize, /tokenizer_info."""

from __future__ import annotations

import base64
import struct
from typing import Any

import httpx
import pytest
import torch
from fastapi import FastAPI

IDS = [5, 17, 42, 99, 7, 64, 3]


def reference(ref: Any, ids: list[int], pooling: str) -> torch.Tensor:
    body = ref.model if hasattr(ref, "model") else ref.transformer
    with torch.no_grad():
        states = body(torch.tensor([ids])).last_hidden_state[0].float()  # (T, H), post-norm
    vector = states.mean(0) if pooling == "mean" else states[-1]
    return vector / vector.norm()


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_embeddings_match_transformers(api: Any, hf_checkpoint: Any, pooling: str) -> None:
    _, lm_ref = hf_checkpoint("llama_gqa_llama3")
    _, cls_ref = hf_checkpoint("gpt2_cls")

    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        r = await client.post("/v1/embeddings", json={
            "model": "lm", "input": [IDS, IDS[:3]], "pooling": pooling})
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["object"] == "list" and [d["index"] for d in out["data"]] == [0, 1]
        assert out["usage"] == {"prompt_tokens": len(IDS) + 3, "total_tokens": len(IDS) + 3}
        for d, ids in zip(out["data"], [IDS, IDS[:3]], strict=True):
            got = torch.tensor(d["embedding"])
            assert abs(float(got.norm()) - 1) < 1e-5
            torch.testing.assert_close(got, reference(lm_ref, ids, pooling), atol=1e-4,
                                       rtol=1e-4)
        c = await client.post("/v1/embeddings", json={"model": "cls", "input": IDS,
                                                      "pooling": pooling})
        assert c.status_code == 200, c.text
        torch.testing.assert_close(torch.tensor(c.json()["data"][0]["embedding"]),
                                   reference(cls_ref, IDS, pooling), atol=1e-4, rtol=1e-4)

    api(body)


def test_embeddings_base64_dimensions_and_prefix_cache(api: Any) -> None:
    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        text = "a shared prefix that is long enough to fill several cache blocks " * 2
        first = await client.post("/v1/embeddings", json={"input": text})
        # The same text again: a prefix-cache hit would skip positions mean pooling needs.
        again = await client.post("/v1/embeddings", json={"input": [text, text + " more"]})
        assert again.json()["data"][0]["embedding"] == first.json()["data"][0]["embedding"]
        b64 = await client.post("/v1/embeddings", json={"input": text,
                                                        "encoding_format": "base64"})
        raw = base64.b64decode(b64.json()["data"][0]["embedding"])
        floats = list(struct.unpack(f"<{len(raw) // 4}f", raw))
        assert floats == pytest.approx(first.json()["data"][0]["embedding"], abs=1e-6)
        hidden = len(floats)
        ok = await client.post("/v1/embeddings", json={"input": "x", "dimensions": hidden})
        assert ok.status_code == 200
        bad = await client.post("/v1/embeddings", json={"input": "x", "dimensions": 3})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "dimensions"
        empty = await client.post("/v1/embeddings", json={"input": []})
        assert empty.status_code == 422

    api(body)


def test_vllm_tokenizer_endpoints(api: Any) -> None:
    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        info = await client.get("/tokenizer_info")
        assert info.status_code == 200
        i = info.json()
        assert i["model"] == "lm" and i["eos_token"] and i["chat_template"]
        assert i["eos_token_id"] is not None and i["model_max_length"] > 0
        # lm-evaluation-harness's RemoteTokenizer requests, verbatim.
        tok = await client.post("/tokenize", json={"prompt": "hello world",
                                                   "add_special_tokens": False})
        ids = tok.json()["tokens"]
        assert tok.json()["count"] == len(ids) > 0 and tok.json()["token_strs"] is None
        ours = await client.post("/v1/tokenize", json={"text": "hello world",
                                                       "add_special_tokens": False})
        assert ours.json()["tokens"] == ids
        detok = await client.post("/detokenize", json={"tokens": ids})
        assert detok.json() == {"prompt": "hello world"}
        eos = await client.post("/tokenize", json={"prompt": i["eos_token"],
                                                   "add_special_tokens": False})
        assert eos.json()["tokens"] == [i["eos_token_id"]]
        chat = await client.post("/tokenize", json={
            "messages": [{"role": "user", "content": "hi"}], "return_token_strs": True})
        assert len(chat.json()["token_strs"]) == chat.json()["count"]
        both = await client.post("/tokenize", json={"prompt": "x", "messages": []})
        assert both.status_code == 400
        oov = await client.post("/detokenize", json={"tokens": [10**7]})
        assert oov.status_code == 400

    api(body)
