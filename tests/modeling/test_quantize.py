"""Quantization formats and kernels: round trips, the int4 byte layout, every kernel the
startup choice could pick for a product (the C++ one when it builds here, torch's int8 and
int4 kernels where they support the shape and dtype, the pure-PyTorch fallback) against
the dequantized weights on every shape class, the per-model choice itself, and the C++
kernels' refusal of inconsistent inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from app.kernels.build import cpu_isa, quant_extension
from app.modeling import kernel_choice
from app.modeling.quant_kernels import (
    INT4_KERNELS,
    INT8_KERNELS,
    Int4Operands,
    Shape,
    aten_int4_pack,
    candidates,
    supported,
)
from app.modeling.quantize import (
    dequantize_int4,
    dequantize_int8,
    int4_group_problem,
    quantize_int4,
    quantize_int8,
    unpack_int4,
)
from app.modeling.quantized_linear import KernelPlan, QuantizedLinear
from tests.helpers import require_cpp_compiler, require_cpp_kernels

KERNELS = ("dequant", "aten", "cpp")
# Relative to the largest |output|: float32 sums in another order; bfloat16 rounds x, the
# result and (torch's int4 kernel) the scale and zero to 8 bits of mantissa.
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2}


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


def test_int4_groups_narrower_than_float16_can_scale_keep_their_codes_finite() -> None:
    """A group whose spread is below float16's smallest step has scale 0: its codes are 0
    (not a division by zero) and it dequantizes to its min."""
    w = torch.full((2, 32), 0.25)
    w[0, 1] += 1e-7  # spread 1e-7 / 15: rounds to a zero float16 scale
    q = quantize_int4(w, 32)
    assert torch.equal(q.scale, torch.zeros(2, 1, dtype=torch.float16))
    assert torch.equal(unpack_int4(q), torch.zeros(2, 32, dtype=torch.uint8))
    torch.testing.assert_close(dequantize_int4(q), w, rtol=0, atol=1e-6)


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


def test_the_cpp_kernels_build_on_this_cpu() -> None:
    require_cpp_compiler()
    module, why = quant_extension()
    print(f"C++ kernels: {why} (ISA {cpu_isa()[0]})")
    assert module is not None, why
    assert supported("cpp", Shape("int8", 37, 24, 0, torch.bfloat16))


# ---------------------------------------------------------------------------- every kernel

# (method, out_features, in_features, group): the widths include ones that are no multiple
# of any vector width (37: int8 only; int4 widths are multiples of the group), the issue's
# 24x40 weight, and an int4 weight torch's kernel packs (out a multiple of 16) and one it
# refuses (out 40).
PRODUCTS = [("int8", 24, 40, 0), ("int8", 24, 37, 0), ("int8", 40, 128, 0),
            ("int4", 40, 128, 32), ("int4", 48, 96, 32), ("int4", 32, 128, 64)]
ROWS = [(1,), (3,), (2, 5), (17,), (70,), (1, 1)]


def _layer(method: str, n: int, k: int, group: int) -> QuantizedLinear:
    bias = torch.randn(n, generator=torch.Generator().manual_seed(2)) * 0.1
    return QuantizedLinear.from_weight(weights(n, k), bias, method, group)


def _expected(layer: QuantizedLinear, x: torch.Tensor) -> torch.Tensor:
    bias = layer.bias.detach().to(x.dtype).float() if layer.bias is not None else None
    return F.linear(x.float(), layer.dequantized(x.dtype).float(), bias)


def _relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got.float() - expected).abs().max() / expected.abs().max())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("product", PRODUCTS, ids=lambda p: f"{p[0]}-{p[1]}x{p[2]}")
def test_every_kernel_the_choice_could_pick_equals_the_dequantized_product(
        product: tuple[str, int, int, int], dtype: torch.dtype) -> None:
    """Each candidate the startup choice may pick for this product runs (as the layer's
    plan) on 1 row, a few rows, 70 rows and batched shapes, and also directly (the layer
    runs dequant above 64 rows: the kernel itself is checked there too); kernels that do
    not support the shape are refused."""
    method, n, k, group = product
    layer = _layer(method, n, k, group)
    assert layer.bias is not None
    layer.bias = torch.nn.Parameter(layer.bias.detach().to(dtype), requires_grad=False)
    shape = layer.shape(dtype)
    offered = candidates(shape)
    assert offered[0] == "dequant"
    if method == "int4" and shape.out_features % 16 == 0:
        assert "aten" in offered, "torch's int4 kernel packs this shape"
    for name in KERNELS:
        if name not in offered:
            with pytest.raises(ValueError, match="does not support"):
                layer.use_kernels(KernelPlan(name, name), dtype)
            continue
        layer.use_kernels(KernelPlan(name, name), dtype)
        for rows in ROWS:
            x = torch.randn(*rows, k, generator=torch.Generator().manual_seed(1)).to(dtype)
            expected = _expected(layer, x)
            got = layer(x)
            assert got.dtype == dtype and got.shape == (*rows, n)
            err = _relative_error(got, expected)
            assert err < TOLERANCE[dtype], f"{name} via the layer on {rows}: error {err}"
            if method == "int8":
                direct = INT8_KERNELS[name](x, layer.qweight, layer.scale)
            else:
                operands = Int4Operands(layer.qweight, layer.scale, layer.mins, group,
                                        layer.aten_weight, layer.aten_scale_zeros)
                direct = INT4_KERNELS[name](x, operands)
            err = _relative_error(direct + layer.bias, expected)
            assert err < TOLERANCE[dtype], f"{name} called directly on {rows}: error {err}"


def test_torch_int8_kernel_is_offered_only_where_it_is_correct() -> None:
    """Defect 1: `_weight_int8pack_mm` reads past the row for bfloat16 activations and an
    input width that is no multiple of the vector width (garbage or a crash)."""
    assert supported("aten", Shape("int8", 37, 24, 0, torch.float32))
    assert supported("aten", Shape("int8", 64, 24, 0, torch.bfloat16))
    for width in (36, 37, 40):
        for dtype in (torch.bfloat16, torch.float16):
            assert not supported("aten", Shape("int8", width, 24, 0, dtype)), (width, dtype)


def test_torch_int4_kernel_uses_our_scale_and_min_exactly_in_float32() -> None:
    """zero = min + 8 * scale maps our w = q * scale + min onto torch's (q - 8) * scale +
    zero: in float32 the two agree to rounding, on every row count."""
    w4 = quantize_int4(weights(48, 256), 64)
    packed, scale_zeros = aten_int4_pack(w4, torch.float32)
    assert scale_zeros.shape == (4, 48, 2)
    for rows in (1, 5, 70):
        x = torch.randn(rows, 256)
        got = torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, 64, scale_zeros)
        torch.testing.assert_close(got, F.linear(x, dequantize_int4(w4)), rtol=1e-5,
                                   atol=1e-5)


# ---------------------------------------------------------------------------- the choice


def _prefer(order: tuple[str, ...]) -> object:
    """A stand-in for the timing: kernels earlier in `order` are faster."""
    def fake(shape: object, names: list[str], probes: list[QuantizedLinear],
             x: torch.Tensor) -> dict[str, float]:
        return {name: float(order.index(name) + 1) for name in names}
    return fake


def test_the_choice_is_per_shape_and_never_an_unsupported_kernel(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Defect 1: with torch's int8 kernel the fastest, bfloat16 products whose width it
    cannot read still get a kernel that is correct (the issue's 24x40 weight, 3 rows)."""
    monkeypatch.setattr(kernel_choice, "_timings", _prefer(("aten", "cpp", "dequant", "idot")))
    odd = _layer("int8", 24, 36, 0)
    even = _layer("int8", 24, 64, 0)
    report = kernel_choice.choose_kernels([odd, even], torch.bfloat16)
    assert even.kernels == KernelPlan("aten", "aten")
    assert "aten" not in (odd.kernels.one, odd.kernels.few)
    assert "int8 36->24" in report and "int8 64->24" in report
    for layer in (odd, even):
        x = torch.randn(3, layer.in_features).to(torch.bfloat16)
        assert _relative_error(layer(x), _expected(layer, x)) < TOLERANCE[torch.bfloat16]


