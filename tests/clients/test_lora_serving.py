"""LoRA adapters served by a real `python -m app serve` on a loopback port: a tiny Llama
with three adapters written by peft (--max-loras 2, so three adapters and the base model
in flight together exercise the scheduler's cap and the runner's eviction), vLLM's
runtime endpoints with every refusal, the adapters in /v1/models, /v1/info and
/metrics, the prefix cache kept apart per adapter, and the official OpenAI client."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.live import LiveServer
from tests.lora_adapters import write_adapter

PROMPTS = ["The meaning of life is", "Once upon a time", "hello world and"]
STARTUP = ("a1", "a2", "a3")


class Lora:
    def __init__(self, server: LiveServer, base: Path, lora_dir: Path, outside: Path
                 ) -> None:
        self.server, self.base, self.lora_dir, self.outside = server, base, lora_dir, outside
        self.url = server.url

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return httpx.post(self.url + path, json=body, timeout=60)

    def complete(self, model: str, prompt: str, max_tokens: int = 8, **extra: Any
                 ) -> dict[str, Any]:
        r = self.post("/v1/completions", {"model": model, "prompt": prompt,
                                          "max_tokens": max_tokens, "temperature": 0,
                                          "ignore_eos": True, **extra})
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    def text(self, model: str, prompt: str, **extra: Any) -> str:
        return str(self.complete(model, prompt, **extra)["choices"][0]["text"])


@pytest.fixture(scope="module")
def lora(hf_checkpoint: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lora]:
    base = hf_checkpoint("llama_gqa_llama3")[0]
    root = tmp_path_factory.mktemp("lora")
    lora_dir, outside = root / "adapters", root / "outside"
    lora_dir.mkdir()
    outside.mkdir()
    for i, name in enumerate(STARTUP):
        write_adapter(base, lora_dir / name, seed=i + 1)
    write_adapter(base, lora_dir / "runtime", seed=7)
    write_adapter(base, outside / "secret", seed=8)
    args = ["--model", f"lm={base}", *[a for n in STARTUP for a in
                                       ("--lora", f"{n}={lora_dir / n}")],
            "--max-loras", "2", "--allow-runtime-lora", "--lora-dir", str(lora_dir),
            "--metrics-compat", "vllm", "--block-size", "4", "--num-kv-blocks", "512",
            "--max-num-seqs", "8", "--max-num-batched-tokens", "64"]
    with LiveServer(*args, env={"OMP_NUM_THREADS": "1"}) as server:
        yield Lora(server, base, lora_dir, outside)


def test_models_lists_each_adapter_with_its_parent_and_folder(lora: Lora) -> None:
    data = httpx.get(lora.url + "/v1/models").json()["data"]
    by_id = {m["id"]: m for m in data}
    assert by_id["lm"]["parent"] is None and by_id["lm"]["root"] == str(lora.base)
    for name in STARTUP:
        assert by_id[name]["parent"] == "lm"
        assert by_id[name]["root"] == str((lora.lora_dir / name).resolve())
    info = httpx.get(lora.url + "/v1/info").json()["models"][0]
    assert info["max_loras"] == 2
    assert [(a["name"], a["rank"]) for a in info["adapters"]] == [(n, 4) for n in STARTUP]


def test_mixed_batches_equal_each_request_alone(lora: Lora) -> None:
    models = ["lm", *STARTUP]
    alone = {(m, p): lora.text(m, p) for m in models for p in PROMPTS}
    for p in PROMPTS:  # each adapter really changes the answer (else this proves nothing)
        assert len({alone[(m, p)] for m in models}) == len(models), p
    jobs = [(m, p) for _ in range(2) for m in models for p in PROMPTS]
    with ThreadPoolExecutor(len(jobs)) as pool:
        together = list(pool.map(lambda job: lora.text(*job), jobs))
    assert together == [alone[job] for job in jobs]


def test_every_endpoint_that_takes_a_language_model_takes_an_adapter(lora: Lora) -> None:
    calls: list[tuple[str, dict[str, Any]]] = [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                                  "max_tokens": 3}),

        ("/v1/responses", {"input": "hi", "max_output_tokens": 3}),
        ("/v1/messages", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}),
        ("/v1/generate", {"prompt": "hi", "max_tokens": 3}),
        ("/v1/predict", {"text": "hi", "top_k": 3}),
        ("/v1/perplexity", {"text": "hello world and more"}),
        ("/v1/tokenize", {"text": "hi"}),
        ("/v1/embeddings", {"input": "hi"}),
    ]
    for path, body in calls:
        r = lora.post(path, {"model": "a1", **body})
        assert r.status_code == 200, (path, r.text)
        assert r.json()["model"] == "a1", path
    # structured output: constraints are compiled for the base model's tokenizer, shared
    r = lora.post("/v1/chat/completions", {
        "model": "a2", "messages": [{"role": "user", "content": "pick"}], "max_tokens": 5,
        "structured_outputs": {"choice": ["yes", "no"]}})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] in (
        "yes", "no"), r.text
    # and the adapter's own numbers, not the base model's
    base = lora.post("/v1/perplexity", {"model": "lm", "text": "hello world and more"})
    adapted = lora.post("/v1/perplexity", {"model": "a1", "text": "hello world and more"})
    assert base.json()["perplexity"] != adapted.json()["perplexity"]
    unknown = lora.post("/v1/generate", {"model": "nope", "prompt": "hi"})
    assert unknown.status_code == 404 and "a1" in unknown.json()["error"]["message"]


def test_the_prefix_cache_is_never_shared_between_base_and_adapter(lora: Lora) -> None:
    prompt = "a prompt long enough to fill several blocks of four tokens each"
    lora.complete("lm", prompt)
    again = lora.complete("lm", prompt)
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] > 0  # caching is on
    first = lora.complete("a2", prompt)
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    # the adapter's own answer: the same as with a namespace nothing else shares
    fresh = lora.complete("a2", prompt, cache_salt="never-used-before")
    assert first["choices"][0]["text"] == fresh["choices"][0]["text"]
    assert first["choices"][0]["text"] != again["choices"][0]["text"]
    # and an adapter reuses its own blocks
    second = lora.complete("a2", prompt)
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    assert second["choices"][0]["text"] == first["choices"][0]["text"]


def test_the_openai_client_names_an_adapter_as_its_model(lora: Lora) -> None:
    import openai

    client = openai.OpenAI(base_url=lora.url + "/v1", api_key="unused")
    completion = client.completions.create(model="a3", prompt=PROMPTS[0], max_tokens=8,
                                           temperature=0, extra_body={"ignore_eos": True})
    assert completion.model == "a3"
    assert completion.choices[0].text == lora.text("a3", PROMPTS[0])
    chat = client.chat.completions.create(
        model="a3", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert chat.model == "a3" and chat.choices[0].message.content is not None
    assert any(m.id == "a3" for m in client.models.list().data)


def _lora_info(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            out.append((labels, float(line.rsplit(" ", 1)[1])))
    return out


def test_lora_metrics_name_the_running_adapters(lora: Lora) -> None:
    before = _lora_info(httpx.get(lora.url + "/metrics").text, "vllm:lora_requests_info")
    assert len(before) == 1 and before[0][0]["max_lora"] == "2"
    assert before[0][0]["model_name"] == "lm"
    seen: set[str] = set()
    with httpx.stream("POST", lora.url + "/v1/completions", timeout=60, json={
            "model": "a1", "prompt": "hi", "max_tokens": 200, "ignore_eos": True,
            "stream": True}) as r:
        for _ in r.iter_lines():
            for labels, _value in _lora_info(httpx.get(lora.url + "/metrics").text,
                                             "vllm:lora_requests_info"):
                seen.add(labels["running_lora_adapters"])
            if "a1" in seen:
                break
    assert "a1" in seen
    text = httpx.get(lora.url + "/metrics").text
    after = _lora_info(text, "vllm:lora_requests_info")
    assert after[0][1] > before[0][1]  # the time of the last step moved on
    ours = _lora_info(text, "llm_lora_requests_info")
    assert ours and ours[0][0]["max_lora"] == "2"
    resident = {labels["adapter"]: value
                for labels, value in _lora_info(text, "llm_lora_adapter_resident")}
    assert resident["a1"] == 1.0 and set(resident) == set(STARTUP)
    assert sum(resident.values()) == 2  # --max-loras 2: two of the three at a time


def test_runtime_load_use_and_unload(lora: Lora) -> None:
    r = lora.post("/v1/load_lora_adapter", {"lora_name": "rt", "lora_path": "runtime"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert r.text == "Success: LoRA adapter 'rt' added successfully."
    assert lora.text("rt", PROMPTS[0]) != lora.text("lm", PROMPTS[0])
    ids = {m["id"]: m for m in httpx.get(lora.url + "/v1/models").json()["data"]}
    assert ids["rt"]["parent"] == "lm"
    r = lora.post("/v1/unload_lora_adapter", {"lora_name": "rt"})
    assert r.status_code == 200 and r.text == "Success: LoRA adapter 'rt' removed successfully."
    gone = lora.post("/v1/completions", {"model": "rt", "prompt": "hi"})
    assert gone.status_code == 404, gone.text
    assert "rt" not in {m["id"] for m in httpx.get(lora.url + "/v1/models").json()["data"]}
    # loaded again (absolute path this time), it serves as before
    r = lora.post("/v1/load_lora_adapter", {"lora_name": "rt",
                                            "lora_path": str(lora.lora_dir / "runtime")})
    assert r.status_code == 200, r.text
    assert lora.post("/v1/unload_lora_adapter", {"lora_name": "rt"}).status_code == 200


def _bad_folders(lora: Lora) -> dict[str, str]:
    """Folders inside --lora-dir that hold no usable adapter, by what is wrong."""
    d = lora.lora_dir
    if not (d / "escape").exists():
        os.symlink(lora.outside / "secret", d / "escape")
        linked = d / "linked-file"
        linked.mkdir()
        (linked / "adapter_config.json").write_text(
            (d / "a1" / "adapter_config.json").read_text())
        os.symlink(lora.outside / "secret" / "adapter_model.safetensors",
                   linked / "adapter_model.safetensors")
        (d / "empty").mkdir()
        garbled = d / "garbled"
        garbled.mkdir()
        (garbled / "adapter_config.json").write_text("{not json")
        (garbled / "adapter_model.safetensors").write_bytes(b"\x00" * 16)
        pickled = d / "pickled"
        pickled.mkdir()
        (pickled / "adapter_config.json").write_text(
            (d / "a1" / "adapter_config.json").read_text())
        (pickled / "adapter_model.bin").write_bytes(b"\x80\x04not really")
        write_adapter(lora.base, d / "rank32", seed=9, rank=32)
    return {"empty": "empty", "garbled": "garbled", "pickled": "pickled",
            "rank32": "rank32"}


@pytest.mark.parametrize(("body", "status", "says"), [
    ({"lora_name": "x", "lora_path": "/etc"}, 400, "outside"),
    ({"lora_name": "x", "lora_path": "../outside/secret"}, 400, "outside"),
    ({"lora_name": "x", "lora_path": "escape"}, 400, "outside"),
    ({"lora_name": "x", "lora_path": "linked-file"}, 400, "links outside"),
    ({"lora_name": "x", "lora_path": "no-such-folder"}, 400, "not a folder"),
    ({"lora_name": "x", "lora_path": "empty"}, 400, ""),
    ({"lora_name": "x", "lora_path": "garbled"}, 400, ""),
    ({"lora_name": "x", "lora_path": "pickled"}, 400, "safetensors"),
    ({"lora_name": "x", "lora_path": "rank32"}, 400, "rank"),
    ({"lora_name": "a1", "lora_path": "runtime"}, 400, "has already been loaded"),
    ({"lora_name": "lm", "lora_path": "runtime"}, 400, "served model"),
    ({"lora_name": "bad name", "lora_path": "runtime"}, 400, "letters"),
    ({"lora_name": "", "lora_path": "runtime"}, 400, "must be provided"),
    ({"lora_name": "x", "lora_path": "runtime", "base_model_name": "nope"}, 404, "nope"),
    ({"lora_name": "x", "lora_path": "runtime", "load_inplace": True}, 400, "unload"),
    ({"lora_name": "x", "lora_path": "runtime", "extra": 1}, 400, "extra"),
], ids=["absolute-outside", "dot-dot", "symlinked-folder", "symlinked-file", "missing",
        "empty-folder", "garbled-files", "bin-weights", "rank-above-max", "duplicate",
        "model-name", "bad-name", "no-name", "unknown-base", "load-inplace", "unknown-field"])
def test_runtime_load_refusals(lora: Lora, body: dict[str, Any], status: int,
                               says: str) -> None:
    _bad_folders(lora)
    r = lora.post("/v1/load_lora_adapter", body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == status and says in error["message"], error
    # nothing half-loaded is left behind under the name
    names = {m["id"] for m in httpx.get(lora.url + "/v1/models").json()["data"]}
    assert names == {"lm", *STARTUP}


def test_unloading_an_unknown_adapter_is_404(lora: Lora) -> None:
    r = lora.post("/v1/unload_lora_adapter", {"lora_name": "never-loaded"})
    assert r.status_code == 404
    assert r.json()["error"]["message"] == "The lora adapter 'never-loaded' cannot be found."
    assert lora.post("/v1/unload_lora_adapter", {"lora_name": "lm"}).status_code == 404


def test_unload_lets_requests_in_flight_finish(lora: Lora) -> None:
    assert lora.post("/v1/load_lora_adapter", {"lora_name": "busy",
                                               "lora_path": "runtime"}).status_code == 200
    alone = lora.text("busy", PROMPTS[1], max_tokens=200)
    events: list[str] = []
    with httpx.stream("POST", lora.url + "/v1/completions", timeout=60, json={
            "model": "busy", "prompt": PROMPTS[1], "max_tokens": 200, "temperature": 0,
            "ignore_eos": True, "stream": True}) as stream:
        lines = stream.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        with ThreadPoolExecutor(1) as pool:
            unloading = pool.submit(lora.post, "/v1/unload_lora_adapter",
                                    {"lora_name": "busy"})
            refused = None
            while not unloading.done():  # new requests are refused while it waits
                r = lora.post("/v1/completions", {"model": "busy", "prompt": "hi",
                                                  "max_tokens": 1})
                if r.status_code == 404:
                    refused = r
                    break
            events = [first, *(line for line in lines if line.startswith("data: "))]
            assert unloading.result().status_code == 200
    assert refused is not None, "the unload answered before refusing anything"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events if e != "data: [DONE]"]
    text = "".join(c["choices"][0]["text"] for c in chunks if c.get("choices"))
    assert text == alone  # the stream ran to its end, with the adapter throughout
