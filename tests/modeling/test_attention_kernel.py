"""Decode attention through the C++ kernel (app/kernels/paged_attention.cpp): the same
results as the reductions it replaces (`attention.decode_attention`), for float32 and
bfloat16, grouped and plain heads, every context length around block boundaries, one row
and many; each row's result independent of the batch; bad tables refused. The startup
choice between the two is tested with the runner (tests/engine/test_compiled.py)."""

from __future__ import annotations

import pytest
import torch

from app.modeling.attention import decode_attention
from app.modeling.attention_kernel import kernel_decode_attention, kernel_serves
from app.modeling.quant_kernels import cpp_ops
from tests.helpers import require_cpp_kernels


@pytest.fixture(autouse=True)
def _kernels() -> None:
    require_cpp_kernels()
    assert cpp_ops()  # the ops' shapes registered for tracing


def cache(blocks: int, block_size: int, kv_heads: int, head_dim: int, dtype: torch.dtype,
          seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shape = (blocks, block_size, kv_heads, head_dim)
    k = torch.randn(shape, generator=gen).to(dtype)
    return k, torch.randn(shape, generator=gen).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("heads", "kv_heads", "head_dim"), [(8, 4, 32), (4, 4, 64), (6, 2, 16)])
def test_kernel_equals_the_reductions(dtype: torch.dtype, heads: int, kv_heads: int,
                                      head_dim: int) -> None:
    block_size, blocks = 4, 64
    k, v = cache(blocks, block_size, kv_heads, head_dim, dtype, seed=heads)
    gen = torch.Generator().manual_seed(7)
    lens = torch.tensor([1, 3, 4, 5, 8, 9, 17, 30])  # inside, at and past block edges
    width = -(-int(lens.max()) // block_size)
    tables = torch.randperm(blocks, generator=gen)[:len(lens) * width].view(len(lens), width)
    q = torch.randn(len(lens), heads, head_dim, generator=gen).to(dtype)
    want = decode_attention(q, k, v, tables, lens)
    got = kernel_decode_attention(q, k, v, tables, lens)
    assert got.shape == want.shape and got.dtype == dtype
    tol = 1e-5 if dtype is torch.float32 else 1e-2
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol)
    # a row alone gives exactly what it gives in the batch (batch invariance)
    for row in (0, 5, 7):
        alone = kernel_decode_attention(q[row:row + 1], k, v, tables[row:row + 1],
                                        lens[row:row + 1])
        assert torch.equal(alone, got[row:row + 1])


def test_compiled_graph_calls_the_kernel() -> None:
    require_cpp_kernels(compiled=True)
    k, v = cache(32, 4, 2, 16, torch.float32, seed=1)
    q = torch.randn(3, 4, 16)
    tables = torch.tensor([[0, 1, 2], [3, 4, 5], [6, 7, 8]])
    lens = torch.tensor([9, 2, 12])
    compiled = torch.compile(lambda *a: kernel_decode_attention(*a) * 2, fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v, tables, lens),
                               decode_attention(q, k, v, tables, lens) * 2)


def test_a_table_too_short_is_refused() -> None:
    k, v = cache(8, 4, 2, 16, torch.float32, seed=2)
    with pytest.raises(RuntimeError, match="needs more than the 1 blocks"):
        kernel_decode_attention(torch.randn(1, 2, 16), k, v, torch.tensor([[3]]),
                                torch.tensor([6]))


def test_kernel_serves_float_caches_on_a_cpu() -> None:
    cpu = torch.device("cpu")
    assert kernel_serves(cpu, torch.float32) and kernel_serves(cpu, torch.bfloat16)
    assert not kernel_serves(cpu, torch.float16)
    assert not kernel_serves(torch.device("cuda"), torch.float32)
