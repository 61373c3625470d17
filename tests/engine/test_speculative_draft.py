"""Speculative decoding with a draft model (method draft_model): greedy output is token
for token what plain decoding gives, with a random draft (mostly rejected) and with the
target as its own draft (everything kept), alone, beside plain requests, under
preemption and after a prefix-cache hit; sampled output keeps the target's distribution
(chi-square over seeded requests) and seeded runs repeat; a draft with another
vocabulary is refused at startup."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import pytest
import torch

from app.checkpoint import load_model
from app.engine.draft_runner import DraftMismatch, DraftModel
from app.engine.engine import Engine, EngineConfig
from app.engine.scheduler import SchedulerConfig
from app.engine.speculative import SpeculativeConfig
from app.sampling_params import SamplingParams
from app.tokenizer import Tokenizer
from tests.engine.conftest import reference_greedy
from tests.engine.test_speculative import repetitive
from tests.helpers import build_hf_checkpoint, require_cpp_compiler

T = TypeVar("T")
TARGET = "llama_gqa_llama3"
GREEDY = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)


def draft_config(path: Path, k: int = 3, **fields: Any) -> SpeculativeConfig:
    # no startup cost check: these tests speculate whatever a busy machine measures
    return SpeculativeConfig(method="draft_model", model=str(path), num_speculative_tokens=k,
                             cooldown=0, max_verify_cost=None, **fields)


def engine_config(**overrides: Any) -> EngineConfig:
    """make_engine's configuration (tests/engine/conftest.py)."""
    sched = {k: overrides.pop(k) for k in list(overrides)
             if k in SchedulerConfig.__dataclass_fields__}
    sched.setdefault("max_num_batched_tokens", 64)
    sched.setdefault("max_num_seqs", 8)
    return EngineConfig(**{"num_kv_blocks": 256, "block_size": 4,
                           "scheduler": SchedulerConfig(**sched), **overrides})


@pytest.fixture
def with_draft(hf_checkpoint: Any, tokenizer: Tokenizer) -> Callable[..., Any]:
    """with_draft(draft_arch or None, body, k=3, **config): run `await body(engine)` on a
    started engine serving TARGET, speculating with a draft of that architecture (the
    target's own checkpoint when draft_arch is TARGET); None: no speculation."""

    def go(draft_arch: str | None, body: Callable[[Engine], Awaitable[T]], k: int = 3,
           **overrides: Any) -> T:
        target = load_model(hf_checkpoint(TARGET)[0], dtype="float32", device="cpu")
        draft = None
        if draft_arch is not None:
            path = hf_checkpoint(draft_arch)[0]
            draft = DraftModel(load_model(path, dtype="float32", device="cpu"), tokenizer)
            overrides["speculative"] = draft_config(path, k, **overrides.pop("spec", {}))

        async def main() -> T:
            engine = Engine(target, tokenizer, engine_config(**overrides), draft=draft)
            await engine.start()
            try:
                return await body(engine)
            finally:
                await engine.shutdown()
                engine.blocks.check_invariants()

        return asyncio.run(main())

    return go


def test_config_names_and_errors() -> None:
    parsed = SpeculativeConfig.parse('{"method": "draft", "model": "m", '
                                     '"num_speculative_tokens": 2}')
    assert parsed.uses_draft_model and parsed.model == "m"
    # vLLM infers the method from "model"
    assert SpeculativeConfig.parse('{"model": "m"}').method == "draft_model"
    with pytest.raises(ValueError, match="needs \"model\""):
        SpeculativeConfig.parse('{"method": "draft_model"}')
    with pytest.raises(ValueError, match="for the draft_model method"):
        SpeculativeConfig.parse('{"method": "ngram", "model": "m"}')


@pytest.mark.parametrize("compile_mode", ["off", "on"])
def test_target_as_its_own_draft_keeps_everything(compile_mode: str, with_draft: Any) -> None:
    """Each guess is what the target would pick: all kept, so a step keeps k + 1 tokens;
    the output is the reference's. Compiled, the target's decode and verification steps
    and the draft's single-token forwards run as one graph each
    (app.modeling.decode_step): the same tokens."""
    if compile_mode == "on":
        require_cpp_compiler()

    async def body(engine: Engine) -> None:
        vocab = engine.model_config.vocab_size
        for prompt in repetitive(vocab, 3, 2):
            out = (await engine.generate(prompt, GREEDY)).completions[0].token_ids
            assert out == reference_greedy(engine.loaded.model, prompt, 24)
        proposer = engine.core.proposer
        assert proposer is not None and proposer.num_draft_tokens > 0
        assert proposer.num_accepted_tokens == proposer.num_draft_tokens
        drafter = engine.core.drafter
        assert drafter is not None and (drafter.graph is not None) is (compile_mode == "on")
        # a request that does not speculate: the draft computes its K/V and guesses nothing
        prompt = repetitive(vocab, 1, 5)[0]
        alone = replace(GREEDY, speculate=False)
        out = (await engine.generate(prompt, alone)).completions[0].token_ids
        assert out == reference_greedy(engine.loaded.model, prompt, 24)

    with_draft(TARGET, body, compile=compile_mode)


