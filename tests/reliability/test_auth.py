"""Auth: every non-public route refuses a missing or wrong key; the comparison is
constant-time; keys never reach the logs."""

from __future__ import annotations

import asyncio
import hmac
from typing import Any

import httpx
import pytest

from tests.app_helpers import running_app, settings_for
from tests.live import LiveServer

PUBLIC = {"/livez", "/readyz", "/startupz", "/health", "/metrics"}
SECRET = "sk-test-5f1d2c9a8b7e"
WRONG = "sk-wrong-0a0a0a0a0a0a"


def test_every_protected_route_refuses_missing_and_wrong_keys(hf_checkpoint: Any,
                                                              tmp_path: Any) -> None:
    lm, _ = hf_checkpoint("llama_gqa_llama3")
    key_file = tmp_path / "keys"
    key_file.write_text(f"# comment\n{SECRET}\nsk-second\n")
    with LiveServer("--model", f"lm={lm}", "--api-key-file", str(key_file),
                    "--num-kv-blocks", "64", "--block-size", "4") as live:
        spec = httpx.get(live.url + "/openapi.json").json()
        operations = [(path, method) for path, item in spec["paths"].items()
                      for method in item]
        assert len(operations) >= 12
        for path, method in operations:
            for headers in ({}, {"Authorization": f"Bearer {WRONG}"},
                            {"Authorization": SECRET}):
                r = httpx.request(method, live.url + path, headers=headers, json={},
                                  timeout=30)
                if path in PUBLIC:
                    assert r.status_code != 401, path
                else:
                    assert r.status_code == 401, (path, method, headers, r.status_code)
                    assert r.json()["error"]["type"] == "authentication_error"
        for key in (SECRET, "sk-second"):
            ok = httpx.post(live.url + "/v1/generate", json={"prompt": "hi", "max_tokens": 2},
                            headers={"Authorization": f"Bearer {key}"}, timeout=30)
            assert ok.status_code == 200
        log = live.log_path.read_text()
    assert SECRET not in log and WRONG not in log and "sk-second" not in log
    assert "/v1/generate" in log  # the requests were logged, without their keys


def test_key_comparison_is_constant_time(hf_checkpoint: Any,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    lm, _ = hf_checkpoint("llama_gqa_llama3")
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)

    async def main() -> None:
        settings = settings_for(f"lm={lm}", api_key=["k-one", "k-two", "k-three"])
        async with running_app(settings) as (_, client):
            r = await client.get("/v1/models", headers={"Authorization": "Bearer k-one"})
            assert r.status_code == 200
    asyncio.run(main())
    # Every key is compared even after the first one matched: no early exit.
    assert [b for _, b in calls] == [b"k-one", b"k-two", b"k-three"]
