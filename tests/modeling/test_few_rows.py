"""Products of a few rows through the C++ kernel (app/modeling/few_rows.py): the same
results as the products they replace, for every row count around the limit, eager and
compiled, and a model's modules swapped in and back out; and the attention side of a
verification step: a few new tokens over a cached context attend as decode rows."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from app.checkpoint import load_model
from app.modeling import few_rows
from app.modeling.attention import DECODE_ROWS_SPAN, build_paged_batch
from app.modeling.compile import compile_model
from app.modeling.few_rows import (
    FewRows,
    FewRowsLinear,
    FewRowsLMHead,
    _few,
    choose_few_rows,
    drop_few_rows,
    use_few_rows,
)
from tests.helpers import require_cpp_kernels


@pytest.fixture(autouse=True)
def _kernels() -> None:
    require_cpp_kernels()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_equals_the_plain_product(dtype: torch.dtype) -> None:
    if dtype is torch.bfloat16 and not torch.cpu._is_avx512_bf16_supported():
        with pytest.raises(RuntimeError, match="AVX512-BF16"):
            _few(torch.ones(2, 64, dtype=dtype), torch.ones(8, 64, dtype=dtype))
        return
    gen = torch.Generator().manual_seed(0)
    for out_features, in_features in ((37, 64), (96, 50), (256, 128)):
        w = torch.randn(out_features, in_features, generator=gen).to(dtype)
        for rows in (1, 2, 3, 4, 5, 8, 9):
            if dtype is torch.bfloat16 and in_features % 32:
                continue  # the bf16 path needs whole 32-wide chunks (refused otherwise)
            x = torch.randn(1, rows, in_features, generator=gen).to(dtype)
            expected = F.linear(x.float(), w.float())
            got = _few(x, w)
            assert got.shape == (1, rows, out_features) and got.dtype == dtype
            tol = 1e-4 if dtype is torch.float32 else 2e-2 * expected.abs().max().item()
            assert (got.float() - expected).abs().max().item() <= tol


def test_modules_swap_in_and_out_with_the_same_logits(hf_checkpoint: Any) -> None:
    directory, _ = hf_checkpoint("llama_gqa_llama3")
    model = load_model(directory, dtype="float32", device="cpu").model
    ids = torch.randint(0, model.config.vocab_size, (1, 12),
                        generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model.causal_lm_logits(ids)
        expected_rows = [model.logits(model(ids[:, :n], torch.arange(n)[None])[0])
                         for n in (2, 5, 9)]
        use_few_rows(model, 8)
        blocks = model.blocks()
        assert all(isinstance(m, FewRowsLinear) for b in blocks
                   for m in (b.attn.qkv, b.attn.o, b.mlp.up, b.mlp.down))
        assert isinstance(model.lm_head, FewRowsLMHead)
        torch.testing.assert_close(model.causal_lm_logits(ids), expected, rtol=1e-4, atol=1e-4)
        for n, want in zip((2, 5, 9), expected_rows, strict=True):  # LM head: 2, 5, 9 rows
            got = model.logits(model(ids[:, :n], torch.arange(n)[None])[0])
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        drop_few_rows(model)
        assert not any(isinstance(m, (FewRowsLinear, FewRowsLMHead)) for m in model.modules())
        assert type(model.blocks()[0].mlp.up) is nn.Linear


@pytest.mark.parametrize("max_rows", [4, 8])
def test_compiled_graphs_keep_the_results(hf_checkpoint: Any, max_rows: int) -> None:
    """Compiled, the branch on the row count is a guard: 1, a few and many rows each give
    the eager results (the kernel inside the graph for the few)."""
    require_cpp_kernels(compiled=True)
    directory, _ = hf_checkpoint("llama_gqa_llama3")
    eager = load_model(directory, dtype="float32", device="cpu").model
    model = load_model(directory, dtype="float32", device="cpu").model
    use_few_rows(model, max_rows)
    model.ops = compile_model(model, torch.device("cpu"), "on").ops
    with torch.no_grad():
        for n in (1, 3, 4, 7, 9, 3):
            ids = torch.randint(0, model.config.vocab_size, (1, n),
                                generator=torch.Generator().manual_seed(n))
            pos = torch.arange(n)[None]
            want = eager.logits(eager(ids, pos)[0])
            got = model.logits(model(ids, pos)[0])
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_only_a_few_rows_take_the_kernel(hf_checkpoint: Any,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    directory, _ = hf_checkpoint("llama_gqa_llama3")
    model = load_model(directory, dtype="float32", device="cpu").model
    use_few_rows(model, 4)
    calls: list[int] = []
    real = few_rows._few

    def counting(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        calls.append(x.numel() // x.shape[-1])
        return real(x, w)

    monkeypatch.setattr(few_rows, "_few", counting)
    with torch.no_grad():
        for n in (1, 3, 6):
            model.logits(model(torch.ones(1, n, dtype=torch.long), torch.arange(n)[None])[0])
    # 3 rows: every block product and the LM head; 1 and 6 rows: none
    assert calls == [3] * (4 * len(model.blocks()) + 1)


def test_choice_is_measured_and_reported(hf_checkpoint: Any) -> None:
    directory, _ = hf_checkpoint("llama_gqa_llama3")
    model = load_model(directory, dtype="float32", device="cpu").model
    rows, reason = choose_few_rows(model, torch.device("cpu"))
    assert rows.blocks in (0, 4, 8) and rows.head in (0, 4, 8)
    assert "block products" in reason and "(4 rows" in reason and "LM head" in reason
    quantized = load_model(directory, dtype="float32", device="cpu", quantization="int8").model
    assert choose_few_rows(quantized, torch.device("cpu"))[0] == FewRows()


def test_a_few_new_tokens_over_a_cache_attend_as_decode_rows() -> None:
    """A verification step (5 new tokens after 7 cached) becomes 5 decode rows, each
    over the context up to itself; a long chunk over a cache stays one span."""
    batch = build_paged_batch([5, DECODE_ROWS_SPAN + 1, 1], [12, 40, 3],
                              [[3, 1, 2], list(range(4, 14)), [0]], 4, torch.device("cpu"))
    rows = sorted((int(t), int(n)) for g in batch.decode_groups
                  for t, n in zip(g.tokens, g.lens, strict=True))
    assert rows == [(0, 8), (1, 9), (2, 10), (3, 11), (4, 12), (5 + DECODE_ROWS_SPAN + 1, 3)]
    assert [(p.start, p.length) for p in batch.prefills] == [(5, DECODE_ROWS_SPAN + 1)]
