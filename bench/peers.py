"""Peer benchmark: our engine against `transformers` (eager and torch.compile'd) and
llama.cpp, in one run, on the same weights and dtype, on the machine at hand.

    python -m bench.peers                 # everything (about 80 minutes on 2 cores)
    python -m bench.peers --quick         # fewer tokens and repeats (a smoke run)
    python -m bench.peers --skip hf-compile,http
    python -m bench.peers --models llama-134m --quantized   # + int8/int4 and llama.cpp q8_0/q4_0
    python -m bench.peers --skip llama-server   # without the server-against-server section

Models: a random Llama-style 134M (12 layers x 768, 32k vocabulary: the shape of the
peer baselines the project started from) and a random GPT-2 124M, both written as
Hugging Face checkpoints, and the shipped default-lm. llama.cpp (optional: `make
install-peers` builds llama-cpp-python from source) runs the Llama weights from a GGUF
written here with the `gguf` package; without it, its rows are skipped with the reason
printed.

Dtype: bf16 on CPUs with native bf16 (AVX512-BF16 or AMX), fp32 otherwise, for every
engine alike (`--dtype` overrides). Scenarios, every request ignoring EOS:
  a  batch-1 decode, ms/token (32-token prompt, 128 new tokens; after the first token)
  p  prefill of a 512-token prompt, tokens/s
  b  32 concurrent requests, equal lengths (32-token prompts, 128 new), aggregate tok/s
  c  mixed lengths (64 requests, bench.engine's workload c), useful tok/s
Baselines: `transformers` one padded generate() per batch ("static batching"), eager and
compiled (static cache + torch.compile). Batch-1 decode is measured in --rounds
interleaved rounds (each engine once per round); its ratios are medians of the per-round
ratios, so a slow minute of the shared machine does not favour one engine. Ours:
requests submitted concurrently to the engine in process (and batch-1 decode also
through HTTP, streamed from a real server).
The CPU (model, ISA flags), torch and threads, memory bandwidth and GEMM rate are
measured in the same run; every timed block first waits for the machine to be idle.
Last, where llama.cpp's own server is built (`make install-peers`), bench.server_peer:
our server against llama-server through HTTP at 1, 8 and 32 concurrent requests.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import torch

from app.checkpoint import load_model, read_json
from app.engine.compute import compute_thread
from app.engine.engine import Engine, EngineConfig
from app.engine.scheduler import SchedulerConfig
from app.modeling.config import config_from_hf
from app.sampling_params import SamplingParams
from app.tokenizer import Tokenizer
from bench.engine import make_workloads
from bench.machine import ceilings, cpu_info, environment, kind, median_seconds, slug, wait_idle

log = logging.getLogger("bench")
ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "models" / "default-lm"
PROMPT, NEW, PREFILL, BATCH = 32, 128, 512, 32


# ---------------------------------------------------------------------------- checkpoints


def make_checkpoint(name: str, directory: Path) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if name == "llama-134m":
        config = LlamaConfig(vocab_size=32000, hidden_size=768, intermediate_size=2048,
                             num_hidden_layers=12, num_attention_heads=12,
                             num_key_value_heads=12, max_position_embeddings=2048,
                             tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                             pad_token_id=0)
        model: Any = LlamaForCausalLM(config)
    else:
        model = GPT2LMHeadModel(GPT2Config())
    model.eval().save_pretrained(directory)
    Tokenizer.from_dir(TOKENIZER).save(directory)  # ids past its vocabulary decode to ""
    return directory


def ids(rng: random.Random, vocab: int, n: int) -> list[int]:
    return [rng.randrange(10, min(vocab, 8000)) for _ in range(n)]


# ---------------------------------------------------------------------------- ours


class Ours:
    """The engine in process, on its compute thread, with the server's defaults."""

    def __init__(self, directory: Path, dtype: str, compile_mode: str, prepack: str,
                 quantization: str = "none") -> None:
        self.pool = compute_thread()
        self.loaded = self.pool.submit(load_model, directory, dtype, "cpu", quantization
                                       ).result()
        self.tokenizer = Tokenizer.from_dir(directory)
        self.runner = asyncio.Runner()
        config = EngineConfig(
            block_size=16, num_kv_blocks=4096, compile=compile_mode, prepack=prepack,
            scheduler=SchedulerConfig(max_num_seqs=64, max_num_batched_tokens=512,
                                      max_waiting_requests=1024, max_waiting_tokens=10**7))
        self.engine = Engine(self.loaded, self.tokenizer, config, executor=self.pool)
        started = time.perf_counter()
        self.runner.run(self.engine.start())
        self.startup_s = time.perf_counter() - started
        self.notes = {"compile": self.engine.runner.compile_reason,
                      "weights": self.engine.runner.pack_reason,
                      "quantization": self.engine.runner.quantization}

    def close(self) -> None:
        self.runner.run(self.engine.shutdown())
        self.runner.close()
        self.pool.shutdown()

    def _run(self, prompts: list[list[int]], outputs: list[int]) -> tuple[float, list[Any]]:
        async def main() -> tuple[float, list[Any]]:
            start = time.perf_counter()
            outs = await asyncio.gather(*(
                self.engine.generate(p, SamplingParams(max_tokens=o, temperature=0.0,
                                                       ignore_eos=True))
                for p, o in zip(prompts, outputs, strict=True)))
            return time.perf_counter() - start, outs

        wait_idle()
        return self.runner.run(main())

    def decode_ms(self, prompt: list[int], new: int) -> float:
        _, outs = self._run([prompt], [new])
        # per token, however the engine's steps grouped them (multi-step decoding)
        tpot = outs[0].times.time_per_output_token()
        assert tpot is not None, "fewer than two tokens"
        return 1000 * tpot

    def prefill_tok_s(self, prompt: list[int]) -> float:
        _, outs = self._run([prompt], [1])
        t = outs[0].times
        return len(prompt) / (t.first_token - t.arrival)

    def batch_tok_s(self, prompts: list[list[int]], outputs: list[int]) -> float:
        seconds, _ = self._run(prompts, outputs)
        return sum(outputs) / seconds


