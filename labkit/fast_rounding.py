"""Round-to-nearest onto an FP8 grid in one pass over memory, with the under/overflow counts (CPU).

Why a kernel of our own: simulating FP8 on the CPU means rounding about six million values per training
step of the default Transformer. PyTorch has no fused "round to FP8 and back" op; the cast
``x.to(torch.float8_e4m3fn).float()`` is two scalar conversion loops (~1.4 ns per value here, more on
tensors that are not in cache), and counting underflows and overflows costs three more passes. This
kernel reads each value once and writes it once (~0.3 ns per value), counts as it goes, and gives
bit-for-bit the values of torch's casts (``tests/test_fast_rounding.py`` checks every kind of input
against them). numba compiles it on first use: about 1.5 s the first time on a machine, then about
0.5 s per process to load it from numba's on-disk cache.

The rounding, for a format with ``m`` stored mantissa bits: in the binade ``[2^e, 2^(e+1))`` the
format's values are spaced ``g = 2^(e-m)`` apart (below the smallest normal value the spacing stays
that of the first binade: the subnormals). Adding ``M = 1.5 · 2^23 · g`` to ``|x|`` lands the sum in
``[2^23·g, 2^24·g)``, where FP32's own spacing is exactly ``g``, so the FP32 adder rounds ``|x|`` to a
multiple of ``g``, ties to even; subtracting ``M`` again is exact. ``M`` comes from ``x``'s exponent
bits (clamped to the format's first and top binades), so the whole rounding is an integer mask, two
clamps, an add and a subtract per value, which the compiler vectorises. Then the format's range: a
result above the largest finite value is an overflow (it saturates for E4M3 and Graphcore's bias-16
E5M2, and becomes inf for OCP E5M2, as torch's casts do); a non-zero input that became zero is an
underflow; inf and NaN pass through (inf saturates where the format has none) and are not counted.

Only round-to-nearest on the CPU goes through here; stochastic rounding and CUDA tensors use the torch
operations in :mod:`labkit.formats` (the same numbers; the tests compare the two paths).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

__all__ = ["available", "constants", "round_checked", "round_nearest"]


@functools.cache
def _kernel() -> Callable[..., tuple[int, int]] | None:
    """The compiled kernel (:mod:`labkit.fast_rounding_kernel`), or None where numba is not installed."""
    try:
        from labkit.fast_rounding_kernel import round_nearest_kernel
    except ImportError:
        return None
    return round_nearest_kernel


def available() -> bool:
    """True where the kernel can run (numba installed)."""
    return _kernel() is not None


@functools.cache
def _constants(mantissa_bits: int, min_normal: float, max_normal: float, saturates: bool) -> tuple[Any, ...]:
    top_binade = 2.0 ** math.floor(math.log2(max_normal))
    return (np.float32(min_normal).view(np.uint32), np.float32(top_binade).view(np.uint32),
            np.uint32(((23 - mantissa_bits) << 23) | 0x400000),  # × 2^(23-m) in the exponent, × 1.5 in the fraction
            np.float32(max_normal), np.float32(max_normal if saturates else math.inf))


def round_nearest(x: torch.Tensor, mantissa_bits: int, min_normal: float, max_normal: float, saturates: bool,
                  count: bool = False) -> tuple[torch.Tensor, int, int]:
    """``x`` (FP32, CPU) rounded to nearest, ties to even, onto the grid of a format with ``mantissa_bits``
    stored fraction bits, smallest normal ``min_normal`` and largest finite ``max_normal`` (beyond it:
    ``max_normal`` if ``saturates``, else inf); a new tensor, laid out as ``x`` where ``x`` is dense (as
    torch's elementwise ops do), else contiguous. With ``count``, also the number of underflows and
    overflows (else 0, 0). Raises RuntimeError where numba is missing (see :func:`available`).
    """
    if _kernel() is None:
        raise RuntimeError("labkit.fast_rounding needs numba (pip install numba); labkit.formats falls back "
                           "to torch's casts without it")
    if x.dtype != torch.float32 or x.device.type != "cpu":
        raise TypeError(f"round_nearest expects an FP32 CPU tensor, got {x.dtype} on {x.device}")
    return round_checked(x.detach(), _constants(mantissa_bits, min_normal, max_normal, saturates), count)


def round_checked(source: torch.Tensor, constants: tuple[Any, ...], count: bool) -> tuple[torch.Tensor, int, int]:
    """:func:`round_nearest` for a caller that has checked its input (an FP32 CPU tensor that needs no
    gradient) and the kernel (:func:`available`); ``constants`` from :func:`constants`. The models' path."""
    contiguous = source.is_contiguous()
    if not contiguous and not _dense(source):
        source, contiguous = source.contiguous(), True  # a view with gaps (a slice): copied first
    out = torch.empty_like(source)  # a dense input's layout (torch's preserve_format)
    if source.numel() == 0:
        return out, 0, 0
    # Rounding is elementwise: the kernel walks the memory of a dense tensor in storage order, whatever its
    # dimension order (a transposed gradient needs no copy).
    if contiguous:
        values, rounded = source.numpy().reshape(-1), out.numpy().reshape(-1)
    else:
        values = source.as_strided((source.numel(),), (1,)).numpy()
        rounded = out.as_strided((out.numel(),), (1,)).numpy()
    underflows, overflows = _kernel()(values, values.view(np.uint32), rounded, *constants, count)
    return out, underflows, overflows


def constants(mantissa_bits: int, min_normal: float, max_normal: float, saturates: bool) -> tuple[Any, ...]:
    """The kernel's constants for a format (cached): pass them to :func:`round_checked`."""
    return _constants(mantissa_bits, min_normal, max_normal, saturates)


def _dense(t: torch.Tensor) -> bool:
    """True when ``t``'s elements fill one block of memory without gaps or overlaps, in some dimension order."""
    if t.is_contiguous():
        return True
    span = 1
    for size, stride in sorted(((s, st) for s, st in zip(t.shape, t.stride(), strict=True) if s != 1),
                               key=lambda d: d[1]):
        if stride != span:
            return False
        span *= size
    return True
