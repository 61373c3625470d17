"""n-gram speculative decoding, ours against llama.cpp's own (`llama-server --spec-type
ngram-simple`), through HTTP, one server at a time, on the same weights (the shipped
default-lm, exported to GGUF f32 by bench/gguf_export.py) and the same token ids: greedy,
batch 1, 160 tokens, each server with and without speculation; tokens/s medians of
rounds and each side's ratio, the CPU named first.

    python -m bench.speculative_peer --llama-server PATH [--rounds 3]

llama-server is built from the llama.cpp source vendored in the llama-cpp-python sdist
(`pip download --no-deps --no-binary :all: llama-cpp-python`, then in vendor/llama.cpp
`cmake -B build -DGGML_NATIVE=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_CURL=OFF` and
`cmake --build build --target llama-server`: about 25 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from app.tokenizer import Tokenizer
from bench.gguf_export import export_llama
from bench.llama_server import LlamaServer
from bench.machine import cpu_info, cpu_line
from bench.speculative import ORDINARY
from tests.live import LiveServer

MODEL = Path(__file__).resolve().parent.parent / "models" / "default-lm"
TOKENS = 160


def ours(prompts: list[list[int]], speculative: bool, rounds: int, compile_mode: str,
         force: bool = False) -> tuple[float, object]:
    args = ["--model", f"default-lm={MODEL}", "--threads", "2"]
    if speculative:  # with force, on whatever the startup check would measure
        check = ', "max_verify_cost": null' if force else ""
        args += ["--speculative-config",
                 f'{{"method": "ngram", "num_speculative_tokens": 4{check}}}']
    with LiveServer(*args, env={"LLM_COMPILE": compile_mode}, ready_timeout=300) as live:
        def run(speculate: bool) -> float:
            return timed(lambda p: httpx.post(live.url + "/v1/completions", json={
                "model": "default-lm", "prompt": p, "max_tokens": TOKENS, "temperature": 0,
                "ignore_eos": True, "speculative": speculate}, timeout=120
                ).json()["usage"]["completion_tokens"], prompts, rounds)

        rate = run(True)
        model = httpx.get(live.url + "/v1/info").json()["models"][0]
        if speculative:  # on or off by its startup check, with the step timings
            print(f"ours ({compile_mode}): {model['speculative']}")
            # the same server (the same kernels, chosen at its startup) without it:
            # requests that turn speculation off
            plain = run(False)
            print(f"ours ({compile_mode}), one server: speculating {rate:.1f} tokens/s, "
                  f"requests with speculation off {plain:.1f}: {rate / plain:.2f}x")
    return rate, model["spec_acceptance_rate"]


def llama(server: str, gguf: Path, prompts: list[list[int]], speculative: bool,
          rounds: int) -> tuple[float, object]:
    args = ["--no-warmup"]
    if speculative:
        args += ["--spec-type", "ngram-simple", "--spec-ngram-simple-size-n", "3",
                 "--spec-ngram-simple-size-m", "4"]
    drafted = accepted = 0
    with LlamaServer(server, gguf, 2, 1, 256, *args, ready_timeout=60) as live:
        def one(p: list[int]) -> int:
            nonlocal drafted, accepted
            out = httpx.post(live.url + "/completion", json={
                "prompt": p, "n_predict": TOKENS, "temperature": 0, "ignore_eos": True,
                "cache_prompt": False}, timeout=120).json()
            timings = out.get("timings", {})
            drafted += int(timings.get("draft_n") or 0)
            accepted += int(timings.get("draft_n_accepted") or 0)
            return int(timings.get("predicted_n") or out.get("tokens_predicted") or 0)

        rate = timed(one, prompts, rounds)
    return rate, (round(accepted / drafted, 3) if drafted else None)


def timed(run: Callable[[list[int]], int], prompts: list[list[int]], rounds: int) -> float:
    run(prompts[0])  # warm-up
    rates = []
    for _ in range(rounds):
        start, tokens = time.perf_counter(), 0
        for p in prompts:
            tokens += run(p)
        rates.append(tokens / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llama-server", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compile", default="auto", choices=["auto", "off"],
                        help="our server's --compile")
    parser.add_argument("--ours-only", action="store_true")
    parser.add_argument("--force", action="store_true",
                        help="our speculation on whatever its startup check measures")
    args = parser.parse_args()
    print(cpu_line(cpu_info()))
    tokenizer = Tokenizer.from_dir(MODEL)
    prompts = [tokenizer.encode(p) for p in ORDINARY]
    with tempfile.TemporaryDirectory() as tmp:
        gguf = export_llama(MODEL, Path(tmp), "f32")
        rows = {}
        runs = [("ours", lambda s: ours(prompts, s, args.rounds, args.compile,
                                                     args.force))]
        if not args.ours_only:
            runs.append(("llama.cpp", lambda s: llama(args.llama_server, gguf, prompts, s,
                                                      args.rounds)))
        for name, run in runs:
            plain, _ = run(False)
            spec, acceptance = run(True)
            rows[name] = (plain, spec, acceptance)
    for name, (plain, spec, acceptance) in rows.items():
        print(f"{name}: plain {plain:.1f} tokens/s, n-gram {spec:.1f} tokens/s = "
              f"{spec / plain:.2f}x (acceptance {acceptance})")
    if "llama.cpp" in rows:
        print(f"ours against llama.cpp: plain {rows['ours'][0] / rows['llama.cpp'][0]:.2f}x, "
              f"n-gram {rows['ours'][1] / rows['llama.cpp'][1]:.2f}x")


if __name__ == "__main__":
    main()