# ---------------------------------------------------------------------------- transformers


class HF:
    def __init__(self, directory: Path, dtype: torch.dtype, compiled: bool) -> None:
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype).eval()
        self.compiled = compiled
        self.kwargs: dict[str, Any] = {"do_sample": False, "pad_token_id": 0}
        if compiled:
            from transformers.generation.configuration_utils import CompileConfig

            config = CompileConfig(mode="default", fullgraph=False)
            config._compile_all_devices = True  # transformers compiles on GPUs only by default
            self.kwargs.update(cache_implementation="static", compile_config=config)
        self.forward = torch.compile(self.model.forward) if compiled else self.model.forward

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], new: int) -> list[float]:
        """Left-padded batch, as generate() wants; returns the time of each step."""
        from transformers import LogitsProcessor, LogitsProcessorList

        stamps: list[float] = []

        class Stamp(LogitsProcessor):
            def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
                stamps.append(time.perf_counter())
                return scores

        width = max(len(p) for p in prompts)
        batch = torch.zeros((len(prompts), width), dtype=torch.long)
        mask = torch.zeros_like(batch)
        for row, p in enumerate(prompts):
            batch[row, width - len(p):] = torch.tensor(p)
            mask[row, width - len(p):] = 1
        out = self.model.generate(input_ids=batch, attention_mask=mask, max_new_tokens=new,
                                  min_new_tokens=new,
                                  logits_processor=LogitsProcessorList([Stamp()]),
                                  **self.kwargs)
        if out.shape[1] != width + new:
            raise RuntimeError(f"generate() made {out.shape[1] - width} tokens, not {new}")
        return stamps

    def decode_ms(self, prompt: list[int], new: int) -> float:
        self.generate([prompt], new)  # warm-up (compiles, when compiled)
        wait_idle()
        stamps = self.generate([prompt], new)
        return 1000 * (stamps[-1] - stamps[0]) / (len(stamps) - 1)

    @torch.inference_mode()
    def prefill_tok_s(self, prompt: list[int], repeats: int) -> float:
        batch = torch.tensor([prompt])
        self.forward(input_ids=batch, use_cache=True)
        wait_idle()
        return len(prompt) / median_seconds(
            lambda: self.forward(input_ids=batch, use_cache=True), repeats, warmup=0)

    def batch_tok_s(self, prompts: list[list[int]], outputs: list[int]) -> float:
        """Useful tokens/s of one padded generate() running to the longest output."""
        self.generate(prompts[:2], 2) if not self.compiled else self.generate(prompts, 4)
        wait_idle()
        start = time.perf_counter()
        self.generate(prompts, max(outputs))
        return sum(outputs) / (time.perf_counter() - start)


# ---------------------------------------------------------------------------- llama.cpp


def llama_cpp_problem() -> str | None:
    try:
        import gguf  # noqa: F401
        import llama_cpp  # noqa: F401
    except ImportError as exc:
        return f"{exc.name} is not installed (make install-peers builds it, 6-25 min)"
    return None


