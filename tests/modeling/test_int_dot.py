"""The integer dot-product kernels (app/kernels/int_dot.cpp, the `idot` candidate): against
a float reference of the same quantized weights and the same quantized activations (tight:
only float summation order differs), against the unquantized product (loose: the
activations' and the weights' rounding), on every row class and batched shapes, odd
shapes refused (the layer falls back), inside a compiled graph, and a wrong kernel caught.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from app.modeling import kernel_choice
from app.modeling.quant_kernels import Shape, candidates, idot_isa, idot_width, supported
from app.modeling.quantize import dequantize_int4, quantize_int4, quantize_int8, unpack_int4
from app.modeling.quantized_linear import KernelPlan, QuantizedLinear
from tests.helpers import require_cpp_kernels

BLOCK = 32
# 1 row (decode), a few rows (decode batches, the 4-row tiles and their remainders),
# batched leading dimensions, and above the few-row class (the kernel itself takes any).
ROWS = [(1,), (2,), (5,), (16,), (2, 3), (1, 1), (64,), (70,)]


@pytest.fixture(autouse=True)
def _kernels() -> None:
    require_cpp_kernels()


def _weights(n: int, k: int, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05
    w[1] = 0.0  # an all-zero row
    w[2, 5] = 1.5  # an outlier
    return w


def _activations(rows: tuple[int, ...], k: int, seed: int = 1) -> Tensor:
    x = torch.randn(*rows, k, generator=torch.Generator().manual_seed(seed))
    x.view(-1, k)[0, :BLOCK] = 0.0  # an all-zero block: scale 0, no division by zero
    x.view(-1, k)[-1, 3] = 9.0  # an outlier sets its block's scale
    return x


def _quantize_blocks(blocks: Tensor) -> Tensor:
    """(..., 32) float -> the same values as the kernel's int8 codes times their block's
    scale: code = round(x * (127 / max|x|)), scale = max|x| / 127."""
    amax = blocks.abs().amax(-1, keepdim=True)
    # A true division, as the kernel does (`127.0 / amax` would be 127 * (1 / amax) in
    # torch, which rounds some ties of bf16 inputs the other way).
    inverse = torch.where(amax > 0, torch.full_like(amax, 127.0) / amax, torch.zeros_like(amax))
    codes = torch.round(blocks * inverse).clamp(-127, 127)
    return codes * (amax / 127.0)


def reference_int8(x: Tensor, q: Tensor, scale: Tensor) -> Tensor:
    """x quantized in contiguous blocks of 32, times the int8 weight, in float64."""
    k = x.shape[-1]
    xq = _quantize_blocks(x.float().reshape(-1, k // BLOCK, BLOCK)).reshape(-1, k)
    y = xq.double() @ (q.double() * scale.double()[:, None]).T
    return y.reshape(*x.shape[:-1], q.shape[0])


def reference_int4(x: Tensor, q: Tensor, scale: Tensor, mins: Tensor, group: int) -> Tensor:
    """x quantized in the kernel's blocks: in each group, the 16 columns meeting the low
    nibbles of a 16-byte run of the weight with the 16 meeting the high nibbles (columns
    j and j + G/2 share a byte); times the dequantized int4 weight, in float64."""
    k = x.shape[-1]
    half, runs = group // 2, group // 32
    xf = x.float().reshape(-1, k // group, 2, runs, 16)  # (rows, groups, lo/hi, run, 16)
    blocks = xf.permute(0, 1, 3, 2, 4).reshape(-1, k // group, runs, BLOCK)
    xq = _quantize_blocks(blocks).reshape(-1, k // group, runs, 2, 16)
    xq = xq.permute(0, 1, 3, 2, 4).reshape(-1, k)
    assert half == runs * 16
    from app.modeling.quantize import Int4Weight

    w = dequantize_int4(Int4Weight(q, scale, mins, group)).double()
    return (xq.double() @ w.T).reshape(*x.shape[:-1], q.shape[0])


def _relative_error(got: Tensor, expected: Tensor) -> float:
    return float((got.double() - expected.double()).abs().max() / expected.abs().max())


def test_the_integer_kernels_are_built_for_this_cpus_isa() -> None:
    isa = idot_isa()
    print(f"integer kernels: {isa}, {idot_width()} weight bytes a vector")
    assert isa in ("avx512vnni", "avxvnni", "avx2", "scalar")
    assert idot_width() in (64, 32, 16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16],
                         ids=["fp32", "bf16", "fp16"])
# Widths of whole vectors, and ones with a tail short of a vector (96, 704: the shipped
# default-lm's MLP width) or no whole vector at all (96 with int4 on AVX-512).
@pytest.mark.parametrize("n, k", [(40, 128), (37, 256), (8, 768), (8, 96), (5, 704)])
def test_int8_kernel_equals_the_reference_of_the_same_quantized_operands(
        n: int, k: int, dtype: torch.dtype) -> None:
    w8 = quantize_int8(_weights(n, k))
    for rows in ROWS:
        x = _activations(rows, k).to(dtype)
        got = torch.ops.llm_quant.idot_int8_linear(x, w8.q, w8.scale)
        assert got.dtype == dtype and got.shape == (*rows, n)
        ref = reference_int8(x, w8.q, w8.scale)
        # fp32: summation order only; bf16 / fp16: the result's own rounding.
        tight = 1e-5 if dtype == torch.float32 else 8e-3
        assert _relative_error(got, ref) < tight, rows
        exact = F.linear(x.float(), _weights(n, k))
        # Both roundings together (the outliers above coarsen their blocks on purpose).
        assert _relative_error(got, exact) < 8e-2, rows


INT4_PRODUCTS = [(40, 256, 32), (40, 256, 64), (40, 256, 128), (13, 768, 32), (13, 768, 64),
                 (13, 768, 128), (9, 704, 64), (9, 96, 32)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("n, k, group", INT4_PRODUCTS, ids=lambda p: str(p))
def test_int4_kernel_equals_the_reference_of_the_same_quantized_operands(
        n: int, k: int, group: int, dtype: torch.dtype) -> None:
    w4 = quantize_int4(_weights(n, k), group)
    for rows in ROWS:
        x = _activations(rows, k).to(dtype)
        got = torch.ops.llm_quant.idot_int4_linear(x, w4.q, w4.scale, w4.mins, group)
        assert got.dtype == dtype and got.shape == (*rows, n)
        ref = reference_int4(x, w4.q, w4.scale, w4.mins, group)
        tight = 1e-5 if dtype == torch.float32 else 8e-3
        assert _relative_error(got, ref) < tight, rows
        # Against the same int4 weight with float activations: the activations' rounding.
        float_x = F.linear(x.float(), dequantize_int4(w4))
        assert _relative_error(got, float_x) < 4e-2, rows
        # Against the unquantized weight: both roundings (row 2, whose outlier coarsens
        # its group's int4 step on purpose, left out).
        exact = F.linear(x.float(), _weights(n, k))
        keep = torch.arange(n) != 2
        assert _relative_error(got[..., keep], exact[..., keep]) < 0.2, rows


def test_a_wrong_int4_layout_is_caught_by_the_reference() -> None:
    """The test can fail: the codes with their nibbles swapped (columns j and j + G/2
    exchanged) give another product, far outside the tight bound."""
    w4 = quantize_int4(_weights(16, 256), 64)
    swapped = ((w4.q >> 4) | (w4.q << 4)).contiguous()
    assert not torch.equal(unpack_int4(w4), unpack_int4(type(w4)(swapped, w4.scale, w4.mins, 64)))
    x = _activations((3,), 256)
    got = torch.ops.llm_quant.idot_int4_linear(x, swapped, w4.scale, w4.mins, 64)
    assert _relative_error(got, reference_int4(x, w4.q, w4.scale, w4.mins, 64)) > 0.1


def test_odd_widths_are_refused_and_the_layer_falls_back() -> None:
    """A width that is no whole number of activation blocks: the kernel raises, the
    candidate is not offered, and a layer asked for it keeps another kernel."""
    k = 40
    w8 = quantize_int8(_weights(8, k))
    with pytest.raises(RuntimeError, match="needs K a multiple of 32"):
        torch.ops.llm_quant.idot_int8_linear(torch.randn(1, k), w8.q, w8.scale)
    assert not supported("idot", Shape("int8", k, 8, 0, torch.float32))
    assert supported("idot", Shape("int8", 96, 8, 0, torch.float32))
    assert supported("idot", Shape("int4", 704, 8, 64, torch.bfloat16))
    layer = QuantizedLinear.from_weight(_weights(8, k), None, "int8")
    assert "idot" not in candidates(layer.shape(torch.float32))
    with pytest.raises(ValueError, match="does not support"):
        layer.use_kernels(KernelPlan("idot", "idot"), torch.float32)
    kernel_choice.choose_kernels([layer], torch.float32)
    assert "idot" not in (layer.kernels.one, layer.kernels.few)


def test_the_choice_offers_idot_only_with_integer_kernels_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Off by default (the server's --integer-kernels): rounding the activations would make
    a request's tokens depend on its batch. On, the startup choice times it like the
    others and reports it."""
    from app.modeling import quant_kernels

    shape = Shape("int4", 256, 64, 64, torch.float32)
    assert supported("idot", shape) and "idot" not in candidates(shape)
    layer = QuantizedLinear.from_weight(_weights(64, 256), None, "int4", 64)
    assert "idot" not in kernel_choice.choose_kernels([layer], torch.float32)
    monkeypatch.setattr(quant_kernels, "_OFFER_INTEGER", [True])
    assert candidates(shape)[-1] == "idot"
    monkeypatch.setattr(kernel_choice, "_timings", lambda shape, names, probes, x: {
        name: 0.5 if name == "idot" else 1.0 for name in names})
    report = kernel_choice.choose_kernels([layer], torch.float32)
    assert layer.kernels == KernelPlan("idot", "idot")
    assert "1 row idot (" in report and "idot 2.00x" in report


