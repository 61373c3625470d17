"""LoRA serving cost on the shipped default-lm, in-process, against the base model in the
same run and the same engine (a step without adapter rows runs the plain graphs):

  - 32 concurrent requests spread over 4 adapters vs 32 requests to the base model
    (target: at least 0.8x the tokens/s);
  - batch-1 with an adapter vs the base model (target: at least 0.85x).

Adapters: random, rank --rank on every linear projection (the heaviest kind), written in
PEFT format by `write_random_adapter` below. Medians of --rounds rounds, alternating; the
CPU, its flags, the threads and the compile mode printed first.

    python -m bench.lora [--rounds 3] [--tokens 128] [--compile auto] [--rank 16]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file

from app.checkpoint import load_model
from app.checkpoint.lora import PARTS, read_peft_adapter
from app.engine.compute import compute_thread
from app.engine.engine import Engine, EngineConfig
from app.modeling.config import ModelConfig
from app.modeling.lora import fused_sizes
from app.sampling_params import SamplingParams
from app.tokenizer import Tokenizer
from bench.machine import cpu_info, cpu_line

MODEL = Path(__file__).resolve().parent.parent / "models" / "default-lm"
PROMPTS = ["The meaning of life is", "Once upon a time", "You will be", "Love is",
           "A computer is"]
QV = ("q_proj", "v_proj", "c_attn")
LAYER_PREFIX = {"llama": "base_model.model.model.layers.{i}.",
                "gpt2": "base_model.model.transformer.h.{i}."}


def write_random_adapter(directory: Path, config: ModelConfig, rank: int, seed: int,
                         only: tuple[str, ...] = ()) -> None:
    """A PEFT LoRA adapter with random A and B on every projection of `config`'s family
    (or only on the projections named in `only`)."""
    directory.mkdir(parents=True, exist_ok=True)
    sizes = fused_sizes(config)
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for i in range(config.num_layers):
        for (block, proj), part in PARTS[config.family].items():
            if only and proj not in only:
                continue
            outs, fan_in = sizes[part.module]
            stem = LAYER_PREFIX[config.family].format(i=i) + f"{block}.{proj}."
            tensors[stem + "lora_A.weight"] = torch.randn(rank, fan_in, generator=g) * 0.05
            tensors[stem + "lora_B.weight"] = (torch.randn(outs[part.index], rank, generator=g)
                                               * 0.05)
    save_file(tensors, str(directory / "adapter_model.safetensors"))
    targets = sorted({proj for _, proj in PARTS[config.family] if not only or proj in only})
    (directory / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 2 * rank,
        "use_rslora": False, "target_modules": targets, "bias": "none",
        "lora_dropout": 0.0, "base_model_name_or_path": str(MODEL)}))


async def rate(engine: Engine, prompts: list[list[int]], adapters: Sequence[str | None],
               params: SamplingParams) -> tuple[float, float]:
    """Tokens per second of wall time, and per second of this process's CPU time (all
    threads: on a shared machine the second is the steadier of the two)."""
    start, cpu = time.perf_counter(), time.process_time()
    outs = await asyncio.gather(*(engine.generate(p, params, adapter=a)
                                  for p, a in zip(prompts, adapters, strict=True)))
    tokens = sum(len(o.completions[0].token_ids) for o in outs)
    return (tokens / (time.perf_counter() - start), tokens / (time.process_time() - cpu))


async def compare(engine: Engine, prompts: list[list[int]], adapters: Sequence[str | None],
                  params: SamplingParams, rounds: int) -> dict[str, object]:
    base: list[tuple[float, float]] = []
    lora: list[tuple[float, float]] = []
    for _ in range(rounds):
        base.append(await rate(engine, prompts, [None] * len(prompts), params))
        lora.append(await rate(engine, prompts, adapters, params))
    b, lo = (statistics.median(r[0] for r in base), statistics.median(r[0] for r in lora))
    b_cpu = statistics.median(r[1] for r in base)
    lo_cpu = statistics.median(r[1] for r in lora)
    return {"tokens_per_s_base": round(b, 1), "tokens_per_s_lora": round(lo, 1),
            "ratio": round(lo / b, 3), "ratio_cpu_time": round(lo_cpu / b_cpu, 3),
            "rounds_base": [round(x[0], 1) for x in base],
            "rounds_lora": [round(x[0], 1) for x in lora]}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--compile", default="auto", choices=["auto", "on", "off"])
    parser.add_argument("--prepack", default="auto", choices=["auto", "off"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--targets", default="all", choices=["all", "qv"],
                        help="every linear projection, or q_proj and v_proj (PEFT's default)")
    args = parser.parse_args()
    print(cpu_line(cpu_info()))
    torch.set_num_threads(args.threads)
    tokenizer = Tokenizer.from_dir(MODEL)
    # loaded on the engine's compute thread, as the server does: torch work on a second
    # thread would start a second OpenMP team on the same cores (app/engine/compute.py)
    compute = compute_thread("bench")
    loaded = compute.submit(load_model, MODEL, dtype="float32", device="cpu").result()
    engine = Engine(loaded, tokenizer, EngineConfig(
        compile=args.compile, prepack=args.prepack, max_loras=4, max_lora_rank=args.rank),
        executor=compute)
    await engine.start()
    names = [f"random-{k}" for k in range(4)]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for k, name in enumerate(names):
                write_random_adapter(Path(tmp) / name, loaded.config, args.rank, seed=k,
                                     only=QV if args.targets == "qv" else ())
                await engine.load_adapter(name, functools.partial(
                    read_peft_adapter, Path(tmp) / name, loaded.config, name=name,
                    max_rank=args.rank))
        params = SamplingParams(max_tokens=args.tokens, temperature=0.0, ignore_eos=True)
        encoded = [tokenizer.encode(p) for p in PROMPTS]
        many = [encoded[i % len(encoded)] + [5 + i] for i in range(32)]
        await rate(engine, many[:4], names, params)  # warm-up: every adapter resident
        results = {
            "setup": {"model": MODEL.name, "adapters": 4, "rank": args.rank,
                      "targets": args.targets, "tokens": args.tokens,
                      "threads": torch.get_num_threads(), "compile": engine.stats().compile,
                      "load_average": [round(x, 2) for x in _load()]},
            "concurrent_32_over_4_adapters": await compare(
                engine, many, [names[i % 4] for i in range(32)], params, args.rounds),
            "batch_1": await compare(engine, encoded[:1], names[:1], params, args.rounds),
        }
    finally:
        await engine.shutdown()
    for name, row in results.items():
        print(f"{name}: {json.dumps(row)}")


def _load() -> tuple[float, float, float]:
    import os

    return os.getloadavg()


if __name__ == "__main__":
    asyncio.run(main())