class LlamaCpp:
    def __init__(self, gguf_path: Path, threads: int) -> None:
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(gguf_path), n_ctx=2048, n_batch=512, n_ubatch=512,
                         n_threads=threads, n_threads_batch=threads, verbose=False)

    def decode_ms(self, prompt: list[int], new: int) -> float:
        import numpy as np

        def once() -> float:
            self.llm.reset()
            self.llm.eval(prompt)
            steps = []
            for _ in range(new - 1):
                token = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
                start = time.perf_counter()
                self.llm.eval([token])
                steps.append(time.perf_counter() - start)
            return 1000 * statistics.median(steps)

        once()
        wait_idle()
        return once()

    def prefill_tok_s(self, prompt: list[int], repeats: int) -> float:
        def once() -> None:
            self.llm.reset()
            self.llm.eval(prompt)

        once()
        wait_idle()
        return len(prompt) / median_seconds(once, repeats, warmup=0)


# ---------------------------------------------------------------------------- over HTTP


def http_decode_ms(directory: Path, dtype: str, prompt_text: str, new: int) -> float:
    """Batch-1 decode through a real server: gaps between streamed events."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "app", "serve", "--model", f"m={directory}",
                             "--dtype", dtype, "--port", str(port), "--log-level", "warning"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        body = {"prompt": prompt_text, "max_tokens": new, "temperature": 0, "ignore_eos": True,
                "stream": True}
        httpx.post(url + "/v1/generate", json={**body, "stream": False}, timeout=300)
        wait_idle()
        stamps = []
        with httpx.stream("POST", url + "/v1/generate", json=body, timeout=300) as r:
            for line in r.iter_lines():
                if line.startswith("data: {\"index\""):
                    stamps.append(time.perf_counter())
        gaps = [b - a for a, b in itertools.pairwise(stamps[1:])]  # after the first
        return 1000 * statistics.median(gaps)
    finally:
        proc.terminate()
        proc.wait(timeout=60)


# ---------------------------------------------------------------------------- the run


def measure(engine: str, name: str, directory: Path, dtype: str, quick: bool,
            compile_mode: str, prepack: str, only_decode: bool = False) -> dict[str, Any]:
    """Every scenario of one engine on one model (or batch-1 decode only), in this
    process."""
    torch_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    rng = random.Random(0)
    cfg = config_from_hf(read_json(directory / "config.json"))
    new = 32 if quick else NEW
    prompt = ids(rng, cfg.vocab_size, PROMPT)
    long_prompt = ids(rng, cfg.vocab_size, min(PREFILL, cfg.max_model_len - 2))
    batch_prompts = [ids(rng, cfg.vocab_size, PROMPT) for _ in range(BATCH)]
    batch_outputs = [min(new, cfg.max_model_len - PROMPT)] * BATCH
    mixed = make_workloads(cfg.vocab_size, cfg.max_model_len, quick)["c"]
    repeats = 3 if quick else 5
    small = name == "default-lm"  # the shipped model: batched scenarios only
    batched = not only_decode
    rows: dict[str, float] = {}
    notes: dict[str, Any] = {}
    if engine == "ours" or engine in QUANTIZED_OURS:
        # ours-int8 / ours-int4: quantized at load; ours-f32: float32 whatever the CPU.
        variant = engine.removeprefix("ours").removeprefix("-") or "none"
        ours = Ours(directory, "float32" if variant == "f32" else dtype, compile_mode,
                    prepack, "none" if variant == "f32" else variant)
        notes = {"startup_s": ours.startup_s, **ours.notes}
        if not small:
            rows["a"] = statistics.median(ours.decode_ms(prompt, new) for _ in range(3))
        if not small and batched:
            # A fresh prompt each time: a repeated one would be served from the prefix cache.
            rows["p"] = statistics.median(
                ours.prefill_tok_s(ids(rng, cfg.vocab_size, len(long_prompt)))
                for _ in range(repeats))
        if batched:
            rows["b"] = statistics.median(ours.batch_tok_s(batch_prompts, batch_outputs)
                                          for _ in range(3))
            rows["c"] = statistics.median(ours.batch_tok_s(mixed.prompts, mixed.outputs)
                                          for _ in range(2))
        ours.close()
    elif engine == "ours-http":
        rows["a"] = http_decode_ms(directory, dtype, " ".join(["hello"] * PROMPT), new)
    elif engine in ("hf-eager", "hf-compile"):
        hf = HF(directory, torch_dtype, compiled=engine == "hf-compile")
        if not small:
            rows["a"] = hf.decode_ms(prompt, new)
        if not small and batched:
            rows["p"] = hf.prefill_tok_s(long_prompt, repeats)
        if batched:
            rows["b"] = hf.batch_tok_s(batch_prompts, batch_outputs)
        if batched and engine == "hf-eager":
            rows["c"] = hf.batch_tok_s(mixed.prompts, mixed.outputs)
    elif engine.startswith("llama.cpp"):
        from bench.gguf_export import export_llama

        with tempfile.TemporaryDirectory() as tmp:
            path = export_llama(directory, Path(tmp), engine.split("-", 1)[1])
            cpp = LlamaCpp(path, torch.get_num_threads())
            rows["a"] = cpp.decode_ms(prompt, new)
            if batched:
                rows["p"] = cpp.prefill_tok_s(long_prompt, repeats)
    else:
        raise ValueError(f"unknown engine {engine!r}")
    return {"rows": rows, "notes": notes}


QUANTIZED_OURS = ("ours-int8", "ours-int4", "ours-f32")


def engines_for(name: str, dtype: str, skip: set[str], quantized: bool = False) -> list[str]:
    engines = ["ours"]
    if name != "default-lm":
        engines += ["ours-http", "hf-eager", "hf-compile"]
        if name == "llama-134m":
            engines.append("llama.cpp-" + ("bf16" if dtype == "bfloat16" else "f32"))
    else:
        engines.append("hf-eager")
    if quantized and name != "default-lm":
        engines += ["ours-int8", "ours-int4"] + (["ours-f32"] if dtype != "float32" else [])
        if name == "llama-134m":
            engines += ["llama.cpp-q8_0", "llama.cpp-q4_0"]
    return [e for e in engines if e not in skip and e.split("-")[0] not in skip]


def run_isolated(engine: str, name: str, directory: Path, dtype: str,
                 args: argparse.Namespace, only_decode: bool = False) -> dict[str, Any]:
    """One engine in a process of its own: OpenMP thread teams, allocator state and
    compiled code of one engine never slow down the next (see app.engine.compute)."""
    command = [sys.executable, "-m", "bench.peers", "--worker", engine, "--worker-model", name,
               "--worker-dir", str(directory), "--dtype", dtype, "--compile", args.compile,
               "--prepack", args.prepack] + (["--quick"] if args.quick else []) + (
               ["--threads", str(args.threads)] if args.threads else []) + (
               ["--only-decode"] if only_decode else [])
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        log.error("%s on %s failed: %s", engine, name, done.stderr[-2000:])
        return {"rows": {}, "notes": {"failed": done.stderr[-500:]}}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def bench_model(name: str, directory: Path, dtype: str, args: argparse.Namespace
                ) -> dict[str, Any]:
    skip = set(args.skip.split(",")) if args.skip else set()
    result: dict[str, Any] = {"model": name, "dtype": dtype, "rows": {}, "notes": {}}
    if name == "llama-134m" and "llama.cpp" not in skip and llama_cpp_problem():
        result["notes"]["llama.cpp"] = f"skipped: {llama_cpp_problem()}"
        log.warning("llama.cpp skipped: %s", llama_cpp_problem())
        skip.add("llama.cpp")
    for engine in engines_for(name, dtype, skip, args.quantized):
        log.info("%s: %s", name, engine)
        measured = run_isolated(engine, name, directory, dtype, args)
        for scenario, value in measured["rows"].items():
            result["rows"].setdefault(scenario, {})[engine] = value
            log.info("%s %s %s: %.2f", name, scenario, engine, value)
        result["notes"][engine] = measured["notes"]
    # Batch-1 decode is the figure most at the mercy of a shared machine: it is measured
    # again in interleaved rounds (every engine once per round), and each peer's ratio is
    # the median of its per-round ratios to ours.
    decode = {e: [v] for e, v in result["rows"].get("a", {}).items()}
    for _ in range(args.rounds - 1):
        for engine in decode:
            value = run_isolated(engine, name, directory, dtype, args, True)["rows"].get("a")
            if value is not None:
                decode[engine].append(value)
    if decode:
        result["decode_rounds"] = decode
        result["rows"]["a"] = {e: statistics.median(v) for e, v in decode.items()}
        ours = decode.get("ours", [])
        result["decode_ratio"] = {
            e: statistics.median(p / o for p, o in zip(v, ours, strict=False))
            for e, v in decode.items() if e != "ours" and ours}
    return result


SCENARIOS = {"a": "batch-1 decode ms/token (lower is better)",
             "p": "prefill 512 tokens, tok/s", "b": "32 concurrent equal requests, tok/s",
             "c": "mixed lengths (64 requests), tok/s"}


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| model | scenario | engine | figure | ours vs it |", "|---|---|---|---|---|"]
    for r in results:
        for scenario, rows in r["rows"].items():
            ours = rows.get("ours")
            for engine, value in rows.items():
                if ours is None or engine == "ours":
                    ratio = ""
                elif scenario == "a":
                    ratio = f"{r.get('decode_ratio', {}).get(engine, value / ours):.2f}x"
                else:
                    ratio = f"{ours / value:.2f}x"
                lines.append(f"| {r['model']} ({r['dtype']}) | {SCENARIOS[scenario]} | {engine} "
                             f"| {value:.1f} | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", default="llama-134m,gpt2-124m,default-lm")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--compile", default="auto", choices=["auto", "on", "off"])
    parser.add_argument("--prepack", default="auto", choices=["auto", "on", "off"])
    parser.add_argument("--skip", default="", help="comma list of: ours-http, hf-eager, "
                                                   "hf-compile, llama.cpp, llama-server")
    parser.add_argument("--llama-server", type=Path, default=None,
                        help="llama-server binary for the server-against-server section "
                             "(default: $LLAMA_SERVER, else what make install-peers built)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds of batch-1 decode per engine")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--quantized", action="store_true",
                        help="add ours int8 / int4 (and fp32) and llama.cpp q8_0 / q4_0")
    parser.add_argument("--only-decode", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-model", help=argparse.SUPPRESS)
    parser.add_argument("--worker-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level="INFO", format="%(asctime)s %(message)s", stream=sys.stderr)
    for noisy in ("transformers", "app", "torch"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        measured = measure(args.worker, args.worker_model, args.worker_dir, args.dtype,
                           args.quick, args.compile, args.prepack, args.only_decode)
        sys.stdout.write(json.dumps(measured) + "\n")
        return
    cpu = cpu_info()
    dtype = args.dtype if args.dtype != "auto" else (
        "bfloat16" if cpu["native_bf16"] else "float32")
    machine = {"cpu": cpu, "kind": kind(cpu), **environment(),
               "ceilings": ceilings(cpu["native_bf16"])}
    log.info("machine: %s", json.dumps(machine))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            if name == "default-lm":
                directory = ROOT / "models" / "default-lm"
                model_dtype = "float32"  # what --dtype auto serves it in (6.5M parameters)
            else:
                directory = make_checkpoint(name, Path(tmp) / name)
                model_dtype = dtype
            results.append(bench_model(name, directory, model_dtype, args))
    report = table(results)
    out = args.out or ROOT / "docs" / f"bench-peers-{slug(machine['kind'])}.json"
    out.write_text(json.dumps({"machine": machine, "results": results, "quick": args.quick,
                               "date": time.strftime("%Y-%m-%d")}, indent=2) + "\n")
    sys.stdout.write(f"Machine: {machine['kind']} ({cpu['model']}, family {cpu['family']} "
                     f"model {cpu['model_number']}; {', '.join(cpu['isa'])}), torch "
                     f"{machine['torch']}, {machine['threads']} threads; "
                     + ", ".join(f"{k} {v:.1f}" for k, v in machine["ceilings"].items())
                     + "\n\n" + report + "\n")
    if "llama-server" not in args.skip.split(","):
        server_section(args)


def server_section(args: argparse.Namespace) -> None:
    """Ours against llama.cpp's own server, both through HTTP (bench.server_peer), in a
    process of its own, after every in-process engine is gone."""
    from bench.llama_server import default_binary

    binary = args.llama_server or default_binary()
    models = [m for m in args.models.split(",") if m in ("llama-134m", "default-lm")]
    if binary is None or not models:
        reason = ("llama-server is not built (make install-peers builds it, about 25 min)"
                  if binary is None else "no llama-134m or default-lm among --models")
        sys.stdout.write(f"\nServer against server: skipped: {reason}\n")
        return
    sys.stdout.write("\nServer against server (bench.server_peer):\n")
    sys.stdout.flush()
    subprocess.run([sys.executable, "-m", "bench.server_peer", "--llama-server", str(binary),
                    "--rounds", str(args.rounds), "--models", ",".join(models),
                    "--threads", str(args.threads or 2)], cwd=ROOT, check=False)


if __name__ == "__main__":
    main()