def test_inconsistent_inputs_are_refused() -> None:
    w4 = quantize_int4(_weights(8, 256), 64)
    x = torch.randn(2, 256)
    ops = torch.ops.llm_quant
    with pytest.raises(RuntimeError, match="scale and mins must be"):
        ops.idot_int4_linear(x, w4.q, w4.scale[:, :2].contiguous(), w4.mins, 64)
    with pytest.raises(RuntimeError, match="group size"):
        ops.idot_int4_linear(x, w4.q, w4.scale, w4.mins, 48)
    with pytest.raises(RuntimeError, match="x must have 256 features"):
        ops.idot_int4_linear(torch.randn(2, 128), w4.q, w4.scale, w4.mins, 64)
    w8 = quantize_int8(_weights(8, 128))
    with pytest.raises(RuntimeError, match="scale must be"):
        ops.idot_int8_linear(torch.randn(1, 128), w8.q, w8.scale[:3])


@pytest.mark.parametrize("method, group", [("int8", 0), ("int4", 64)])
def test_a_layer_running_idot_matches_on_every_row_class(method: str, group: int) -> None:
    layer = QuantizedLinear.from_weight(_weights(48, 256), None, method, group)
    layer.use_kernels(KernelPlan("idot", "idot"), torch.float32)
    for rows in ROWS:
        x = _activations(rows, 256)
        expected = F.linear(x, layer.dequantized())
        assert _relative_error(layer(x), expected) < 3e-2, rows


