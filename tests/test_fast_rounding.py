"""The one-pass FP8 rounding kernel (labkit.fast_rounding) against torch's casts and labkit's torch path."""

from __future__ import annotations

import math

import pytest
import torch

from labkit import fast_rounding, formats
from labkit.config import NumberFormat, Rounding
from labkit.formats import OverflowCounter, quantise, spec

FP8 = [NumberFormat.FP8_E4M3, NumberFormat.FP8_E5M2, NumberFormat.FP8_E5M2_BIAS16]

pytestmark = pytest.mark.skipif(not fast_rounding.available(), reason="numba is not installed")


def inputs() -> torch.Tensor:
    """Random FP32 bit patterns (every exponent, inf and NaN among them), values at every scale, the
    special values, and every FP8 value with the midpoints around it (where ties to even decide)."""
    g = torch.Generator().manual_seed(0)
    bits = torch.randint(-(2**31), 2**31, (1_000_000,), generator=g, dtype=torch.int64).to(torch.int32)
    scaled = torch.randn(200_000, generator=g) * 2.0 ** torch.randint(-30, 20, (200_000,), generator=g)
    special = torch.tensor([0.0, -0.0, math.inf, -math.inf, math.nan, 448.0, 464.0, -464.0, 465.0, 480.0,
                            57344.0, 61440.0, -61440.0, 65536.0, 3.4e38, 2.0**-9, 2.0**-10, -2.0**-10, 2.0**-16,
                            2.0**-17, -2.0**-17, 2.0**-18, 1e-45, -1e-45])
    parts = [bits.view(torch.float32), scaled, special]
    for fmt in (NumberFormat.FP8_E4M3, NumberFormat.FP8_E5M2):
        grid = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(spec(fmt).dtype).float()
        grid = torch.unique(grid[torch.isfinite(grid)])
        middle = (grid[1:] + grid[:-1]) / 2
        parts += [grid, middle, torch.nextafter(middle, grid[1:]), torch.nextafter(middle, grid[:-1])]
    return torch.cat(parts)


def torch_path(x: torch.Tensor, fmt: NumberFormat, counter: OverflowCounter | None = None) -> torch.Tensor:
    """labkit's rounding without the kernel: torch's casts (or the format's grid) and counting passes."""
    original = fast_rounding.available
    fast_rounding.available = lambda: False
    try:
        return quantise(x, fmt, counter=counter)
    finally:
        fast_rounding.available = original


@pytest.mark.parametrize("fmt", FP8)
def test_kernel_gives_the_torch_paths_values_bit_for_bit(fmt):
    x = inputs()
    fs = spec(fmt)
    q, _, _ = fast_rounding.round_nearest(x, fs.mantissa_bits, fs.min_normal, fs.max_normal, fs.saturates)
    expected = torch_path(x, fmt)
    same = (q.view(torch.int32) == expected.view(torch.int32)) | (q.isnan() & expected.isnan())
    assert bool(same.all()), f"{int((~same).sum())} values differ, e.g. {x[~same][:5].tolist()}"  # signed zeros too
    if fs.dtype is not None:  # and that is torch's cast
        cast = x.to(fs.dtype).float()
        assert bool(((q == cast) | (q.isnan() & cast.isnan())).all())


@pytest.mark.parametrize("fmt", FP8)
def test_kernel_counts_what_the_torch_path_counts(fmt):
    x = inputs()
    kernel_counter, torch_counter = OverflowCounter(), OverflowCounter()
    quantise(x, fmt, counter=kernel_counter)
    torch_path(x, fmt, torch_counter)
    kernel, reference = kernel_counter.snapshot_and_reset(), torch_counter.snapshot_and_reset()
    assert kernel == reference
    assert kernel["fwd_underflow"] > 0 and kernel["fwd_overflow"] > 0  # the inputs exercise both


def test_quantise_uses_the_kernel_for_fp8_round_to_nearest_on_the_cpu(monkeypatch):
    calls = []
    real = fast_rounding.round_checked

    def constants(fmt: NumberFormat) -> tuple:
        fs = spec(fmt)
        return fast_rounding.constants(fs.mantissa_bits, fs.min_normal, fs.max_normal, fs.saturates)

    mantissa = {constants(f): spec(f).mantissa_bits for f in FP8}  # what each kernel call rounds to
    monkeypatch.setattr(fast_rounding, "round_checked", lambda *a, **k: calls.append(mantissa[a[1]]) or real(*a, **k))
    x = torch.randn(64)
    quantise(x, NumberFormat.FP8_E4M3)
    quantise(x, NumberFormat.FP8_E5M2_BIAS16)
    quantise(x, NumberFormat.FP16)  # torch's vectorised cast is as fast: not the kernel
    quantise(x, NumberFormat.FP8_E4M3, Rounding.STOCHASTIC)  # draws from the run's generator: torch path
    assert calls == [3, 2]


def test_non_contiguous_empty_and_wrong_inputs():
    fs = spec(NumberFormat.FP8_E4M3)
    args = (fs.mantissa_bits, fs.min_normal, fs.max_normal, fs.saturates)
    qkv = torch.randn(16, 64, 3 * 32) * 2.0 ** torch.randint(-14, 12, (16, 64, 96))
    views = [qkv.split(32, dim=2)[1].unflatten(2, (4, 8)).transpose(1, 2),  # attention's q, k, v are such views
             qkv.split(32, dim=2)[2], qkv[:, :, 5]]
    dense = [qkv[0].t(), qkv.transpose(0, 2), qkv.unflatten(2, (4, 24)).transpose(1, 2)]  # as transposed grads
    for x in views + dense:
        assert not x.is_contiguous()
        q, under, over = fast_rounding.round_nearest(x, *args, count=True)
        _, under_c, over_c = fast_rounding.round_nearest(x.contiguous(), *args, count=True)
        assert q.shape == x.shape and torch.equal(q, x.to(fs.dtype).float())
        assert (under, over) == (under_c, over_c) and under > 0 and over > 0
        assert q.stride() == (x.stride() if any(x is d for d in dense) else q.contiguous().stride())
    empty, under, over = fast_rounding.round_nearest(torch.empty(0, 3), *args)
    assert empty.shape == (0, 3) and (under, over) == (0, 0)
    with pytest.raises(TypeError, match="FP32 CPU tensor"):
        fast_rounding.round_nearest(torch.randn(4, dtype=torch.float64), *args)


def test_formats_fall_back_to_torch_without_numba(monkeypatch):
    x = torch.randn(1000) * 100
    with_kernel = quantise(x, NumberFormat.FP8_E4M3)
    monkeypatch.setattr(formats.fast_rounding, "available", lambda: False)
    monkeypatch.setattr(fast_rounding, "round_nearest", lambda *a, **k: pytest.fail("kernel called"))
    assert torch.equal(quantise(x, NumberFormat.FP8_E4M3), with_kernel)
