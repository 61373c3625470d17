"""Our model against `transformers` on tiny random checkpoints of every supported family."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from app.checkpoint import load_model, save_model
from app.modeling.attention import PagedAttention, PagedKVCache, build_paged_batch
from app.modeling.heads import label_scores, pool_last_token
from app.modeling.transformer import Transformer
from tests.helpers import CAUSAL_LMS, CLASSIFIERS

torch.manual_seed(0)


def random_ids(vocab: int, *shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", CAUSAL_LMS)
def test_causal_lm_logits_match_transformers(arch: str, hf_checkpoint) -> None:
    directory, ref = hf_checkpoint(arch)
    ours = load_model(directory, dtype="float32", device="cpu")
    ids = random_ids(ours.config.vocab_size, 3, 40)
    with torch.no_grad():
        expected = ref(ids).logits
        got = ours.model.causal_lm_logits(ids)
    assert got.shape == expected.shape
    assert (got[:, -1] - expected[:, -1]).abs().max().item() <= 1e-4
    assert (got - expected).abs().max().item() <= 1e-4
    # The comparison is meaningful only if the logits are not all alike.
    assert expected[:, -1].std().item() > 0.05


@pytest.mark.parametrize("arch", list(CLASSIFIERS))
def test_classification_logits_match_transformers(arch: str, hf_checkpoint) -> None:
    directory, ref = hf_checkpoint(arch)
    ours = load_model(directory, dtype="float32", device="cpu")
    cfg = ours.config
    assert cfg.id2label == tuple(ref.config.id2label[i] for i in range(ref.config.num_labels))
    lengths = [12, 7, 20]
    pad = cfg.pad_token_id
    assert pad is not None
    ids = torch.full((3, max(lengths)), pad)
    for row, n in enumerate(lengths):
        ids[row, :n] = random_ids(cfg.vocab_size - 10, n, seed=row) + 5  # never the pad id
    with torch.no_grad():
        expected = ref(ids).logits
        hidden = ours.model(ids, torch.arange(ids.shape[1]).expand_as(ids))
        got = ours.model.classify(pool_last_token(hidden, torch.tensor(lengths)))
    assert (got - expected).abs().max().item() <= 1e-4
    scores = label_scores(got, cfg.problem_type)
    if cfg.problem_type and cfg.problem_type.value == "multi_label_classification":
        assert torch.allclose(scores, torch.sigmoid(expected), atol=1e-5)
    else:
        assert torch.allclose(scores.sum(-1), torch.ones(3))


def _paged_forward(model: Transformer, cache: PagedKVCache, tables: list[list[int]],
                   chunks: list[list[int]], done: list[int]) -> torch.Tensor:
    """One step: sequence i brings chunks[i] as new tokens after done[i] cached ones."""
    query_lens = [len(c) for c in chunks]
    context_lens = [d + q for d, q in zip(done, query_lens, strict=True)]
    batch = build_paged_batch(query_lens, context_lens, tables, cache.block_size,
                              torch.device("cpu"))
    ids = torch.tensor([t for c in chunks for t in c])[None]
    positions = torch.tensor([p for d, c in zip(done, chunks, strict=True)
                              for p in range(d, d + len(c))])[None]
    hidden = model(ids, positions, PagedAttention(cache, batch))
    ends = torch.tensor(query_lens).cumsum(0) - 1
    return model.logits(hidden[0, ends])  # (num_seqs, vocab): last new token of each


@pytest.mark.parametrize("arch", CAUSAL_LMS)
def test_paged_kv_cache_decoding_equals_full_forward(arch: str, hf_checkpoint) -> None:
    """Mixed steps (chunked prefill + decode, different lengths, scattered blocks) give
    the same next-token logits as a full forward pass over each whole sequence."""
    directory, _ = hf_checkpoint(arch)
    loaded = load_model(directory, dtype="float32", device="cpu")
    model, cfg = loaded.model, loaded.config
    block_size, num_blocks = 4, 64
    cache = PagedKVCache(cfg.num_layers, num_blocks, block_size, cfg.num_kv_heads, cfg.head_dim,
                         torch.float32, torch.device("cpu"))
    rng = random.Random(0)
    free = list(range(num_blocks))
    rng.shuffle(free)  # blocks of one sequence are not contiguous
    seqs = [random_ids(cfg.vocab_size, n, seed=n).tolist() for n in (9, 3, 17, 1, 45)]
    tables = [[free.pop() for _ in range((len(s) + 12) // block_size + 1)] for s in seqs]
    done = [0] * len(seqs)
    # Chunked prefill: sequence 2's prompt takes 3 steps while the others start decoding
    # (its later chunks attend as decode rows over its cache: few tokens), sequence 4's
    # two (its second chunk, longer than DECODE_ROWS_SPAN, as one span over its cache).
    chunk_plan = [[9], [3], [6, 6, 5], [1], [20, 25]]
    steps = 0
    while any(done[i] < len(seqs[i]) for i in range(len(seqs))):
        active = [i for i in range(len(seqs)) if done[i] < len(seqs[i])]
        chunks = [seqs[i][done[i]:done[i] + chunk_plan[i][min(steps, len(chunk_plan[i]) - 1)]]
                  for i in active]
        with torch.no_grad():
            _paged_forward(model, cache, [tables[i] for i in active], chunks,
                           [done[i] for i in active])
        for i, c in zip(active, chunks, strict=True):
            done[i] += len(c)
        steps += 1
    # Then decode 12 tokens greedily for all sequences together, checking each step.
    for _ in range(12):
        with torch.no_grad():
            logits = _paged_forward(model, cache, tables, [[s[-1]] for s in seqs],
                                    [len(s) - 1 for s in seqs])
            for row, s in enumerate(seqs):
                full = model.causal_lm_logits(torch.tensor([s]))[0, -1]
                assert (logits[row] - full).abs().max().item() <= 1e-4
        for row, s in enumerate(seqs):
            s.append(int(logits[row].argmax()))  # fed back (and cached) by the next step


@pytest.mark.parametrize("arch", ["gpt2", "llama_gqa_llama3"])
def test_bfloat16_stays_close(arch: str, hf_checkpoint) -> None:
    directory, ref = hf_checkpoint(arch)
    ours = load_model(directory, dtype="bfloat16", device="cpu")
    assert next(ours.model.parameters()).dtype == torch.bfloat16
    ids = random_ids(ours.config.vocab_size, 2, 24)
    with torch.no_grad():
        expected = ref(ids).logits
        got = ours.model.causal_lm_logits(ids).float()
    scale = expected.abs().max().item()
    assert (got - expected).abs().max().item() <= 0.05 * scale + 0.05
    # Greedy choices over all 48 positions (not 2 rows' last, where 1 of 2 passed): bf16
    # may flip a near tie, never more than a few.
    agreement = (got.argmax(-1) == expected.argmax(-1)).float().mean().item()
    assert agreement >= 0.9, f"bf16 greedy agreement {agreement:.2%} over 48 positions"


@pytest.mark.parametrize("arch", [*CAUSAL_LMS, *CLASSIFIERS])
def test_saved_checkpoint_loads_in_transformers(arch: str, hf_checkpoint, tmp_path: Path) -> None:
    import transformers

    directory, ref = hf_checkpoint(arch)
    ours = load_model(directory, dtype="float32", device="cpu")
    save_model(ours.model, tmp_path)
    auto = (transformers.AutoModelForSequenceClassification if arch in CLASSIFIERS
            else transformers.AutoModelForCausalLM)
    back = auto.from_pretrained(tmp_path).eval()
    assert type(back) is type(ref)
    ids = random_ids(ours.config.vocab_size, 1, 16)
    with torch.no_grad():
        assert torch.equal(back(ids).logits, ref(ids).logits)
    # and it loads back into ours unchanged
    again = load_model(tmp_path, dtype="float32", device="cpu")
    assert again.config.architecture == ours.config.architecture
    for (n1, p1), (n2, p2) in zip(ours.model.named_parameters(), again.model.named_parameters(),
                                  strict=True):
        assert n1 == n2 and torch.equal(p1, p2)
