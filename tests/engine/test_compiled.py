"""The compiled path (torch.compile + prepacked oneDNN weights) computes what the eager
path and `transformers` compute: logits within 1e-4 in fp32, the same greedy tokens,
batch-1 and batched decodes alike."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import torch
from torch._dynamo.utils import counters

from app.checkpoint import load_model
from app.engine import runner as runner_module
from app.engine import runner_warmup
from app.engine.engine import Engine
from app.engine.request import RequestKind
from app.engine.sampling_plan import SamplingPlan
from app.engine.scheduler import ScheduledSeq, SchedulerOutput
from app.engine.speculative import SpeculativeConfig
from app.modeling.attention import DECODE_BUCKET_RATIO
from app.modeling.few_rows import FewRows
from app.sampling_params import SamplingParams
from tests.engine.test_engine import prompts
from tests.helpers import require_cpp_compiler


@pytest.fixture(autouse=True)
def _needs_a_cpp_compiler() -> None:
    require_cpp_compiler()
    # With a compiler here, inductor must work: a probe that fails is this test's failure.
    from app.modeling.compile import compiler_problem

    assert compiler_problem() is None, compiler_problem()


def transformers_greedy(ref: Any, prompt: list[int], n: int) -> list[int]:
    """Greedy tokens from `transformers`, a full forward pass per step (no cache)."""
    tokens = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            tokens.append(int(ref(torch.tensor([tokens])).logits[0, -1].argmax()))
    return tokens[len(prompt):]


@pytest.mark.parametrize("arch", ["llama_gqa_llama3", "gpt2"])
def test_compiled_engine_matches_transformers_and_eager(with_engine: Any, hf_checkpoint: Any,
                                                        arch: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    _, ref = hf_checkpoint(arch)

    async def body(engine: Engine) -> None:
        assert engine.runner.model.ops.compiled, engine.runner.compile_reason
        assert engine.runner.pack_reason.startswith("packed")
        assert "few rows: 2-4 rows (test)" in engine.runner.pack_reason
        assert "decode attention: C++ kernel" in engine.runner.compile_reason
        assert engine.core.proposer is not None  # no startup check asked for: on
        vocab = engine.model_config.vocab_size
        # Next-token distributions of several prompt lengths (one row, a few, many).
        for p in prompts(vocab, [1, 2, 5, 19], seed=3):
            out = await engine.generate(p, SamplingParams(max_tokens=1, top_logprobs=vocab),
                                        kind=RequestKind.PREDICT)
            with torch.no_grad():
                expected = torch.log_softmax(ref(torch.tensor([p])).logits[0, -1], -1)
            got = torch.full((vocab,), float("nan"))
            assert out.distribution is not None
            for token, _, logprob in out.distribution:
                got[token] = logprob
            assert (got - expected).abs().max() < 1e-4
        # Greedy decoding alone (one-row products) and batched (several rows), against a
        # full forward pass at every step.
        batch = prompts(vocab, [3, 9, 14, 6, 11], seed=4)
        params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
        alone = (await engine.generate(batch[0], params)).completions[0].token_ids
        together = await asyncio.gather(*(engine.generate(p, params) for p in batch))
        assert together[0].completions[0].token_ids == alone
        for p, out in zip(batch, together, strict=True):
            assert out.completions[0].token_ids == transformers_greedy(ref, p, 12)
        # Speculating (n-gram guesses scored as decode rows through the compiled graphs)
        # on prompts that repeat themselves: still a full forward pass's greedy tokens.
        proposer = engine.core.proposer
        loops = [(p[:4] * 5)[:n] for p, n in zip(batch, (12, 15, 9), strict=False)]
        for p in loops:
            out = await engine.generate(p, params)
            assert out.completions[0].token_ids == transformers_greedy(ref, p, 12)
        assert proposer.num_draft_tokens > 0, "nothing was guessed: nothing tested"
        # decodes alone and batched went through the one-graph step, batched rows of
        # lengths far apart too (the attention is the C++ kernel here: it reads each
        # row's own length), and gave a full forward pass's greedy tokens above
        assert step_calls["decode"] > 0 and step_calls["rows"] > 0, step_calls
        assert step_calls["far apart"] > 0, step_calls

    step_calls = {"decode": 0, "rows": 0, "far apart": 0}
    run_step = runner_module.run_decode_step

    def counted(*args: Any) -> torch.Tensor:
        rows = args[5]
        step_calls["rows" if rows.lens.numel() > 1 else "decode"] += 1
        lens = rows.lens.tolist()
        if max(lens) > DECODE_BUCKET_RATIO * min(lens):
            step_calls["far apart"] += 1
        return run_step(*args)

    monkeypatch.setattr(runner_module, "run_decode_step", counted)
    monkeypatch.setattr(runner_warmup, "REDUCTIONS_MIN_GAIN", float("inf"))  # the kernel
    # few-row products through the C++ kernel whatever they measure here, to trace them
    monkeypatch.setattr(runner_module, "choose_few_rows",
                        lambda *_: (FewRows(4, 4), "2-4 rows (test)"))
    # no startup check: speculation on whatever it measures, to test it compiled
    with_engine(arch, body, compile="on", prepack="on",
                speculative=SpeculativeConfig(prompt_lookup_min=1, cooldown=0,
                                              max_verify_cost=None))


def test_speculation_measured_too_costly_is_off_and_said(with_engine: Any) -> None:
    async def body(engine: Engine) -> str | None:
        assert engine.core.proposer is None and engine.scheduler.proposer is None
        return engine.stats().speculative

    # a limit no verification step meets (below one one-token step)
    said = with_engine("llama_gqa_llama3", body, compile="on",
                       speculative=SpeculativeConfig(max_verify_cost=0.5))
    assert said is not None and said.startswith("off: a step scoring 5 tokens costs")


@pytest.mark.parametrize("attention", ["C++ kernel", "compiled reductions"])
def test_the_warm_up_traces_every_decode_step_graph(hf_checkpoint: Any, attention: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Decode steps of any row count (each few-rows kernel's range, and past it) and any
    context run graphs the warm-up traced: nothing compiles while serving, whichever
    decode attention the warm-up's measurement keeps (forced here both ways)."""
    monkeypatch.setattr(runner_module, "choose_few_rows",
                        lambda *_: (FewRows(4, 8), "2-4 / 2-8 rows (test)"))
    monkeypatch.setattr(runner_warmup, "REDUCTIONS_MIN_GAIN",
                        float("inf") if attention == "C++ kernel" else 0.0)
    loaded = load_model(hf_checkpoint("llama_gqa_llama3")[0], dtype="float32", device="cpu")
    runner = runner_module.ModelRunner(loaded, 256, 4, compile_mode="on", prepack="on")
    runner.prepare()
    assert runner.step is not None
    assert f"decode attention: {attention}" in runner.compile_reason
    graphs = dict(counters["stats"])
    graph = runner.step.graph
    compared = 0

    class Shadowed:
        """The step's graph, each call also made through Dynamo's guards (which pick the
        graph traced for those arguments): both must compute the same, bit for bit."""

        ready = graph.ready

        def __call__(self, key: object, *args: Any, **kwargs: Any) -> torch.Tensor:
            nonlocal compared
            out = graph(key, *args, **kwargs)
            assert torch.equal(out, graph.compiled(*args, **kwargs)), key
            compared += 1
            return out

    runner.step.graph = Shadowed()  # type: ignore[assignment]
    calls = []
    for _ in range(2):
        ran = 0
        for rows in (1, 2, 3, 4, 5, 7, 8, 9, 12, 16, 20):
            for context in (2, 9, 30):
                blocks = -(-(context + 1) // 4)
                step = SchedulerOutput(tuple(ScheduledSeq(
                    seq_id=i, request_id=str(i), kind=RequestKind.GENERATE, token_ids=(5,),
                    start=context, block_table=tuple(range(i * blocks, (i + 1) * blocks)),
                    num_prompt_tokens=context, completes_prefill=True) for i in range(rows)))
                runner.execute(step, SamplingPlan())  # (an empty plan: nothing sampled)
                ran += 1
        calls.append((graph.guarded_calls, graph.direct_calls))
    assert dict(counters["stats"]) == graphs, "a decode step compiled while serving"
    assert ran == 33 and compared == 2 * ran
    # Each kind of step (row count, table width) not seen in the warm-up was called
    # through Dynamo's guards once, then directly (app.modeling.direct_call); the direct
    # calls computed what the guarded graph does (the few-rows ranges, for one, pick
    # graphs of their own). The second pass ran every step directly.
    assert calls[1][0] == calls[0][0] and calls[1][1] == calls[0][1] + ran