def test_compiled_graphs_call_the_integer_kernel() -> None:
    require_cpp_kernels(compiled=True)
    layer = QuantizedLinear.from_weight(_weights(48, 256), None, "int4", 32)
    layer.use_kernels(KernelPlan("idot", "idot"), torch.float32)
    compiled = torch.compile(lambda x: torch.relu(layer(x)) * 2, dynamic=False)
    for rows in (1, 3):
        x = _activations((rows,), 256)
        expected = torch.relu(layer(x)) * 2
        torch.testing.assert_close(compiled(x), expected)
        reference = reference_int4(x, layer.qweight, layer.scale, layer.mins, 32)
        assert _relative_error(compiled(x), torch.relu(reference) * 2) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("isa, path", [("avx2_avxvnni", "avxvnni"), ("avx2", "avx2"),
                                       ("baseline", "scalar")])
def test_the_narrower_vector_paths_equal_the_reference(isa: str, path: str) -> None:
    """The AVX-VNNI, AVX2 and scalar paths, built on this CPU with LLM_KERNEL_ISA (a build
    of its own, 30-60 s), pass this module's reference tests in a process of their own."""
    import os
    import subprocess
    import sys

    if os.environ.get("LLM_KERNEL_ISA"):
        pytest.skip("already in a narrower build's process")
    env = {**os.environ, "LLM_KERNEL_ISA": isa}
    check = [sys.executable, "-c", "from app.modeling.quant_kernels import idot_isa; "
             "print(idot_isa())"]
    built = subprocess.run(check, env=env, capture_output=True, text=True, timeout=600)
    assert built.stdout.strip().splitlines()[-1:] == [path], built.stderr[-2000:]
    # Never this test itself in the child (its name also says "reference").
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          __file__, "-k", "(reference or refused or layer) and not narrower"],
                         env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:]
