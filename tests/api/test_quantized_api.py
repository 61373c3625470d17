"""A model served quantized says so: /v1/info, the model-info metric's label, and it
answers requests; the other model of the same server stays unquantized."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.api.test_metrics import get_metrics, value


def test_quantization_per_model_in_info_and_metrics(api: Any) -> None:
    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        info = (await client.get("/v1/info")).json()
        by_name = {m["name"]: m for m in info["models"]}
        assert by_name["lm"]["quantization"].startswith("int8; LM head int8")
        # Each product shape's kernel choice (here q|k|v first), from app.modeling.kernel_choice.
        assert "kernels: int8 64->128: 1 row " in by_name["lm"]["quantization"]
        assert by_name["lm"]["weights"] == "not packed (weights quantized)"
        assert by_name["cls"]["quantization"] == "none"
        out = await client.post("/v1/generate", json={"prompt": "hello", "max_tokens": 4,
                                                      "temperature": 0, "ignore_eos": True})
        assert out.status_code == 200 and out.json()["usage"]["completion_tokens"] == 4
        metrics = await get_metrics(client)
        assert value(metrics, "llm_model_info", model="lm", architecture="LlamaForCausalLM",
                     dtype="float32", device="cpu", quantization="int8",
                     version=info["version"]) == 1
        assert value(metrics, "llm_model_info", model="cls",
                     architecture="GPT2ForSequenceClassification", dtype="float32",
                     device="cpu", quantization="none", version=info["version"]) == 1

    api(body, quantization=["lm=int8"])


def test_integer_kernels_are_offered_only_when_the_server_is_told(
        api: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """--integer-kernels: the startup choice times idot beside the others (its ratio is in
    /v1/info); without it, idot is not a candidate. The setting is process-wide, so the
    test gives the module a fresh flag and leaves the original untouched."""
    from app.modeling import quant_kernels

    async def body(app: FastAPI, client: httpx.AsyncClient) -> str:
        info = (await client.get("/v1/info")).json()
        out = await client.post("/v1/generate", json={"prompt": "hello", "max_tokens": 4,
                                                      "temperature": 0, "ignore_eos": True})
        assert out.status_code == 200 and out.json()["usage"]["completion_tokens"] == 4
        return str({m["name"]: m for m in info["models"]}["lm"]["quantization"])

    monkeypatch.setattr(quant_kernels, "_OFFER_INTEGER", [False])
    offered = api(body, quantization=["lm=int8"], integer_kernels=True)
    assert "kernels: int8 64->128: 1 row " in offered and " idot " in offered, offered
    plain = api(body, quantization=["lm=int8"])
    assert "idot" not in plain, plain
