"""The CUDA path, on a GPU only (marker `gpu`: `make test` deselects it, as CI machines have
no GPU; bench/gpu_check.sh runs it on a lent one): the engine on CUDA computes what
`transformers` computes on the same device (next-token logits in fp32, greedy tokens
against a full forward pass per step, cached decoding included), bf16 serves, and a real
server started with `--device auto` picks the GPU and answers."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import torch

from app.checkpoint import load_model
from app.engine.engine import Engine
from app.engine.request import RequestKind
from app.sampling_params import SamplingParams
from app.tokenizer import Tokenizer
from tests.engine.conftest import make_engine
from tests.engine.test_engine import prompts
from tests.live import LiveServer

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _needs_cuda() -> None:
    # make test deselects these (-m "not gpu"); run by hand without a GPU, they say why
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device here: these run on a lent GPU (bench/gpu_check.sh)")


def reference(model: Any, prompt: list[int], n: int) -> list[int]:
    """Greedy by a full forward pass of `transformers` at every step, on the GPU."""
    tokens = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([tokens], device="cuda")).logits[0, -1]
            tokens.append(int(logits.argmax()))
    return tokens[len(prompt):]


@pytest.mark.parametrize("arch", ["llama_gqa_llama3", "gpt2", "qwen2"])
def test_cuda_engine_matches_transformers(arch: str, hf_checkpoint: Any,
                                          tokenizer: Tokenizer) -> None:
    directory, ref = hf_checkpoint(arch)
    ref = ref.to("cuda").float().eval()
    loaded = load_model(directory, dtype="float32", device="cuda")
    assert loaded.device.type == "cuda"

    async def main() -> None:
        engine: Engine = make_engine(loaded, tokenizer)
        await engine.start()
        try:
            vocab = engine.model_config.vocab_size
            for p in prompts(vocab, [1, 5, 19], seed=3):
                out = await engine.generate(p, SamplingParams(max_tokens=1, top_logprobs=vocab),
                                            kind=RequestKind.PREDICT)
                with torch.no_grad():
                    expected = torch.log_softmax(
                        ref(torch.tensor([p], device="cuda")).logits[0, -1].float(), -1).cpu()
                got = torch.full((vocab,), float("nan"))
                assert out.distribution is not None
                for token, _, logprob in out.distribution:
                    got[token] = logprob
                assert (got - expected).abs().max() < 1e-3
            batch = prompts(vocab, [3, 9, 14, 6], seed=4)
            params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
            outs = await asyncio.gather(*(engine.generate(p, params) for p in batch))
            for p, out in zip(batch, outs, strict=True):
                assert out.completions[0].token_ids == reference(ref, p, 12)
            assert engine.blocks.num_used == 0
        finally:
            await engine.shutdown()

    asyncio.run(main())


def test_bfloat16_serves_on_cuda(hf_checkpoint: Any, tokenizer: Tokenizer) -> None:
    directory, _ = hf_checkpoint("llama_gqa_llama3")
    loaded = load_model(directory, dtype="bfloat16", device="cuda")

    async def main() -> None:
        engine = make_engine(loaded, tokenizer)
        await engine.start()
        try:
            out = await engine.generate([5, 6, 7], SamplingParams(max_tokens=8,
                                                                  ignore_eos=True))
            assert len(out.completions[0].token_ids) == 8
        finally:
            await engine.shutdown()

    asyncio.run(main())


def test_server_picks_the_gpu(hf_checkpoint: Any) -> None:
    directory, _ = hf_checkpoint("llama_gqa_llama3")
    with LiveServer("--model", f"tiny={directory}", "--device", "auto") as live:
        info = httpx.get(live.url + "/v1/info", timeout=10).json()["models"][0]
        assert info["device"].startswith("cuda"), info
        r = httpx.post(live.url + "/v1/generate", json={"prompt": "hi", "max_tokens": 4},
                       timeout=60)
        assert r.status_code == 200, r.text
