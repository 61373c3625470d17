"""guidellm (`guidellm run`) against a real server, as a user benchmarking a deployment
runs it: a synchronous and a concurrent profile of short synthetic requests finish with
zero errors, and guidellm's token counts agree with our `usage` (and with /metrics).

guidellm counts tokens with a tokenizer it loads by the served model's name; offline
that name must be a local folder, so it runs from `models/`, where `default-lm` is the
checkpoint. Its input count is the prompt the model saw: through /v1/chat/completions
(its default) that includes the chat template's tokens, so 32 requested prompt tokens
arrive as 32 + the template's overhead (10 for default-lm's ChatML); through
/v1/completions exactly 32."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.live import LiveServer

ROOT = Path(__file__).resolve().parents[2]
CHECKPOINT = ROOT / "models" / "default-lm"
REQUESTS = 16


def counter(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + "{") and 'model="default-lm"' in line:
            return float(line.split()[-1])
    return 0.0


@pytest.mark.parametrize("profile,request_format", [
    ("kind=synchronous", "/v1/chat/completions"),
    ("kind=concurrent,streams=4", "/v1/completions")])
def test_guidellm_run(tmp_path: Path, profile: str, request_format: str) -> None:
    guidellm = Path(sys.executable).with_name("guidellm")
    out = tmp_path / "report.json"
    with LiveServer("--model", f"default-lm={CHECKPOINT}", "--compile", "off",
                    "--prepack", "off") as server:
        overhead = httpx.post(server.url + "/v1/tokenize", json={
            "messages": [{"role": "user", "content": ""}]}).json()["count"]
        prompt_before = counter(server.url, "llm_prompt_tokens_total")
        output_before = counter(server.url, "llm_generation_tokens_total")
        done = subprocess.run(
            [str(guidellm), "run",
             "--backend", f"kind=openai_http,target={server.url},request_format={request_format}",
             "--profile", profile,
             "--constraint", f"kind=max_requests,count={REQUESTS}",
             "--data", "kind=synthetic_text,prompt_tokens=32,output_tokens=16",
             "--output", f"kind=json,path={out}", "--disable-console"],
            cwd=ROOT / "models", capture_output=True, text=True, timeout=600,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
        assert done.returncode == 0, done.stderr[-3000:]
        prompt_delta = counter(server.url, "llm_prompt_tokens_total") - prompt_before
        output_delta = counter(server.url, "llm_generation_tokens_total") - output_before
    requests = json.loads(out.read_text())["benchmarks"][0]["requests"]
    assert requests["errored"] == [] and requests["incomplete"] == []
    ok = requests["successful"]
    assert len(ok) == REQUESTS
    expected_prompt = 32 + (overhead if request_format.endswith("chat/completions") else 0)
    assert [r["prompt_tokens"] for r in ok] == [expected_prompt] * REQUESTS
    assert [r["output_tokens"] for r in ok] == [16] * REQUESTS
    assert sum(r["prompt_tokens"] for r in ok) == prompt_delta
    assert sum(r["output_tokens"] for r in ok) == output_delta
