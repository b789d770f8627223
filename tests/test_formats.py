"""Tests for labkit.formats: format specs, rounding, gradient rounding, counters, loss scaling."""

from __future__ import annotations

import math

import pytest
import torch

from labkit.config import LossScaling, NumberFormat, Rounding
from labkit.formats import (
    FormatSpec,
    LossScaler,
    OverflowCounter,
    bytes_per_value,
    quantise,
    quantise_fwd_bwd,
    spec,
    tensor_bytes_in_format,
)

F = NumberFormat
NARROW = [F.BF16, F.FP16, F.FP8_E4M3, F.FP8_E5M2]
INF = math.inf


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def all_values(fmt: NumberFormat) -> torch.Tensor:
    """Every finite value of ``fmt`` (both zeros collapse to 0.0), sorted, as FP32."""
    fs = spec(fmt)
    if fs.bits == 8:
        codes = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    else:
        codes = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    values = codes.view(fs.dtype).to(torch.float32)
    values = values[torch.isfinite(values)]
    return torch.unique(values)  # sorted, and -0.0 == 0.0 merged


def neighbours(fmt: NumberFormat, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The representable values just below-or-equal and above-or-equal to each x (x in range)."""
    grid = all_values(fmt)
    hi_idx = torch.searchsorted(grid, x, right=False)
    lo_idx = torch.searchsorted(grid, x, right=True) - 1
    return grid[lo_idx], grid[hi_idx]


# ----------------------------------------------------------------------------------------------
# Specs


@pytest.mark.parametrize(
    ("fmt", "bits", "e", "m", "max_normal", "min_normal", "min_sub", "nbytes", "dtype"),
    [
        (F.FP32, 32, 8, 23, float(torch.finfo(torch.float32).max), 2.0**-126, 2.0**-149, 4, torch.float32),
        (F.BF16, 16, 8, 7, float.fromhex("0x1.fep127"), 2.0**-126, 2.0**-133, 2, torch.bfloat16),
        (F.FP16, 16, 5, 10, 65504.0, 2.0**-14, 2.0**-24, 2, torch.float16),
        (F.FP8_E4M3, 8, 4, 3, 448.0, 2.0**-6, 2.0**-9, 1, torch.float8_e4m3fn),
        (F.FP8_E5M2, 8, 5, 2, 57344.0, 2.0**-14, 2.0**-16, 1, torch.float8_e5m2),
    ],
)
def test_spec_numbers(fmt, bits, e, m, max_normal, min_normal, min_sub, nbytes, dtype):
    fs = spec(fmt)
    assert isinstance(fs, FormatSpec)
    assert fs.name is fmt
    assert (fs.bits, fs.exponent_bits, fs.mantissa_bits) == (bits, e, m)
    assert fs.bits == 1 + fs.exponent_bits + fs.mantissa_bits
    assert (fs.max_normal, fs.min_normal, fs.min_subnormal) == (max_normal, min_normal, min_sub)
    assert fs.bytes_per_value == nbytes == bytes_per_value(fmt) == bytes_per_value(fmt.value)
    assert fs.dtype is dtype
    assert fs.min_normal == 2.0**fs.emin
    assert fs.saturates == (fmt is F.FP8_E4M3)


def test_spec_matches_enumerated_values():
    for fmt in [F.FP16, F.FP8_E4M3, F.FP8_E5M2, F.BF16]:
        grid = all_values(fmt)
        positive = grid[grid > 0]
        fs = spec(fmt)
        assert float(positive.max()) == fs.max_normal
        assert float(positive.min()) == fs.min_subnormal


def test_spec_is_frozen_and_accepts_strings():
    fs = spec("fp8-e4m3")
    with pytest.raises(AttributeError):
        fs.bits = 9  # type: ignore[misc]
    with pytest.raises(ValueError):
        spec("fp4")


def test_bytes_helpers():
    assert [bytes_per_value(f) for f in F] == [4, 2, 2, 1, 1, 1]
    assert tensor_bytes_in_format(1000, F.FP32) == 4000
    assert tensor_bytes_in_format(1000, F.BF16) == 2000
    assert tensor_bytes_in_format(1000, "fp8-e5m2") == 1000
    assert tensor_bytes_in_format(0, F.FP16) == 0
    with pytest.raises(ValueError):
        tensor_bytes_in_format(-1, F.FP16)


@pytest.mark.parametrize("fmt", NARROW)
def test_overflow_threshold_is_where_round_to_nearest_leaves_the_range(fmt):
    fs = spec(fmt)
    t = torch.tensor(fs.overflow_threshold, dtype=torch.float32)
    above = torch.nextafter(t, torch.tensor(INF))
    assert float(t) == fs.overflow_threshold  # exactly an FP32 number
    assert float(quantise(t.reshape(1), fmt)[0]) == fs.max_normal
    if fs.saturates:
        assert float(quantise(above.reshape(1), fmt)[0]) == fs.max_normal
    else:
        assert float(quantise(above.reshape(1), fmt)[0]) == INF
    assert fs.overflow_threshold == {F.FP16: 65520.0 - 2.0**-8, F.FP8_E4M3: 464.0,
                                     F.FP8_E5M2: 61440.0 - 2.0**-8,
                                     F.BF16: float(torch.nextafter(torch.tensor(2.0**128 - 2.0**119),
                                                                   torch.tensor(0.0)))}[fmt]


# ----------------------------------------------------------------------------------------------
# Round to nearest


def test_fp32_is_the_identity_and_allocates_nothing():
    x = torch.randn(100)
    for rounding in Rounding:
        assert quantise(x, F.FP32, rounding) is x
    counter = OverflowCounter()
    assert quantise(x, F.FP32, counter=counter) is x
    assert counter.snapshot_and_reset()["fwd_total"] == 0


def edge_inputs() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    parts = [
        torch.randn(10_000, generator=g),
        torch.randn(10_000, generator=g) * 2.0 ** torch.randint(-40, 40, (10_000,), generator=g),
        torch.tensor([0.0, -0.0, INF, -INF, math.nan, 448.0, 464.0, 465.0, 480.0, 500.0, 57344.0, 61440.0,
                      65504.0, 65520.0, 70000.0, 3.4e38, -3.4e38, 2.0**-9, 2.0**-10, 2.0**-16, 2.0**-17,
                      2.0**-24, 2.0**-25, 2.0**-133, 2.0**-134, 1e-45]),
    ]
    x = torch.cat(parts)
    # Every representable value of the FP8 formats and the midpoints between them.
    for fmt in (F.FP8_E4M3, F.FP8_E5M2):
        grid = all_values(fmt)
        x = torch.cat([x, grid, (grid[1:] + grid[:-1]) / 2])
    return x


# Each format from its definition, written out independently of labkit.formats and of torch's dtypes:
# (mantissa bits, exponent of the smallest normal, largest finite value, beyond it: saturate or inf).
DEFINITIONS = {
    F.BF16: (7, -126, (2 - 2.0**-7) * 2.0**127, False),
    F.FP16: (10, -14, 65504.0, False),
    F.FP8_E4M3: (3, -6, 448.0, True),  # OCP E4M3 "fn": no inf, torch's cast saturates
    F.FP8_E5M2: (2, -14, 57344.0, False),  # OCP E5M2 (IEEE-like)
    F.FP8_E5M2_BIAS16: (2, -15, 57344.0, True),  # Graphcore's E5M2: bias 16, no inf/NaN codes
}


def reference_round(x: float, fmt: NumberFormat) -> float:
    """Round-to-nearest-even from first principles, in Python floats (float64, exact for FP32 inputs)."""
    mantissa_bits, emin, largest, saturates = DEFINITIONS[fmt]
    if math.isnan(x):
        return math.nan
    if math.isinf(x):
        return math.copysign(largest, x) if saturates else x
    if x == 0:
        return x
    _, exponent = math.frexp(abs(x))  # |x| = f · 2^exponent, f in [0.5, 1)
    spacing = 2.0 ** (max(exponent - 1, emin) - mantissa_bits)
    q = round(abs(x) / spacing) * spacing  # Python's round(): halves to even
    if q > largest:
        q = largest if saturates else math.inf
    return math.copysign(q, x)


@pytest.mark.parametrize("fmt", [*NARROW, F.FP8_E5M2_BIAS16])
def test_round_to_nearest_matches_an_independent_reference(fmt):
    x = edge_inputs()
    q = quantise(x, fmt)
    assert q.dtype == torch.float32 and q.shape == x.shape
    expected = torch.tensor([reference_round(v, fmt) for v in x.tolist()], dtype=torch.float32)
    torch.testing.assert_close(q, expected, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(torch.signbit(q[q == 0]), torch.signbit(expected[expected == 0]))  # signs of zeros too
    if fmt in NARROW:  # and the reference agrees with torch's cast where torch has the format
        torch.testing.assert_close(x.to(spec(fmt).dtype).float(), expected, rtol=0, atol=0, equal_nan=True)


def test_bias16_e5m2_spec_and_graphcore_oracle():
    from unit_scaling.formats import FPFormat

    fs, ocp = spec(F.FP8_E5M2_BIAS16), spec(F.FP8_E5M2)
    assert (fs.bits, fs.exponent_bits, fs.mantissa_bits, fs.bytes_per_value) == (8, 5, 2, 1)
    assert (fs.min_subnormal, fs.min_normal, fs.max_normal) == (2.0**-17, 2.0**-15, 57344.0)
    assert fs.min_subnormal == ocp.min_subnormal / 2 and fs.saturates and fs.dtype is None
    theirs = FPFormat(5, 2, rounding="nearest")
    assert (theirs.min_absolute_subnormal, theirs.max_absolute_value) == (fs.min_subnormal, fs.max_normal)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100_000, generator=g) * 2.0 ** torch.randint(-24, 18, (100_000,), generator=g).float()
    torch.testing.assert_close(quantise(x, F.FP8_E5M2_BIAS16), theirs.quantise(x), rtol=0, atol=0)
    # Exact midpoints: ours ties to even, Graphcore's "nearest" rounds them toward zero.
    tie = torch.tensor([1.375, 2.0**-17 * 1.5])
    assert quantise(tie, F.FP8_E5M2_BIAS16).tolist() == [1.5, 2.0**-16]
    assert theirs.quantise(tie).tolist() == [1.25, 2.0**-17]


def test_bias16_e5m2_keeps_values_that_ocp_e5m2_flushes():
    x = torch.tensor([2.0**-16.5, 2.0**-17, 2.0**-16])
    assert quantise(x, F.FP8_E5M2).tolist() == [2.0**-16, 0.0, 2.0**-16]
    assert quantise(x, F.FP8_E5M2_BIAS16).tolist() == [2.0**-17, 2.0**-17, 2.0**-16]
    counter = OverflowCounter()
    quantise(torch.full((10,), 2.0**-17), F.FP8_E5M2_BIAS16, counter=counter, kind="bwd")
    assert counter.snapshot_and_reset()["bwd_underflow"] == 0


def test_e4m3_decode_table_matches_torch_for_all_codes():
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(torch.float8_e4m3fn)
    expected = codes.to(torch.float32)
    # Round-trip each value through quantise: exactly representable values come back unchanged.
    finite = expected[torch.isfinite(expected)]
    torch.testing.assert_close(quantise(finite, F.FP8_E4M3), finite, rtol=0, atol=0)


@pytest.mark.parametrize("fmt", NARROW)
def test_non_contiguous_and_empty_inputs(fmt):
    x = torch.randn(64, 32).t()
    assert not x.is_contiguous()
    torch.testing.assert_close(quantise(x, fmt), x.to(spec(fmt).dtype).float(), rtol=0, atol=0)
    q = quantise(x, fmt, Rounding.STOCHASTIC, torch.Generator().manual_seed(0))
    assert q.shape == x.shape
    assert quantise(torch.empty(0), fmt).shape == (0,)
    assert quantise(torch.empty(0), fmt, Rounding.STOCHASTIC).shape == (0,)


@pytest.mark.parametrize("fmt", NARROW)
@pytest.mark.parametrize("rounding", list(Rounding))
def test_quantise_is_idempotent(fmt, rounding):
    x = edge_inputs()
    g = torch.Generator().manual_seed(0)
    q = quantise(x, fmt, rounding, g)
    torch.testing.assert_close(quantise(q, fmt, rounding, g), q, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize(
    ("fmt", "value", "expected"),
    [
        (F.FP8_E4M3, 1 + 2**-4, 1.0),  # tie between 1 and 1.125: to the even 1.0
        (F.FP8_E4M3, 1 + 3 * 2**-4, 1.25),  # tie between 1.125 and 1.25: to the even 1.25
        (F.FP8_E4M3, 2.0**-10, 0.0),  # half the min subnormal: tie, to the even 0 (underflow)
        (F.FP8_E4M3, 1.5 * 2.0**-10, 2.0**-9),
        (F.FP8_E5M2, 2.0**-10, 2.0**-10),  # a normal-range value of E5M2
        (F.FP8_E5M2, 2.0**-17, 0.0),  # half of E5M2's min subnormal: underflows
        (F.FP8_E4M3, 500.0, 448.0),  # torch's E4M3 cast saturates
        (F.FP8_E4M3, -1e6, -448.0),
        (F.FP8_E4M3, INF, 448.0),  # even inf saturates ("fn": no infinity)
        (F.FP8_E4M3, 464.0, 448.0),  # tie at max + ulp/2: to the even 448, not an overflow
        (F.FP8_E5M2, 60000.0, 57344.0),  # below the midpoint 61440: an ordinary rounding to max
        (F.FP8_E5M2, 61440.0, INF),  # tie: to the even 65536, out of range: inf
        (F.FP8_E5M2, 62000.0, INF),
        (F.FP16, 70000.0, INF),
        (F.FP16, 65519.0, 65504.0),
        (F.FP16, 2.0**-25, 0.0),
        (F.FP16, 2.0**-24, 2.0**-24),
        (F.BF16, 3.4e38, INF),
        (F.BF16, 1 + 2**-8, 1.0),
        (F.BF16, 2.0**-133, 2.0**-133),  # BF16 subnormals are FP32 subnormals
    ],
)
def test_known_values(fmt, value, expected):
    assert float(quantise(torch.tensor([value]), fmt)[0]) == expected


def test_nan_stays_nan():
    for fmt in NARROW:
        for rounding in Rounding:
            q = quantise(torch.tensor([math.nan, 1.0]), fmt, rounding)
            assert math.isnan(float(q[0])) and float(q[1]) == 1.0


def test_non_float32_input_is_rejected():
    with pytest.raises(TypeError, match="float32"):
        quantise(torch.randn(3, dtype=torch.float64), F.FP16)


# ----------------------------------------------------------------------------------------------
# Stochastic rounding


@pytest.mark.parametrize("fmt", NARROW)
def test_stochastic_rounding_gives_one_of_the_two_neighbours(fmt):
    fs = spec(fmt)
    g = torch.Generator().manual_seed(3)
    # Inputs across the whole finite range, subnormals included, both signs.
    lo_exp = math.log2(fs.min_subnormal) - 2
    hi_exp = math.log2(fs.max_normal)
    exps = torch.rand(20_000, generator=g) * (hi_exp - lo_exp) + lo_exp
    signs = torch.where(torch.rand(20_000, generator=g) < 0.5, -1.0, 1.0)
    x = signs * torch.exp2(exps)
    x = x[x.abs() < fs.max_normal]
    q = quantise(x, fmt, Rounding.STOCHASTIC, g)
    lo, hi = neighbours(fmt, x)
    assert bool(((q == lo) | (q == hi)).all())
    # Both neighbours occur (the rounding is not secretly deterministic).
    between = lo != hi
    assert bool((q[between] == lo[between]).any()) and bool((q[between] == hi[between]).any())


def sr_cases(fmt: NumberFormat) -> list[float]:
    """Values in the normal and subnormal range of fmt, and below its min subnormal."""
    fs = spec(fmt)
    s, n = fs.min_subnormal, fs.min_normal
    return [1.0 + 0.3 * 2.0**-fs.mantissa_bits, -(3.0 + 0.7 * 2.0 ** (1 - fs.mantissa_bits)),
            0.3 * s, 0.5 * s, 0.01 * s, 1.7 * s, -2.25 * s, n - 0.4 * s, n + 0.6 * s]


@pytest.mark.parametrize("fmt", NARROW)
def test_stochastic_rounding_is_unbiased(fmt):
    """E[q(x)] == x: the sample mean lies within 5 binomial standard errors of x.

    Measured with these seeds, the largest deviation over all formats and cases was 1.5 standard errors,
    while a bias of 1% of the grid spacing would be 9 to 45 standard errors: the bound of 5 is deterministic
    (seeded) yet catches any systematic bias above about half a percent of the spacing.
    """
    n = 200_000
    g = torch.Generator().manual_seed(1234)
    for value in sr_cases(fmt):
        x = torch.full((n,), value, dtype=torch.float32)
        xv = float(x[0])  # the FP32 value actually rounded
        lo, hi = (float(t[0]) for t in neighbours(fmt, x[:1]))
        q = quantise(x, fmt, Rounding.STOCHASTIC, g)
        assert set(torch.unique(q).tolist()) <= {lo, hi}
        p = (xv - lo) / (hi - lo)
        standard_error = (hi - lo) * math.sqrt(p * (1 - p) / n)
        mean = float(q.double().mean())
        assert abs(mean - xv) <= 5 * standard_error, (fmt, value, (mean - xv) / standard_error)


def test_stochastic_rounding_is_reproducible_with_a_seed():
    x = torch.randn(1000)
    a = quantise(x, F.FP8_E4M3, Rounding.STOCHASTIC, torch.Generator().manual_seed(7))
    b = quantise(x, F.FP8_E4M3, Rounding.STOCHASTIC, torch.Generator().manual_seed(7))
    c = quantise(x, F.FP8_E4M3, Rounding.STOCHASTIC, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("fmt", NARROW)
def test_stochastic_rounding_range_behaviour(fmt):
    fs = spec(fmt)
    g = torch.Generator().manual_seed(0)
    x = torch.tensor([INF, -INF, 2 * fs.max_normal, -2 * fs.max_normal, fs.max_normal])
    q = quantise(x, fmt, Rounding.STOCHASTIC, g)
    big = fs.max_normal if fs.saturates else INF
    assert q.tolist() == [big, -big, big, -big, fs.max_normal]


# ----------------------------------------------------------------------------------------------
# Autograd


@pytest.mark.parametrize(("fwd", "bwd"), [(F.FP8_E4M3, F.FP8_E5M2), (F.FP16, F.FP16), (F.BF16, F.FP8_E4M3),
                                          (F.FP32, F.FP8_E5M2), (F.FP8_E5M2, F.FP32)])
@pytest.mark.parametrize("rounding", [Rounding.NEAREST])
def test_gradient_is_rounded_to_the_backward_format(fwd, bwd, rounding):
    g = torch.Generator().manual_seed(5)
    x = (torch.randn(50, 20, generator=g) * 10).requires_grad_()
    upstream = torch.randn(50, 20, generator=g) * 2.0 ** torch.randint(-30, 20, (50, 20), generator=g)
    y = quantise_fwd_bwd(x, fwd, bwd, rounding)
    torch.testing.assert_close(y, quantise(x.detach(), fwd), rtol=0, atol=0)
    (y * upstream).sum().backward()
    torch.testing.assert_close(x.grad, quantise(upstream, bwd), rtol=0, atol=0, equal_nan=True)


def test_stochastic_gradient_uses_the_generator_and_lands_on_the_grid():
    x = torch.randn(1000, requires_grad=True)
    upstream = torch.randn(1000)
    y = quantise_fwd_bwd(x, F.FP8_E4M3, F.FP8_E5M2, Rounding.STOCHASTIC,
                         generator=torch.Generator().manual_seed(1))
    (y * upstream).sum().backward()
    lo, hi = neighbours(F.FP8_E5M2, upstream)
    assert bool(((x.grad == lo) | (x.grad == hi)).all())


def test_fp32_both_ways_is_the_identity():
    x = torch.randn(4, requires_grad=True)
    assert quantise_fwd_bwd(x, F.FP32, F.FP32) is x


def test_matmul_in_simulated_fp8():
    """Typical use: both matmul inputs rounded forward, the output's gradient rounded backward."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(8, 16, generator=g, requires_grad=True)
    w = torch.randn(16, 4, generator=g, requires_grad=True)
    counter = OverflowCounter()
    qa_node = quantise_fwd_bwd(a, F.FP8_E4M3, F.FP32, counter=counter)
    qw_node = quantise_fwd_bwd(w, F.FP8_E4M3, F.FP32, counter=counter)
    out = quantise_fwd_bwd(qa_node @ qw_node, F.FP32, F.FP8_E5M2, counter=counter)
    grad_out = torch.randn(8, 4, generator=g)
    out.backward(grad_out)
    qa, qw = quantise(a.detach(), F.FP8_E4M3), quantise(w.detach(), F.FP8_E4M3)
    torch.testing.assert_close(out, qa @ qw, rtol=0, atol=0)
    # The backward matmuls read the E5M2 output gradient and the E4M3 inputs, in FP32 arithmetic.
    q_grad_out = quantise(grad_out, F.FP8_E5M2)
    torch.testing.assert_close(a.grad, q_grad_out @ qw.t())
    torch.testing.assert_close(w.grad, qa.t() @ q_grad_out)
    snap = counter.snapshot_and_reset()
    assert snap["fwd_total"] == a.numel() + w.numel()
    assert snap["bwd_total"] == out.numel()


# ----------------------------------------------------------------------------------------------
# Counting


def test_counter_counts_a_hand_built_tensor_exactly():
    counter = OverflowCounter()
    x = torch.tensor([0.0, -0.0, 1e-4, -1e-4, 2.0**-10, 2.0**-9, 1.0, 448.0, 464.0, 465.0, -1000.0,
                      INF, -INF, math.nan])
    # E4M3: underflow 1e-4, -1e-4, 2^-10 (tie to 0); overflow 465, -1000 (saturated); inf/nan not counted.
    quantise(x, F.FP8_E4M3, counter=counter)
    g = torch.tensor([1e-6, 2.0**-16, 1e5, 6e4, -7e4, 0.0, 1.0])
    # E5M2 gradients: underflow 1e-6; overflow 1e5 and -7e4 (6e4 rounds to 57344).
    quantise(g, F.FP8_E5M2, counter=counter, kind="bwd")
    quantise(g, F.FP16, counter=counter, kind="bwd")  # FP16: no underflow (2^-24 ~ 6e-8); 1e5, -7e4 inf
    snap = counter.snapshot_and_reset()
    assert snap == {"fwd_total": 14, "fwd_underflow": 3, "fwd_overflow": 2,
                    "bwd_total": 14, "bwd_underflow": 1, "bwd_overflow": 4}
    assert counter.snapshot_and_reset() == dict.fromkeys(OverflowCounter.KEYS, 0)
    fractions = OverflowCounter.fractions(snap)
    assert fractions["fwd_underflow_frac"] == 3 / 14 and fractions["bwd_overflow_frac"] == 4 / 14
    assert OverflowCounter.fractions(dict.fromkeys(OverflowCounter.KEYS, 0))["fwd_overflow_frac"] == 0.0


@pytest.mark.parametrize("fmt", NARROW)
def test_counter_agrees_with_outputs_under_stochastic_rounding(fmt):
    fs = spec(fmt)
    g = torch.Generator().manual_seed(2)
    x = torch.cat([torch.rand(5000, generator=g) * 2 * fs.min_subnormal,
                   fs.max_normal * (1 + torch.rand(5000, generator=g) * 2.0**-fs.mantissa_bits),
                   torch.tensor([INF, math.nan, 0.0])])
    counter = OverflowCounter()
    q = quantise(x, fmt, Rounding.STOCHASTIC, g, counter=counter)
    snap = counter.snapshot_and_reset()
    finite = torch.isfinite(x)
    assert snap["fwd_underflow"] == int(((x != 0) & (q == 0)).sum())
    if fs.saturates:
        # Saturated values equal ±max; values that rounded down to max are not overflows.
        rounded_down = int((q.abs() == fs.max_normal).sum())
        assert 0 < snap["fwd_overflow"] < rounded_down
    else:
        assert snap["fwd_overflow"] == int((finite & torch.isinf(q)).sum())
    assert 0 < snap["fwd_underflow"] < 5000 and snap["fwd_overflow"] > 0


def test_counter_inside_autograd_separates_forward_and_backward():
    counter = OverflowCounter()
    x = torch.tensor([1e-5, 1.0, 1000.0], requires_grad=True)
    y = quantise_fwd_bwd(x, F.FP8_E4M3, F.FP8_E5M2, counter=counter)
    y.backward(torch.tensor([1e-7, 1e5, 1.0]))
    assert counter.snapshot_and_reset() == {"fwd_total": 3, "fwd_underflow": 1, "fwd_overflow": 1,
                                            "bwd_total": 3, "bwd_underflow": 1, "bwd_overflow": 1}


@pytest.mark.parametrize("rounding", list(Rounding))
def test_non_finite_inputs_are_not_overflows(rounding):
    counter = OverflowCounter()
    for fmt in NARROW:
        quantise(torch.tensor([INF, -INF, math.nan, 1.0, 0.0]), fmt, rounding, counter=counter)
        quantise(torch.tensor([math.nan, 2.0]), fmt, rounding, counter=counter)
    assert counter.snapshot_and_reset() == {"fwd_total": 28, "fwd_underflow": 0, "fwd_overflow": 0,
                                            "bwd_total": 0, "bwd_underflow": 0, "bwd_overflow": 0}


def test_counter_on_ordinary_values_counts_nothing():
    counter = OverflowCounter()
    g = torch.Generator().manual_seed(4)
    x = torch.randn(10_000, generator=g)
    for fmt in NARROW:
        for rounding in Rounding:
            quantise(x, fmt, rounding, g, counter=counter, kind="bwd")
    snap = counter.snapshot_and_reset()
    assert snap["bwd_total"] == 80_000 and snap["bwd_overflow"] == 0
    # Only E4M3 (min subnormal 2^-9 ~ 0.002) flushes some N(0, 1) values to zero.
    assert 0 < snap["bwd_underflow"] < 50


def test_counter_rejects_unknown_kind():
    with pytest.raises(ValueError):
        quantise(torch.ones(2), F.FP16, counter=OverflowCounter(), kind="sideways")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------
# Loss scaling


def params_with_grads(*grads: list[float]) -> list[torch.nn.Parameter]:
    out = []
    for grad in grads:
        p = torch.nn.Parameter(torch.zeros(len(grad)))
        p.grad = torch.tensor(grad)
        out.append(p)
    return out


def test_loss_scaler_none_is_inert():
    scaler = LossScaler(LossScaling.NONE, init_scale=1024)
    loss = torch.tensor(2.0)
    assert scaler.scale(loss) is loss and scaler.scale_value == 1.0
    params = params_with_grads([1.0, 2.0])
    assert scaler.unscale_(params) is False
    assert params[0].grad.tolist() == [1.0, 2.0]
    assert scaler.unscale_(params_with_grads([INF])) is True  # reported, but never skipped
    assert scaler.update(True) is False and scaler.scale_value == 1.0


def test_loss_scaler_unscales_in_place_and_detects_inf_and_nan():
    scaler = LossScaler(LossScaling.FIXED, init_scale=4.0)
    assert float(scaler.scale(torch.tensor(3.0))) == 12.0
    params = params_with_grads([8.0, -4.0], [2.0])
    params.append(torch.nn.Parameter(torch.zeros(2)))  # no grad: ignored
    assert scaler.unscale_(params) is False
    assert params[0].grad.tolist() == [2.0, -1.0] and params[1].grad.tolist() == [0.5]
    assert scaler.unscale_(params_with_grads([1.0], [math.nan])) is True
    assert scaler.unscale_(params_with_grads([-INF])) is True
    assert scaler.unscale_([]) is False


def test_fixed_loss_scale_skips_but_never_changes():
    scaler = LossScaler("fixed", init_scale=2.0**10, growth_interval=2)
    assert scaler.update(True) is True and scaler.scale_value == 2.0**10
    for _ in range(5):
        assert scaler.update(False) is False
    assert scaler.scale_value == 2.0**10
    assert scaler.skipped_steps == 1


def test_dynamic_loss_scale_halves_on_overflow_and_grows_after_the_interval():
    scaler = LossScaler(LossScaling.DYNAMIC, init_scale=2.0**12, growth_interval=3)
    assert scaler.update(True) is True
    assert scaler.scale_value == 2.0**11
    assert scaler.update(False) is False
    assert scaler.update(False) is False
    assert scaler.scale_value == 2.0**11
    assert scaler.update(True) is True  # an overflow resets the run of clean steps
    assert scaler.scale_value == 2.0**10
    for _ in range(2):
        scaler.update(False)
    assert scaler.scale_value == 2.0**10
    scaler.update(False)
    assert scaler.scale_value == 2.0**11  # 3 clean steps in a row
    assert scaler.skipped_steps == 2
    assert LossScaler(LossScaling.DYNAMIC).growth_interval == 200


def test_dynamic_loss_scaling_in_a_training_step():
    """An overflowing scaled gradient skips the step and halves the scale; the next step goes through."""
    w = torch.nn.Parameter(torch.tensor([1.0]))
    opt = torch.optim.SGD([w], lr=0.1)
    scaler = LossScaler(LossScaling.DYNAMIC, init_scale=2.0**118)
    for expected_skip in (True, False):
        opt.zero_grad()
        loss = (w * 2.0**10).sum()  # scaled gradient 2**128 overflows FP32 at the first scale
        scaler.scale(loss).backward()
        found_inf = scaler.unscale_([w])
        skipped = scaler.update(found_inf)
        if not skipped:
            opt.step()
        assert skipped is expected_skip
    assert scaler.scale_value == 2.0**117
    assert w.detach().item() == pytest.approx(1.0 - 0.1 * 2.0**10)


def test_loss_scaler_validates_arguments():
    with pytest.raises(ValueError):
        LossScaler("dynamic", init_scale=0.0)
    with pytest.raises(ValueError):
        LossScaler("dynamic", growth_interval=0)
    with pytest.raises(ValueError):
        LossScaler("sometimes")
