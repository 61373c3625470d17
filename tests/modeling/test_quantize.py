"""Quantization formats and kernels: round trips, the int4 byte layout, and every kernel
available on this CPU (the C++ one when it builds here, torch's int8 kernel, the
pure-PyTorch fallback) against the dequantized weights."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from app.kernels.build import cpu_isa, quant_extension
from app.modeling import quantized_linear as ql
from app.modeling.quantize import (
    dequantize_int4,
    dequantize_int8,
    int4_group_problem,
    quantize_int4,
    quantize_int8,
    unpack_int4,
)
from tests.helpers import require_cpp_compiler


def weights(n: int = 48, k: int = 128, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05
    w[3] = 0.0  # an all-zero row must not divide by zero
    w[5, 7] = 1.5  # an outlier sets its row's scale
    return w


def test_int8_round_trip_error_is_at_most_half_a_step() -> None:
    w = weights()
    q = quantize_int8(w)
    assert q.q.dtype == torch.int8 and q.q.shape == w.shape and q.scale.shape == (48,)
    assert int(q.q.abs().max()) <= 127
    err = (dequantize_int8(q) - w).abs()
    assert torch.all(err <= q.scale[:, None] / 2 + 1e-7)
    assert torch.equal(dequantize_int8(q)[3], torch.zeros(128))
    assert int(q.q[5, 7]) == 127  # the row's largest magnitude maps to the end of the range


@pytest.mark.parametrize("group", [32, 64, 128])
def test_int4_round_trip_error_is_at_most_half_a_step(group: int) -> None:
    w = weights()
    q = quantize_int4(w, group)
    assert q.q.dtype == torch.uint8 and q.q.shape == (48, 64)
    assert q.scale.shape == q.mins.shape == (48, 128 // group)
    assert q.scale.dtype == q.mins.dtype == torch.float16
    codes = unpack_int4(q)
    assert int(codes.max()) <= 15
    err = (dequantize_int4(q) - w).abs().view(48, -1, group)
    step = q.scale.float()[..., None]
    # Half a step, plus the float16 rounding of min (relative 2^-11 of its magnitude).
    assert torch.all(err <= step / 2 + q.mins.float().abs()[..., None] * 2**-10 + 1e-6)


def test_int4_byte_layout_puts_the_second_half_of_a_group_in_the_high_nibble() -> None:
    w = torch.arange(64, dtype=torch.float32).repeat(2, 1)  # codes 0..15 across each group
    w = (w % 32) / 31.0 * 15.0  # group of 32: values 0..15 in steps of 15/31
    q = quantize_int4(w, 32)
    codes = unpack_int4(q)
    packed = q.q.view(2, 2, 16)
    assert torch.equal(packed & 0x0F, codes.view(2, 2, 32)[..., :16])
    assert torch.equal(packed >> 4, codes.view(2, 2, 32)[..., 16:])


def test_int4_refuses_shapes_its_groups_do_not_divide() -> None:
    assert int4_group_problem(96, 64) is not None
    assert int4_group_problem(96, 32) is None
    assert int4_group_problem(128, 48) is not None  # not an offered group size
    with pytest.raises(ValueError, match="multiple of the group size"):
        quantize_int4(torch.zeros(4, 96), 64)


@pytest.fixture
def restore_choice() -> Iterator[None]:
    saved = dict(ql.CHOSEN)
    yield
    ql.CHOSEN.clear()
    ql.CHOSEN.update(saved)


def test_the_cpp_kernels_build_on_this_cpu() -> None:
    require_cpp_compiler()
    module, why = quant_extension()
    print(f"C++ kernels: {why} (ISA {cpu_isa()[0]})")
    assert module is not None, why


@pytest.mark.parametrize("method", ["int8", "int4"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 128), (3, 128), (2, 5, 128), (17, 128), (70, 128),
                                   (1, 1, 128)])
def test_every_kernel_equals_the_dequantized_product(method: str, dtype: torch.dtype,
                                                     shape: tuple[int, ...],
                                                     restore_choice: None) -> None:
    w = weights(n=40)
    bias = torch.randn(40) * 0.1
    layer = ql.QuantizedLinear.from_weight(w, bias, method, 32)
    layer.bias = torch.nn.Parameter(bias.to(dtype), requires_grad=False)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    expected = F.linear(x.float(), layer.dequantized(), bias.to(dtype).float())
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    names = ql.available_kernels(method)
    assert "dequant" in names
    for name in names:
        for cls in ("one", "few"):
            ql.CHOSEN[(method, cls)] = name
        got = layer(x)
        assert got.dtype == dtype and got.shape == (*shape[:-1], 40)
        err = (got.float() - expected).abs().max() / expected.abs().max()
        assert err < tol, f"{method} kernel {name} on {shape} {dtype}: relative error {err}"


def test_int8_kernels_handle_a_width_that_is_not_a_vector_multiple(restore_choice: None
                                                                    ) -> None:
    w = torch.randn(24, 37) * 0.1  # 37 inputs: the vector loops' remainder paths
    layer = ql.QuantizedLinear.from_weight(w, None, "int8")
    for rows in (1, 6):
        x = torch.randn(rows, 37)
        expected = F.linear(x, layer.dequantized())
        for name in ql.available_kernels("int8"):
            ql.CHOSEN[("int8", "one")] = ql.CHOSEN[("int8", "few")] = name
            torch.testing.assert_close(layer(x), expected, rtol=1e-4, atol=1e-5)


def test_kernel_choice_is_measured_and_reported(restore_choice: None) -> None:
    layers = [ql.QuantizedLinear.from_weight(weights(n=256, k=256, seed=i), None, "int8")
              for i in range(3)]
    report = ql.choose_kernels(layers, torch.float32)
    assert report.startswith("1 row: ") and "16 rows: " in report
    assert ql.CHOSEN[("int8", "one")] in ql.available_kernels("int8")
    assert ql.CHOSEN[("int8", "few")] in ql.available_kernels("int8")


def test_quantized_products_compile_as_custom_ops(restore_choice: None) -> None:
    from app.modeling.compile import compiler_problem

    if compiler_problem():
        pytest.skip(f"torch.compile cannot build kernels here: {compiler_problem()}")
    layer = ql.QuantizedLinear.from_weight(weights(n=40), None, "int4", 32)
    compiled = torch.compile(lambda x: torch.relu(layer(x)) * 2, dynamic=False)
    x = torch.randn(2, 128)
    torch.testing.assert_close(compiled(x), torch.relu(layer(x)) * 2)