@pytest.mark.parametrize("draft_arch", [TARGET, "qwen2"])
def test_mixed_batch_preemption_and_prefix_cache(draft_arch: str, with_draft: Any) -> None:
    """Guessing sequences beside plain ones (logprobs, penalties, a stop), in a KV cache
    small enough to preempt, a prompt served again from the prefix cache, and a sampled
    greedy request whose prompt forks n = 2 completions: the same output as without
    speculation. qwen2 is a random draft (mostly rejected), the target itself all kept."""

    async def run_all(engine: Engine) -> list[Any]:
        batch = repetitive(engine.model_config.vocab_size, 7, 6)
        kinds = [GREEDY, SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True,
                                        logprobs=True, top_logprobs=3),
                 SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True,
                                repetition_penalty=1.3),
                 SamplingParams(max_tokens=7, temperature=0.0, ignore_eos=True),
                 SamplingParams(max_tokens=16, temperature=0.0, n=2, ignore_eos=True),
                 SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True)]
        first = await engine.generate(batch[0], GREEDY)
        outs = await asyncio.gather(*(engine.generate(p, k) for p, k in
                                      zip(batch, kinds, strict=True)))
        again = await engine.generate(batch[0], GREEDY)  # its prompt from the cache
        return [first.completions[0].token_ids, again.completions[0].token_ids,
                *[[c.token_ids for c in o.completions] for o in outs],
                [round(e.logprob, 3) for e in outs[1].completions[0].logprobs or []]]

    plain = with_draft(None, run_all, num_kv_blocks=24)
    seen: dict[str, Any] = {}

    async def speculating(engine: Engine) -> list[Any]:
        out = await run_all(engine)
        seen.update(proposer=engine.core.proposer, hits=engine.blocks.prefix_hits,
                    preemptions=engine.scheduler.num_preemptions)
        return out

    assert with_draft(draft_arch, speculating, num_kv_blocks=24,
                      spec={"max_batch": 8}) == plain
    assert seen["proposer"].num_draft_tokens > 0
    assert seen["preemptions"] > 0, "the KV cache never ran out: preemption untested"
    assert seen["hits"] > 0, "no prefix-cache hit: untested"
    if draft_arch == TARGET:
        assert seen["proposer"].num_accepted_tokens > seen["proposer"].num_draft_tokens // 2


def test_seeded_sampling_repeats(with_draft: Any) -> None:
    async def body(engine: Engine) -> list[list[int]]:
        batch = repetitive(engine.model_config.vocab_size, 11, 3)
        params = SamplingParams(max_tokens=20, temperature=0.7, top_k=20, seed=5,
                                ignore_eos=True)
        outs = await asyncio.gather(*(engine.generate(p, params) for p in batch))
        proposer = engine.core.proposer
        assert proposer is not None and proposer.num_accepted_tokens > 0
        return [o.completions[0].token_ids for o in outs]

    assert with_draft(TARGET, body) == with_draft(TARGET, body)


def test_sampled_tokens_keep_the_target_distribution(with_draft: Any,
                                                      hf_checkpoint: Any) -> None:
    """Chi-square: the second token of many seeded requests (the first speculative step:
    the draft's guess verified by rejection sampling), among those whose first token was
    the most common one, is distributed as the target's p(. | prompt, that token)."""
    draws = 480
    params = [SamplingParams(max_tokens=3, temperature=1.0, top_k=4, seed=i, ignore_eos=True)
              for i in range(draws)]

    async def body(engine: Engine) -> tuple[list[int], list[list[int]]]:
        prompt = repetitive(engine.model_config.vocab_size, 5, 1)[0]
        outs: list[list[int]] = []
        for start in range(0, draws, 8):  # 8 at a time: each batch speculates
            got = await asyncio.gather(*(engine.generate(prompt, p)
                                         for p in params[start:start + 8]))
            outs.extend(o.completions[0].token_ids for o in got)
        proposer = engine.core.proposer
        assert proposer is not None and proposer.num_drafts >= draws // 2
        assert 0 < proposer.num_accepted_tokens < proposer.num_draft_tokens
        return prompt, outs

    prompt, outs = with_draft(TARGET, body, k=1, spec={"max_batch": 8})
    first = Counter(o[0] for o in outs).most_common(1)[0][0]
    seconds = Counter(o[1] for o in outs if o[0] == first)
    n = sum(seconds.values())
    target = load_model(hf_checkpoint(TARGET)[0], dtype="float32", device="cpu").model
    with torch.no_grad():
        logits = target.causal_lm_logits(torch.tensor([[*prompt, first]]))[0, -1]
    top = torch.topk(logits, 4)
    p = torch.softmax(top.values, -1)  # top_k 4 at temperature 1, as plain sampling draws
    assert set(seconds) <= set(top.indices.tolist()), seconds
    observed = [seconds.get(int(t), 0) for t in top.indices]
    expected = [float(q) * n for q in p]
    assert n >= 100 and min(expected) >= 5, (n, expected)
    chi2 = sum((o - e) ** 2 / e for o, e in zip(observed, expected, strict=True))
    assert chi2 < 16.27, (chi2, observed, expected)  # 3 degrees of freedom, p = 0.001


def test_a_draft_with_another_vocabulary_is_refused(hf_checkpoint: Any, tokenizer: Tokenizer,
                                                    tmp_path: Path) -> None:
    target = load_model(hf_checkpoint(TARGET)[0], dtype="float32", device="cpu")
    from app.train.bpe import train_bpe
    from tests.helpers import CORPUS

    other_tokenizer = train_bpe(CORPUS, vocab_size=300, min_frequency=1)
    build_hf_checkpoint("qwen2", tmp_path, other_tokenizer)
    draft = DraftModel(load_model(tmp_path, dtype="float32", device="cpu"), other_tokenizer)
    config = engine_config(speculative=draft_config(tmp_path))
    with pytest.raises(DraftMismatch, match="needs the target's tokenizer"):
        Engine(target, tokenizer, config, draft=draft)
    with pytest.raises(ValueError, match="was not loaded"):
        Engine(target, tokenizer, config)
