"""LoRA through the ModelRunner: a mixed step (rows of different adapters and base rows,
prompt chunks and decodes) gives each row what the same sequence gives alone, base rows
are untouched by the adapters beside them, adapter rows match transformers + peft, and
residency follows least-recent use; eager and compiled alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch._dynamo.utils import counters

from app.checkpoint import load_model
from app.checkpoint.lora import read_peft_adapter
from app.engine.request import RequestKind
from app.engine.runner import ModelRunner
from app.engine.sampling_plan import SamplingPlan
from app.engine.scheduler import ScheduledSeq, SchedulerOutput
from app.modeling.lora import AdapterError
from tests.helpers import require_cpp_compiler
from tests.lora_helpers import ALL_LINEAR, QV, make_peft_adapter

ARCH = "llama_gqa_llama3"
BLOCK = 4


def seq_step(seq_id: int, tokens: list[int], start: int, adapter: str | None
             ) -> ScheduledSeq:
    """Sequence `seq_id`'s tokens[start:] as one step; each sequence owns blocks
    seq_id*8 .. seq_id*8+7 (32 tokens)."""
    table = tuple(range(seq_id * 8, seq_id * 8 + -(-len(tokens) // BLOCK)))
    return ScheduledSeq(seq_id=seq_id, request_id=f"r{seq_id}", kind=RequestKind.PREDICT,
                        token_ids=tuple(tokens[start:]), start=start, block_table=table,
                        num_prompt_tokens=len(tokens), completes_prefill=True,
                        adapter=adapter)


def run_steps(runner: ModelRunner, seqs: dict[int, tuple[list[int], str | None]],
              chunks: list[int]) -> dict[int, list[torch.Tensor]]:
    """Feed each sequence its tokens in steps (prompt up to chunks[0], then one token a
    step up to each later bound), all sequences together; the next-token log-probs of
    every sequence after every step."""
    vocab = runner.config.vocab_size
    got: dict[int, list[torch.Tensor]] = {s: [] for s in seqs}
    done = 0
    for end in chunks:
        items = tuple(seq_step(s, tokens[:end], done, adapter)
                      for s, (tokens, adapter) in seqs.items())
        plan = SamplingPlan(distributions={s: (1.0, vocab) for s in seqs})
        out = runner.execute(SchedulerOutput(items), plan)
        for s in seqs:
            row = torch.full((vocab,), float("nan"))
            for token, _, logprob in out.distributions[s]:
                row[token] = logprob
            got[s].append(row)
        done = end
    return got


@pytest.fixture(scope="module")
def adapters(hf_checkpoint: Any, tmp_path_factory: pytest.TempPathFactory
             ) -> dict[str, tuple[Path, Any]]:
    _, ref = hf_checkpoint(ARCH)
    made = {}
    for name, targets, seed, rslora in [("all", ALL_LINEAR["llama"], 1, False),
                                        ("qv", QV["llama"], 2, True),
                                        ("third", ALL_LINEAR["llama"], 3, False)]:
        directory = tmp_path_factory.mktemp(name)
        made[name] = (directory, make_peft_adapter(ref, directory, targets=targets, r=4,
                                                   alpha=8.0, rslora=rslora, seed=seed))
    return made


def make_runner(hf_checkpoint: Any, adapters: dict[str, tuple[Path, Any]], compile_mode: str,
                max_loras: int = 2) -> ModelRunner:
    directory, _ = hf_checkpoint(ARCH)
    loaded = load_model(directory, dtype="float32", device="cpu")
    runner = ModelRunner(loaded, num_blocks=64, block_size=BLOCK, compile_mode=compile_mode,
                         max_loras=max_loras, max_lora_rank=8)
    runner.prepare()
    for name, (path, _) in adapters.items():
        runner.adapters.register(read_peft_adapter(path, loaded.config, name=name,
                                                   max_rank=8))
    return runner


@pytest.mark.parametrize("compile_mode", ["off", "on"])
def test_mixed_step_rows_equal_alone_and_peft(compile_mode: str, hf_checkpoint: Any,
                                              adapters: dict[str, tuple[Path, Any]]) -> None:
    if compile_mode == "on":
        require_cpp_compiler()
    runner = make_runner(hf_checkpoint, adapters, compile_mode)
    assert runner.model.ops.compiled is (compile_mode == "on")
    vocab = runner.config.vocab_size
    gen = torch.Generator().manual_seed(5)
    seqs = {i: (torch.randint(0, vocab, (14,), generator=gen).tolist(), adapter)
            for i, adapter in enumerate(["all", None, "qv", "all", None])}
    chunks = [9, 10, 11, 12]  # a prompt of 9, then three single-token decodes
    graphs = dict(counters["stats"])
    if compile_mode == "on":
        assert graphs.get("unique_graphs", 0) > 0
    together = run_steps(runner, seqs, chunks)
    _, ref = hf_checkpoint(ARCH)
    for s, (tokens, adapter) in seqs.items():
        alone = run_steps(runner, {s: (tokens, adapter)}, chunks)[s]
        model = ref if adapter is None else adapters[adapter][1]
        with torch.no_grad():
            full = torch.log_softmax(model(torch.tensor([tokens[:12]])).logits[0], -1)
        for k, end in enumerate(chunks):
            assert (together[s][k] - alone[k]).abs().max().item() <= 2e-5, (s, k)
            assert (together[s][k] - full[end - 1]).abs().max().item() <= 1e-4, (s, k)
    # one adapter beside base rows (the single-slot form) and a base-only step
    one = run_steps(runner, {0: seqs[0], 1: seqs[1]}, chunks)
    base = run_steps(runner, {1: seqs[1], 4: seqs[4]}, chunks)
    for k in range(len(chunks)):
        assert (one[0][k] - together[0][k]).abs().max().item() <= 2e-5
        assert (one[1][k] - together[1][k]).abs().max().item() <= 2e-5
        assert (base[1][k] - together[1][k]).abs().max().item() <= 2e-5
    # the warm-up traced every graph these steps use (no compiling while serving)
    assert dict(counters["stats"]) == graphs
    # the adapters did change their rows
    plain = run_steps(runner, {0: (seqs[0][0], None)}, chunks)[0]
    assert (together[0][-1] - plain[-1]).abs().max().item() > 0.05


def test_residency_is_least_recently_used(hf_checkpoint: Any,
                                          adapters: dict[str, tuple[Path, Any]]) -> None:
    runner = make_runner(hf_checkpoint, adapters, "off", max_loras=2)
    slots = runner.adapters
    assert slots.names() == ["all", "qv", "third"] and slots.resident() == []
    tokens = list(range(3, 9))
    run_steps(runner, {0: (tokens, "all"), 1: (tokens, "qv")}, [6])
    assert slots.resident() == ["all", "qv"]
    run_steps(runner, {0: (tokens, "all")}, [6])
    assert slots.resident() == ["qv", "all"]  # "all" used last
    # "third" evicts the least recently used adapter not in the step ("qv")
    expected = run_steps(runner, {2: (tokens, "third")}, [6])[2][0]
    assert slots.resident() == ["all", "third"]
    run_steps(runner, {0: (tokens, "all"), 1: (tokens, "qv")}, [6])
    assert slots.resident() == ["all", "qv"]
    # an evicted and reloaded adapter gives the same result as before
    again = run_steps(runner, {2: (tokens, "third")}, [6])[2][0]
    assert (again - expected).abs().max().item() <= 1e-6
    with pytest.raises(RuntimeError, match="at most 2 resident"):
        run_steps(runner, {0: (tokens, "all"), 1: (tokens, "qv"), 2: (tokens, "third")}, [6])
    slots.unregister("qv")
    assert "qv" not in slots.resident() and slots.names() == ["all", "third"]
    with pytest.raises(AdapterError, match="no adapter named 'qv'"):
        slots.get("qv")
    with pytest.raises(AdapterError, match="already loaded"):
        slots.register(slots.get("all"))


def test_lora_off_costs_nothing_and_refuses_adapters(hf_checkpoint: Any) -> None:
    directory, _ = hf_checkpoint(ARCH)
    loaded = load_model(directory, dtype="float32", device="cpu")
    runner = ModelRunner(loaded, num_blocks=64, block_size=BLOCK)
    runner.prepare()
    assert runner.adapters.max_loras == 0
    tokens = list(range(3, 9))
    with pytest.raises(RuntimeError, match="LoRA is off"):
        run_steps(runner, {0: (tokens, "x")}, [6])


def test_seq_cls_adapter_brings_its_own_head(hf_checkpoint: Any, tmp_path: Path) -> None:
    """A SEQ_CLS adapter (PEFT saves the trained `score` head beside the LoRA weights)
    classifies with its head and LoRA; a base row beside it with the model's own."""
    directory, ref = hf_checkpoint("gpt2_cls")
    peft_model = make_peft_adapter(ref, tmp_path, targets=["c_attn", "c_fc"], r=4,
                                   alpha=8.0, task_type="SEQ_CLS")
    loaded = load_model(directory, dtype="float32", device="cpu")
    adapter = read_peft_adapter(tmp_path, loaded.config, name="cls", max_rank=8)
    assert adapter.score is not None
    assert not torch.equal(adapter.score, ref.score.weight)  # randomised: its own head
    runner = ModelRunner(loaded, num_blocks=64, block_size=BLOCK, max_loras=1,
                         max_lora_rank=8)
    runner.prepare()
    runner.adapters.register(adapter)
    pad = loaded.config.pad_token_id
    tokens = [t for t in range(5, 40) if t != pad][:13]
    items = tuple(seq_step(s, tokens, 0, a)._replace(kind=RequestKind.CLASSIFY)
                  for s, a in ((0, "cls"), (1, None)))
    out = runner.execute(SchedulerOutput(items), SamplingPlan())
    with torch.no_grad():
        expected_adapter = torch.softmax(peft_model(torch.tensor([tokens])).logits[0], -1)
        expected_base = torch.softmax(ref(torch.tensor([tokens])).logits[0], -1)
    assert (torch.tensor(out.class_scores[0]) - expected_adapter).abs().max() <= 1e-5
    assert (torch.tensor(out.class_scores[1]) - expected_base).abs().max() <= 1e-5
    assert (expected_adapter - expected_base).abs().max() > 0.01