def test_the_choice_is_measured_and_reported() -> None:
    layers = [QuantizedLinear.from_weight(weights(n=256, k=256, seed=i), None, "int8")
              for i in range(3)] + [QuantizedLinear.from_weight(weights(n=64, k=256), None,
                                                                "int4", 64)]
    report = kernel_choice.choose_kernels(layers, torch.float32)
    assert report.startswith("int8 256->256: 1 row ") and "16 rows " in report
    assert "; int4/64 256->64: 1 row " in report
    for layer in layers:
        shape = layer.shape(torch.float32)
        assert layer.kernels.one in candidates(shape)
        assert layer.kernels.few in candidates(shape)
    assert layers[0].kernels == layers[1].kernels == layers[2].kernels  # one shape, one plan


def test_two_models_in_one_process_choose_independently(
        monkeypatch: pytest.MonkeyPatch) -> None:
    first = [_layer("int8", 24, 64, 0), _layer("int4", 32, 128, 32)]
    second = [_layer("int8", 24, 64, 0), _layer("int4", 32, 128, 32)]
    monkeypatch.setattr(kernel_choice, "_timings", _prefer(("dequant", "aten", "cpp", "idot")))
    kernel_choice.choose_kernels(first, torch.float32)
    monkeypatch.setattr(kernel_choice, "_timings", _prefer(("aten", "dequant", "cpp", "idot")))
    kernel_choice.choose_kernels(second, torch.float32)
    assert [m.kernels for m in first] == [KernelPlan("dequant", "dequant")] * 2
    assert [m.kernels for m in second] == [KernelPlan("aten", "aten")] * 2
    assert first[1].aten_weight is None and second[1].aten_weight is not None


