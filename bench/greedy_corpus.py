"""A model's own greedy continuations as a training corpus (JSONL of {"text"}), for
distilling a speculative draft from it: a draft is worth what it predicts of the
target's greedy output, so it learns best from that output (models/default-lm-draft).

    python -m bench.greedy_corpus data/fortunes/lm/train.jsonl --out corpus.jsonl
        [--model models/default-lm] [--prompts 1500] [--tokens 112]

Prompts: the first 3-12 tokens of the input documents (every k-th, for spread);
continuations: greedy, through EOS (the bench's workloads ignore EOS too), 32 at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from pathlib import Path

import torch

from app.checkpoint import load_model
from app.engine.engine import Engine, EngineConfig
from app.engine.scheduler import SchedulerConfig
from app.sampling_params import SamplingParams
from app.tokenizer import Tokenizer
from app.train.data import read_documents

MODEL = Path(__file__).resolve().parent.parent / "models" / "default-lm"


async def generate(model: Path, docs: list[str], n: int, tokens: int, seed: int
                   ) -> list[str]:
    tokenizer = Tokenizer.from_dir(model)
    rng = random.Random(seed)
    step = max(1, len(docs) // n)
    prompts = []
    for doc in docs[::step][:n]:
        ids = tokenizer.encode(doc, add_special_tokens=False)
        prompts.append(ids[:rng.randint(3, 12)])
    engine = Engine(load_model(model, dtype="float32", device="cpu"), tokenizer,
                    EngineConfig(scheduler=SchedulerConfig(max_num_seqs=32)))
    await engine.start()
    params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
    try:
        texts = []
        for start in range(0, len(prompts), 32):
            batch = prompts[start:start + 32]
            outs = await asyncio.gather(*(engine.generate(p, params) for p in batch))
            for prompt, out in zip(batch, outs, strict=True):
                ids = [*prompt, *out.completions[0].token_ids]
                texts.append(tokenizer.decode(ids, skip_special_tokens=False))
        return texts
    finally:
        await engine.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", help="documents whose beginnings are prompts")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", type=Path, default=MODEL)
    parser.add_argument("--prompts", type=int, default=1500)
    parser.add_argument("--tokens", type=int, default=112)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    texts = asyncio.run(generate(args.model, read_documents(args.inputs), args.prompts,
                                 args.tokens, args.seed))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    print(f"{len(texts)} continuations in {time.perf_counter() - started:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
