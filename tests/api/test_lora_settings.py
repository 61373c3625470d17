"""LoRA settings and startup: the flags' syntax and refusals, runtime loading off by
default (404 saying how to turn it on), and an adapter that cannot load stopping the
server with a message naming it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import ValidationError

from app.config import LoraSpec, Settings, lora_specs
from tests.live import LiveServer

MODELS = ["lm=/m/lm", "other=/m/other"]


def test_lora_entries_name_their_base_when_several_models_are_served() -> None:
    s = Settings(model=MODELS, lora=["a=/x", "other/b=/y"])
    assert lora_specs(s) == [LoraSpec("a", Path("/x")), LoraSpec("b", Path("/y"), "other")]
    assert Settings(model=MODELS, lora=["a=/x"]).lora_enabled
    assert not Settings(model=MODELS).lora_enabled


@pytest.mark.parametrize(("overrides", "says"), [
    ({"lora": ["a"]}, "write NAME=DIR or BASE/NAME=DIR"),
    ({"lora": ["lm=/x"]}, "is a served model's name"),
    ({"lora": ["nope/a=/x"]}, "'nope' is not a served model"),
    ({"lora": ["a=/x", "a=/y"]}, "given twice"),
    ({"lora": ["a b=/x"]}, "letters, digits"),
    ({"allow_runtime_lora": True}, "needs --lora-dir"),
    ({"lora_dir": "/no/such/folder"}, "is not a directory"),
    ({"max_loras": 0}, "greater than or equal to 1"),
])
def test_lora_settings_refused_at_startup(overrides: dict[str, Any], says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        Settings(model=MODELS, **overrides)


def test_runtime_loading_is_off_unless_allowed(api: Any) -> None:
    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        for path, req in (("/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "y"}),
                          ("/v1/unload_lora_adapter", {"lora_name": "x"})):
            r = await client.post(path, json=req)
            assert r.status_code == 404, r.text
            assert "--allow-runtime-lora" in r.json()["error"]["message"]
        info = (await client.get("/v1/info")).json()
        assert all(m["max_loras"] == 0 and m["adapters"] == [] for m in info["models"])

    api(body)


def test_runtime_loading_needs_the_api_key(api: Any, tmp_path: Path) -> None:
    async def body(app: FastAPI, client: httpx.AsyncClient) -> None:
        r = await client.post("/v1/load_lora_adapter", json={"lora_name": "x",
                                                             "lora_path": "y"})
        assert r.status_code == 401

    api(body, api_key=["sk-lora"], allow_runtime_lora=True, lora_dir=tmp_path)


def test_an_adapter_that_cannot_load_stops_the_server(hf_checkpoint: Any,
                                                      tmp_path: Path) -> None:
    base = hf_checkpoint("llama_gqa_llama3")[0]
    (tmp_path / "broken").mkdir()
    server = LiveServer("--model", f"lm={base}", "--lora", f"broken={tmp_path / 'broken'}")
    try:
        assert server.proc.wait(timeout=60) == 1
        assert f"--lora broken={tmp_path / 'broken'}" in server.log()
    finally:
        server.stop()