def test_quantized_products_compile_as_custom_ops() -> None:
    require_cpp_kernels(compiled=True)
    layer = QuantizedLinear.from_weight(weights(n=40), None, "int4", 32)
    kernel_choice.choose_kernels([layer], torch.float32)
    compiled = torch.compile(lambda x: torch.relu(layer(x)) * 2, dynamic=False)
    for rows in (1, 2):
        x = torch.randn(rows, 128)
        torch.testing.assert_close(compiled(x), torch.relu(layer(x)) * 2)


# ---------------------------------------------------------------------------- C++ checks


def test_the_cpp_kernels_refuse_inputs_that_do_not_match_the_weight() -> None:
    """Defect 9: sizes of scale and mins, dtypes, contiguity and group size are checked
    before any pointer is read: a direct call raises instead of reading past a buffer."""
    require_cpp_kernels()
    ops = torch.ops.llm_quant
    w8 = quantize_int8(weights(24, 64))
    x = torch.randn(3, 64)
    torch.testing.assert_close(ops.int8_linear(x, w8.q, w8.scale),
                               F.linear(x, dequantize_int8(w8)), rtol=1e-4, atol=1e-5)
    bad8 = {
        "scale must be a contiguous float32 tensor of 24": (x, w8.q, w8.scale[:4]),
        "one per row of q": (x, w8.q, torch.ones(2, 24)),
        "scale must be": (x, w8.q, w8.scale.to(torch.float16)),
        "q must be a contiguous": (x, w8.q.t().contiguous().t(), w8.scale),
        "x has 32 features": (torch.randn(3, 32), w8.q, w8.scale),
        "x must be float32": (torch.ones(3, 64, dtype=torch.int32), w8.q, w8.scale),
    }
    for message, args in bad8.items():
        with pytest.raises(RuntimeError, match=message):
            ops.int8_linear(*args)
    w4 = quantize_int4(weights(24, 128), 32)
    x = torch.randn(3, 128)
    torch.testing.assert_close(ops.int4_linear(x, w4.q, w4.scale, w4.mins, 32),
                               F.linear(x, dequantize_int4(w4)), rtol=1e-4, atol=1e-5)
    bad4 = {
        "scale and mins must be \\(24, 4\\)": [(x, w4.q, w4.scale[:2], w4.mins, 32),
                                               (x, w4.q, w4.scale, w4.mins[:, :2].contiguous(), 32),
                                               (x, w4.q, w4.scale.view(-1), w4.mins, 32)],
        "float16": [(x, w4.q, w4.scale.float(), w4.mins, 32)],
        "group size must be a multiple of 32": [(x, w4.q, w4.scale, w4.mins, 48)],
        "does not divide": [(torch.randn(3, 96), w4.q[:, :48].contiguous(), w4.scale,
                              w4.mins, 64)],
    }
    for message, cases in bad4.items():
        for args in cases:
            with pytest.raises(RuntimeError, match=message):
                ops.int4_linear(*args)


def test_the_cpp_kernels_refuse_tensors_off_the_cpu() -> None:
    """The Python module's functions call the kernels without torch's dispatcher (which
    would route a non-CPU tensor elsewhere): they check the device themselves."""
    require_cpp_kernels()
    module, _ = quant_extension()
    assert module is not None
    w8 = quantize_int8(weights(24, 64))
    x = torch.randn(2, 64)
    torch.testing.assert_close(module.int8_linear(x, w8.q, w8.scale),
                               F.linear(x, dequantize_int8(w8)), rtol=1e-4, atol=1e-5)
    with pytest.raises(RuntimeError, match="x must be on the CPU"):
        module.int8_linear(x.to("meta"), w8.q, w8.scale)
    with pytest.raises(RuntimeError, match="weight tensors must be on the CPU"):
        module.int8_linear(x, w8.q.to("meta"), w8.scale)
    w4 = quantize_int4(weights(24, 128), 32)
    with pytest.raises(RuntimeError, match="weight tensors must be on the CPU"):
        module.int4_linear(torch.randn(2, 128), w4.q, w4.scale, w4.mins.to("meta"), 32)
    with pytest.raises(RuntimeError, match="scale and mins must be"):
        module.int4_linear(torch.randn(2, 128), w4.q, w4.scale[:1], w4.mins, 32)
