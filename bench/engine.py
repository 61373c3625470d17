"""Engine benchmark: ours against `transformers` on the same weights, in one process and run.

    python -m bench.engine                # full run (about 25 minutes on 2 cores)
    python -m bench.engine --quick        # smaller scenarios, for a smoke test

Scenarios (generated tokens/s; every request ignores EOS so lengths are exact):
  a  batch-1 decode latency (ms/token after prefill)
  b  32 concurrent requests, equal lengths
  c  64 requests, mixed prompt (16-512) and output (16-256) lengths
  d  32 requests sharing a 256-token system prefix: time to first token, prefix cache
     on vs off
Baselines: `transformers` generate() one request at a time (naive) and all prompts
padded into one generate() call (static batching). Ceilings measured in the same run:
memory bandwidth (-> bandwidth-bound batch-1 tokens/s) and GEMM GFLOP/s (-> compute-bound
tokens/s). Every timed block first waits for the machine to be idle.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from app.checkpoint import LoadedModel, load_model
from app.engine.engine import Engine, EngineConfig
from app.engine.scheduler import SchedulerConfig
from app.sampling_params import SamplingParams
from app.tokenizer import Tokenizer
from bench import machine

log = logging.getLogger("bench")
ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- machine


def wait_idle(threshold: float = 15.0, timeout: float = 180.0) -> float:
    return machine.wait_idle(threshold, timeout)


def median_time(fn: Any, repeats: int) -> float:
    return machine.median_seconds(fn, repeats, warmup=0)


def ceilings() -> dict[str, float]:
    wait_idle()
    x = torch.ones(256 * 2**20)  # 1 GiB of float32
    x.sum()
    seconds = median_time(lambda: x.sum(), 7)
    bandwidth = x.nbytes / seconds
    a, w = torch.randn(32, 768), torch.randn(3072, 768)
    F.linear(a, w)
    gemm = median_time(lambda: [F.linear(a, w) for _ in range(50)], 5)
    flops = 50 * 2 * 32 * 768 * 3072 / gemm
    return {"bandwidth_gb_s": bandwidth / 1e9, "gemm32_gflop_s": flops / 1e9}


# ---------------------------------------------------------------------------- workloads


@dataclass
class Workload:
    name: str
    prompts: list[list[int]]
    outputs: list[int]

    @property
    def generated(self) -> int:
        return sum(self.outputs)


def make_workloads(vocab: int, max_len: int, quick: bool, seed: int = 0
                   ) -> dict[str, Workload]:
    rng = random.Random(seed)

    def ids(n: int) -> list[int]:
        return [rng.randrange(10, vocab) for _ in range(n)]

    n_b, n_c, n_d = (8, 16, 8) if quick else (32, 64, 32)
    scale = max_len / 1024  # the shipped LM has a short context: shrink lengths with it
    p_max, o_max = max(32, int(512 * scale)), max(16, int(256 * scale))
    b = Workload("b", [ids(64) for _ in range(n_b)], [64] * n_b)
    c_lens = [rng.randint(16, p_max) for _ in range(n_c)]
    c = Workload("c", [ids(n) for n in c_lens], [rng.randint(16, o_max) for _ in range(n_c)])
    prefix = ids(min(256, max_len // 2))
    d = Workload("d", [prefix + ids(16) for _ in range(n_d)], [32] * n_d)
    return {"b": b, "c": c, "d": d}


# ---------------------------------------------------------------------------- transformers


class HF:
    def __init__(self, directory: Path) -> None:
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
        self.pad = 0

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], new_tokens: int) -> None:
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad)
        mask = torch.zeros_like(ids)
        for row, p in enumerate(prompts):  # left padding, as generate() wants
            ids[row, width - len(p):] = torch.tensor(p)
            mask[row, width - len(p):] = 1
        self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                            min_new_tokens=new_tokens, do_sample=False, pad_token_id=self.pad)

    def decode_ms_per_token(self, prompt: list[int], n: int, repeats: int) -> float:
        wait_idle()
        one = median_time(lambda: self.generate([prompt], 1), repeats)
        full = median_time(lambda: self.generate([prompt], n), repeats)
        return 1000 * (full - one) / (n - 1)

    def naive(self, w: Workload, limit: int) -> float:
        """Tokens/s of one request at a time, measured on the first `limit` requests."""
        wait_idle()
        start = time.perf_counter()
        for p, o in list(zip(w.prompts, w.outputs, strict=True))[:limit]:
            self.generate([p], o)
        return sum(w.outputs[:limit]) / (time.perf_counter() - start)

    def static(self, w: Workload) -> float:
        """Useful tokens/s of one padded generate() call running to the longest output."""
        wait_idle()
        start = time.perf_counter()
        self.generate(w.prompts, max(w.outputs))
        return w.generated / (time.perf_counter() - start)


# ---------------------------------------------------------------------------- ours


@dataclass
class Run:
    seconds: float
    tokens: int
    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)
    tpot: list[float] = field(default_factory=list)  # per request, per token after the first

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


def run_engine(loaded: LoadedModel, tokenizer: Tokenizer, w: Workload, *,
               prefix_caching: bool = True, max_num_seqs: int = 64) -> Run:
    longest = max(len(p) + o for p, o in zip(w.prompts, w.outputs, strict=True))
    blocks = (sum(len(p) + o for p, o in zip(w.prompts, w.outputs, strict=True)) // 16
              + len(w.prompts) + 16)
    cfg = EngineConfig(block_size=16, num_kv_blocks=blocks, enable_prefix_caching=prefix_caching,
                       max_model_len=max(longest, 1),
                       scheduler=SchedulerConfig(max_num_seqs=max_num_seqs,
                                                 max_num_batched_tokens=512,
                                                 max_waiting_requests=1024,
                                                 max_waiting_tokens=10**7))

    async def main() -> Run:
        engine = Engine(loaded, tokenizer, cfg)
        await engine.start()
        try:
            wait_idle()
            start = time.perf_counter()
            outs = await asyncio.gather(*(
                engine.generate(p, SamplingParams(max_tokens=o, temperature=0.0,
                                                  ignore_eos=True))
                for p, o in zip(w.prompts, w.outputs, strict=True)))
            seconds = time.perf_counter() - start
        finally:
            await engine.shutdown()
        run = Run(seconds, sum(len(o.completions[0].token_ids) for o in outs))
        for o in outs:
            assert o.times is not None and o.times.first_token is not None
            run.ttft.append(o.times.first_token - o.times.arrival)
            run.itl.extend(o.times.inter_token)
            tpot = o.times.time_per_output_token()
            if tpot is not None:
                run.tpot.append(tpot)
        return run

    return asyncio.run(main())


def engine_decode_ms(loaded: LoadedModel, tokenizer: Tokenizer, prompt: list[int], n: int,
                     repeats: int) -> float:
    w = Workload("a", [prompt], [n])
    return statistics.median(1000 * statistics.median(run_engine(loaded, tokenizer, w).tpot)
                             for _ in range(repeats))


# ---------------------------------------------------------------------------- report


def bench_model(name: str, directory: Path, tokenizer: Tokenizer, quick: bool,
                repeats: int) -> dict[str, Any]:
    loaded = load_model(directory, dtype="float32", device="cpu")
    cfg = loaded.config
    hf = HF(directory)
    works = make_workloads(cfg.vocab_size, cfg.max_model_len, quick)
    n_decode = 32 if quick else 64
    prompt = works["b"].prompts[0][:32]
    params = sum(p.numel() for p in loaded.model.parameters())
    streamed = params - (cfg.vocab_size * cfg.hidden_size if cfg.rope is None else 0)
    result: dict[str, Any] = {"model": name, "parameters": params, "architecture":
                              cfg.architecture, "bytes_per_step": 4 * params}
    log.info("%s: (a) batch-1 decode", name)
    result["a"] = {"hf_ms": hf.decode_ms_per_token(prompt, n_decode, repeats),
                   "ours_ms": engine_decode_ms(loaded, tokenizer, prompt, n_decode, repeats)}
    for key in ("b", "c"):
        w = works[key]
        log.info("%s: (%s) %d requests, %d tokens", name, key, len(w.prompts), w.generated)
        ours = [run_engine(loaded, tokenizer, w).tokens_per_s for _ in range(repeats)]
        static = [hf.static(w) for _ in range(repeats)]
        result[key] = {"requests": len(w.prompts), "generated": w.generated,
                       "naive_tok_s": hf.naive(w, limit=2 if quick else 4),
                       "static_tok_s": statistics.median(static),
                       "ours_tok_s": statistics.median(ours)}
    w = works["d"]
    log.info("%s: (d) shared prefix, cache on/off", name)
    on = [run_engine(loaded, tokenizer, w, prefix_caching=True) for _ in range(repeats)]
    off = [run_engine(loaded, tokenizer, w, prefix_caching=False) for _ in range(repeats)]
    result["d"] = {"requests": len(w.prompts), "prefix_tokens": len(w.prompts[0]) - 16,
                   "ttft_on_s": statistics.median(statistics.median(r.ttft) for r in on),
                   "ttft_off_s": statistics.median(statistics.median(r.ttft) for r in off),
                   "tok_s_on": statistics.median(r.tokens_per_s for r in on),
                   "tok_s_off": statistics.median(r.tokens_per_s for r in off)}
    result["streamed_params"] = streamed
    return result


def table(results: list[dict[str, Any]], machine: dict[str, float]) -> str:
    bw, flops = machine["bandwidth_gb_s"], machine["gemm32_gflop_s"]

    def fraction(r: dict[str, Any]) -> float:
        return float(r["b"]["ours_tok_s"] * 2 * r["parameters"] / (flops * 1e9))

    lines = [f"Machine (same run): memory bandwidth {bw:.1f} GB/s, "
             f"GEMM (32x768x3072) {flops:.0f} GFLOP/s fp32.", ""]
    lines += ["| model | scenario | naive HF tok/s | static HF tok/s | ours tok/s | "
              "ours/naive | ours/static |", "|---|---|---|---|---|---|---|"]
    for r in results:
        for key in ("b", "c"):
            s = r[key]
            lines.append(f"| {r['model']} | ({key}) {s['requests']} req, {s['generated']} tok | "
                         f"{s['naive_tok_s']:.1f} | {s['static_tok_s']:.1f} | "
                         f"{s['ours_tok_s']:.1f} | {s['ours_tok_s'] / s['naive_tok_s']:.1f}x | "
                         f"{s['ours_tok_s'] / s['static_tok_s']:.2f}x |")
    lines += ["", "| model | (a) HF ms/token | ours ms/token | HF/ours | bandwidth-bound ms/token"
              " | ours vs ceiling |", "|---|---|---|---|---|---|"]
    for r in results:
        a = r["a"]
        ceiling_ms = 1000 * r["bytes_per_step"] / (bw * 1e9)
        lines.append(f"| {r['model']} | {a['hf_ms']:.1f} | {a['ours_ms']:.1f} | "
                     f"{a['hf_ms'] / a['ours_ms']:.2f}x | {ceiling_ms:.1f} | "
                     f"{ceiling_ms / a['ours_ms']:.2f} |")
    lines += ["", "| model | (d) requests x prefix | TTFT cache off (s) | TTFT cache on (s) | "
              "off/on | tok/s off | tok/s on |", "|---|---|---|---|---|---|---|"]
    for r in results:
        d = r["d"]
        lines.append(f"| {r['model']} | {d['requests']} x {d['prefix_tokens']} | "
                     f"{d['ttft_off_s']:.3f} | {d['ttft_on_s']:.3f} | "
                     f"{d['ttft_off_s'] / d['ttft_on_s']:.1f}x | {d['tok_s_off']:.1f} | "
                     f"{d['tok_s_on']:.1f} |")
    lines += ["", "Compute-bound ceiling (2 FLOP/parameter/token at the GEMM rate above): "
              + ", ".join(f"{r['model']} {flops * 1e9 / (2 * r['parameters']):.0f} tok/s"
                          for r in results)
              + "; fraction reached in (b): "
              + ", ".join(f"{r['model']} {fraction(r):.2f}" for r in results)]
    return "\n".join(lines)


def gpt2_small(directory: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config()).save_pretrained(directory)  # 124M, random weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=0, help="default: 1 quick, 3 full")
    parser.add_argument("--models", default="gpt2-124m,default-lm")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench-engine.json")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level="INFO", format="%(asctime)s %(message)s")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (1 if args.quick else 3)
    machine = ceilings()
    log.info("machine: %s", machine)
    tokenizer = Tokenizer.from_dir(ROOT / "models" / "default-lm")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            if name == "gpt2-124m":
                directory = Path(tmp) / name
                gpt2_small(directory)
            else:
                directory = ROOT / "models" / name
            results.append(bench_model(name, directory, tokenizer, args.quick, repeats))
    report = table(results, machine)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "results": results,
                                    "threads": torch.get_num_threads(),
                                    "quick": args.quick, "repeats": repeats}, indent=2))
    print(report)


if __name__ == "__main__":
    main()
