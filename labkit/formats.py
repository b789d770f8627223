"""Simulated low-precision number formats, overflow/underflow counting and loss scaling.

The CPU this lab runs on has no fast BF16/FP16/FP8 arithmetic (a BF16 matmul is hundreds of times
slower than FP32), so narrow formats are *simulated*: values are rounded to the format and kept in
FP32 ("fake quantisation"). The arithmetic stays FP32; what changes is which values can exist.

Public API
----------
``spec(fmt)``
    A :class:`FormatSpec` with the format's bit layout and range, derived from ``torch.finfo``.
``quantise(x, fmt, rounding, generator, counter=None, kind="fwd")``
    Round an FP32 tensor to the values representable in ``fmt`` (result still FP32). FP8 round-to-nearest
    on the CPU runs a one-pass kernel (:mod:`labkit.fast_rounding`) that gives the casts' values bit for bit.
``quantise_fwd_bwd(x, fwd, bwd, rounding, counter=None, generator=None)``
    Round the value to ``fwd`` in the forward pass and its gradient to ``bwd`` in the backward pass.
``OverflowCounter``
    Per-step counts of underflows (non-zero values rounded to zero) and overflows, forward and backward.
``LossScaler``
    No, fixed or dynamic loss scaling (halve on overflow, grow after a run of clean steps).
``bytes_per_value(fmt)``, ``tensor_bytes_in_format(numel, fmt)``
    Memory accounting by format: the real saving of narrow formats is here.

Format variants
---------------
FP8 comes in variants with different exponent biases. ``fp8-e4m3`` and ``fp8-e5m2`` are the OCP formats
that torch's ``float8_e4m3fn`` / ``float8_e5m2`` and current GPUs implement (E5M2: smallest subnormal 2^-16).
``fp8-e5m2-bias16`` is Graphcore's E5M2 (``unit_scaling.formats.FPFormat(5, 2)``): bias 16, no inf/NaN
codes, smallest subnormal 2^-17, largest 57344, saturating. It has no torch dtype, so round-to-nearest is
computed on its grid (ties to even; Graphcore's own ``quantise`` rounds ties toward zero, which differs
only on exact midpoints). Its range sits one binade lower, which is exactly where a standard model's
gradients are: whether "standard fails in FP8" depends on the variant (``docs/RESULTS.md``).

Overflow semantics (the same for both rounding modes, and what torch 2.13's casts do)
------------------------------------------------------------------------------------
* FP16, BF16 and FP8 E5M2 are IEEE-like: a value whose rounded magnitude exceeds the largest
  finite value becomes ``±inf``, exactly as ``x.to(torch.float16)`` does.
* FP8 E4M3 is the OCP "fn" format (finite + NaN only, no infinity). torch's cast to
  ``float8_e4m3fn`` *saturates*: anything beyond ±448 (including ±inf) becomes ±448, NaN stays NaN.
  This matches the saturating casts of hardware FP8 training recipes. We keep it, so that the
  simulated numbers are the ones a cast would produce; but a saturated value is no longer visible
  as a non-finite value, so :class:`OverflowCounter` counts overflow from the value *before* the
  range is applied: a finite input is an overflow when its rounded magnitude (on the format's grid,
  continued beyond the largest exponent) exceeds the format's largest finite value. For
  round-to-nearest that is ``|x| > FormatSpec.overflow_threshold`` (65504 + 16 for FP16, which rounds
  up to inf; 448 + 16 = 464 for E4M3, where a tie rounds down to the even 448). For the IEEE-like
  formats this is exactly "finite ``x`` whose ``q(x)`` is ``±inf``".
* NaN stays NaN; ``±inf`` stays ``±inf`` (``±448`` for E4M3). Non-finite inputs are never counted
  as overflows (they were not produced by the rounding).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from labkit import fast_rounding
from labkit.config import LossScaling, NumberFormat, Rounding
from labkit.models.layers import Ops
from labkit.scaling.ops import scaled_linear

__all__ = [
    "FormatSpec",
    "LossScaler",
    "OverflowCounter",
    "Quantise",
    "bytes_per_value",
    "quantise",
    "quantise_fwd_bwd",
    "simulated_ops",
    "spec",
    "tensor_bytes_in_format",
]

Kind = Literal["fwd", "bwd"]

_DTYPES: dict[NumberFormat, torch.dtype] = {
    NumberFormat.FP32: torch.float32,
    NumberFormat.BF16: torch.bfloat16,
    NumberFormat.FP16: torch.float16,
    NumberFormat.FP8_E4M3: torch.float8_e4m3fn,
    NumberFormat.FP8_E5M2: torch.float8_e5m2,
}

# Formats whose cast clamps out-of-range values to ±max instead of producing ±inf (no inf encoding).
_SATURATING = {NumberFormat.FP8_E4M3}


@dataclass(frozen=True)
class FormatSpec:
    """Bit layout and range of one number format (all values are exact powers of two or sums of them).

    Attributes:
        name: the format.
        bits: storage width in bits.
        exponent_bits: width of the exponent field.
        mantissa_bits: stored fraction bits (precision is ``mantissa_bits + 1`` significant bits).
        max_normal: largest finite value.
        min_normal: smallest positive normal value (``2**emin``).
        min_subnormal: smallest positive value (``min_normal * 2**-mantissa_bits``).
        bytes_per_value: storage size of one value.
        dtype: the torch dtype that stores the format (and whose cast defines round-to-nearest), or None
            for a format torch does not have (rounded on its grid instead).
        saturates: True when out-of-range values become ``±max_normal`` rather than ``±inf``.
        overflow_threshold: largest FP32 magnitude that round-to-nearest maps to at most
            ``max_normal``; any finite ``|x|`` above it overflows (to ``±inf``, or saturates).
    """

    name: NumberFormat
    bits: int
    exponent_bits: int
    mantissa_bits: int
    max_normal: float
    min_normal: float
    min_subnormal: float
    bytes_per_value: int
    dtype: torch.dtype | None
    saturates: bool
    overflow_threshold: float

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal value: ``min_normal == 2**emin``."""
        return round(math.log2(self.min_normal))


def _graphcore_spec(fmt: NumberFormat, exponent_bits: int, mantissa_bits: int) -> FormatSpec:
    """A format as ``unit_scaling.formats.FPFormat`` defines it: bias 2^(e-1), every exponent code a number
    (no inf/NaN), saturating at ``2^(2^(e-1)-1) · (2 - 2^-m)``."""
    max_exponent = 2 ** (exponent_bits - 1) - 1
    max_normal = 2.0**max_exponent * (2.0 - 2.0**-mantissa_bits)
    min_normal = 2.0 ** (1 - 2 ** (exponent_bits - 1))
    return FormatSpec(name=fmt, bits=1 + exponent_bits + mantissa_bits, exponent_bits=exponent_bits,
                      mantissa_bits=mantissa_bits, max_normal=max_normal, min_normal=min_normal,
                      min_subnormal=min_normal * 2.0**-mantissa_bits, bytes_per_value=1, dtype=None,
                      saturates=True, overflow_threshold=_overflow_threshold(max_normal, mantissa_bits))


def _overflow_threshold(max_normal: float, mantissa_bits: int) -> float:
    # Spacing of the values in the top binade, and whether the largest value has an odd last bit:
    # IEEE formats (all-ones fraction) round a tie at max + ulp/2 up (overflow); E4M3fn (fraction 110)
    # rounds it down to max.
    top_ulp = 2.0 ** (math.floor(math.log2(max_normal)) - mantissa_bits)
    midpoint = max_normal + top_ulp / 2
    max_is_odd = round(max_normal / top_ulp) % 2 == 1
    return _next_float32_down(midpoint) if max_is_odd else midpoint


def _build_spec(fmt: NumberFormat) -> FormatSpec:
    if fmt is NumberFormat.FP8_E5M2_BIAS16:
        return _graphcore_spec(fmt, 5, 2)
    dtype = _DTYPES[fmt]
    info = torch.finfo(dtype)
    mantissa_bits = round(-math.log2(info.eps))
    exponent_bits = info.bits - 1 - mantissa_bits
    max_normal = float(info.max)
    threshold = _overflow_threshold(max_normal, mantissa_bits)
    return FormatSpec(
        name=fmt,
        bits=info.bits,
        exponent_bits=exponent_bits,
        mantissa_bits=mantissa_bits,
        max_normal=max_normal,
        min_normal=float(info.smallest_normal),
        min_subnormal=float(info.smallest_normal) * float(info.eps),
        bytes_per_value=torch.empty((), dtype=dtype).element_size(),
        dtype=dtype,
        saturates=fmt in _SATURATING,
        overflow_threshold=threshold,
    )


def _next_float32_down(value: float) -> float:
    """The largest FP32 number strictly below the positive FP32 number ``value``."""
    t = torch.tensor(value, dtype=torch.float32)
    return float(torch.nextafter(t, torch.tensor(0.0, dtype=torch.float32)))


_SPECS: dict[NumberFormat, FormatSpec] = {fmt: _build_spec(fmt) for fmt in NumberFormat}


def spec(fmt: NumberFormat | str) -> FormatSpec:
    """The :class:`FormatSpec` of ``fmt`` (a :class:`NumberFormat` or its string value)."""
    return _SPECS[NumberFormat(fmt)]


def bytes_per_value(fmt: NumberFormat | str) -> int:
    """Bytes one value occupies when stored in ``fmt`` (FP32 4, BF16/FP16 2, FP8 1)."""
    return spec(fmt).bytes_per_value


def tensor_bytes_in_format(numel: int, fmt: NumberFormat | str) -> int:
    """Bytes a tensor of ``numel`` values would occupy if stored in ``fmt``."""
    if numel < 0:
        raise ValueError(f"numel must be >= 0, got {numel}")
    return numel * bytes_per_value(fmt)


# ----------------------------------------------------------------------------------------------
# Counting


class OverflowCounter:
    """Counts, per step, the values that rounding flushed to zero or pushed out of range.

    Keys (forward ``fwd_*`` for activations and weights, backward ``bwd_*`` for gradients):

    * ``*_total``: values quantised to a format other than FP32 (FP32 is not rounded and not counted);
    * ``*_underflow``: non-zero values that became zero;
    * ``*_overflow``: finite values whose rounded magnitude exceeds the format's largest finite value
      (they became ``±inf``, or ``±max`` for the saturating FP8 E4M3; see the module docstring).

    Counts accumulate in 0-d tensors on the tensors' device, so recording never synchronises;
    :meth:`snapshot_and_reset` converts them to Python ints once per step. Pass ``counter=None``
    to :func:`quantise` to skip counting entirely.
    """

    KEYS = ("fwd_total", "fwd_underflow", "fwd_overflow", "bwd_total", "bwd_underflow", "bwd_overflow")

    def __init__(self) -> None:
        self._totals: dict[Kind, int] = {"fwd": 0, "bwd": 0}
        self._counts: torch.Tensor | None = None  # int64 [fwd_under, fwd_over, bwd_under, bwd_over]
        self._host = [0, 0, 0, 0]  # the same, recorded as Python ints

    def record(self, kind: Kind, numel: int, underflow: torch.Tensor | int, overflow: torch.Tensor | int) -> None:
        """Add one quantisation's counts for ``kind`` ("fwd" or "bwd"): 0-d integer tensors (kept on their
        device until the snapshot) or Python ints (from the CPU kernel, :mod:`labkit.fast_rounding`)."""
        if kind not in self._totals:
            raise ValueError(f"kind must be 'fwd' or 'bwd', got {kind!r}")
        offset = 0 if kind == "fwd" else 2
        self._totals[kind] += numel
        if isinstance(underflow, int) and isinstance(overflow, int):
            self._host[offset] += underflow
            self._host[offset + 1] += overflow
            return
        if self._counts is None:
            self._counts = torch.zeros(4, dtype=torch.int64, device=underflow.device)
        self._counts[offset].add_(underflow.to(self._counts.device, non_blocking=True))
        self._counts[offset + 1].add_(overflow.to(self._counts.device, non_blocking=True))

    def snapshot_and_reset(self) -> dict[str, int]:
        """The counts since the last call, as Python ints (keys in :attr:`KEYS`), then zero them."""
        counts = [0, 0, 0, 0] if self._counts is None else [int(v) for v in self._counts.tolist()]
        counts = [device + host for device, host in zip(counts, self._host, strict=True)]
        snapshot = {
            "fwd_total": self._totals["fwd"],
            "fwd_underflow": counts[0],
            "fwd_overflow": counts[1],
            "bwd_total": self._totals["bwd"],
            "bwd_underflow": counts[2],
            "bwd_overflow": counts[3],
        }
        self._totals = {"fwd": 0, "bwd": 0}
        self._host = [0, 0, 0, 0]
        if self._counts is not None:
            self._counts.zero_()
        return snapshot

    @staticmethod
    def fractions(snapshot: dict[str, int]) -> dict[str, float]:
        """Underflow and overflow fractions of a snapshot (0.0 where nothing was quantised)."""
        out: dict[str, float] = {}
        for kind in ("fwd", "bwd"):
            total = snapshot[f"{kind}_total"]
            for what in ("underflow", "overflow"):
                out[f"{kind}_{what}_frac"] = snapshot[f"{kind}_{what}"] / total if total else 0.0
        return out


def _count_overflows(x: torch.Tensor, rounded: torch.Tensor, limit: float) -> torch.Tensor:
    """Entries with finite ``x`` and ``|rounded| > limit`` (0-d int64 tensor).

    ``rounded`` is ``x`` itself (compared with the round-to-nearest threshold) or the stochastic
    result on the continued grid (compared with ``max_normal``). A non-finite ``x`` gives a NaN or
    infinite ``rounded``, counted by the first term and removed by the second; ``rounded`` may also
    be infinite for a finite ``x`` (BF16 values next to FP32's maximum), which is an overflow.

    Overflows are rare, so on the CPU (where reading a value back costs no device synchronisation)
    one vectorised min/max reduction rules them out first; on accelerators the count is always
    computed, and stays on the device.
    """
    if rounded.device.type == "cpu" and rounded.numel() > 0:
        smallest, largest = torch.aminmax(rounded)
        if -limit <= float(smallest) and float(largest) <= limit:  # False for NaN: counted below
            return torch.zeros((), dtype=torch.int64)
    excess = rounded.abs().sub_(limit).clamp_min_(0.0)  # > 0 exactly where |rounded| > limit
    return torch.count_nonzero(excess) - torch.count_nonzero(x - x)  # x - x is NaN where x is not finite


# ----------------------------------------------------------------------------------------------
# Rounding

_E4M3_DECODE: dict[torch.device, torch.Tensor] = {}


def _decode(q: torch.Tensor, fs: FormatSpec) -> torch.Tensor:
    """Convert a tensor stored in ``fs.dtype`` back to FP32 (exact)."""
    if fs.name is NumberFormat.FP8_E4M3 and q.device.type == "cpu":
        # torch 2.13's float8_e4m3fn -> float32 conversion is a slow scalar loop on the CPU
        # (~5 ms per million values); a 256-entry lookup table gives identical values in ~1 ms.
        table = _E4M3_DECODE.get(q.device)
        if table is None:
            codes = torch.arange(256, dtype=torch.int32).to(torch.uint8)
            table = _E4M3_DECODE.setdefault(q.device, codes.view(fs.dtype).to(torch.float32))
        return table.index_select(0, q.view(torch.uint8).reshape(-1).to(torch.int32)).view(q.shape)
    return q.to(torch.float32)


def _round_nearest(x: torch.Tensor, fs: FormatSpec) -> torch.Tensor:
    """Round to nearest, ties to even, with the range behaviour of torch's cast (or, for a format torch
    does not have, on the format's grid: see :func:`_round_nearest_on_grid`)."""
    if fs.dtype is None:
        return _round_nearest_on_grid(x, fs)
    return _decode(x.to(fs.dtype), fs)


def _round_nearest_on_grid(x: torch.Tensor, fs: FormatSpec) -> torch.Tensor:
    """Round to nearest, ties to even, on the grid of ``fs`` (spacing ``binade · 2^-mantissa_bits``,
    constant below ``min_normal``: the subnormals), then apply its range. ``|x| / spacing`` is exact (a
    power of two), and ``torch.round`` rounds halves to even, i.e. to an even last mantissa bit."""
    steps = 2.0**fs.mantissa_bits
    scale = _binade(x, fs)
    index = x.abs().div_(scale).mul_(steps).round_()
    return _apply_range_to_magnitude(index.div_(steps).mul_(scale), fs).copysign_(x)


def _binade(x: torch.Tensor, fs: FormatSpec, out: torch.Tensor | None = None) -> torch.Tensor:
    """``2**e`` for each value's binade ``[2**e, 2**(e+1))``, from the FP32 exponent bits.

    Clamped to ``[min_normal, 2**127]``: below ``min_normal`` the format's grid keeps the spacing
    of its first binade (its subnormals), and inf/NaN get a finite scale so they stay inf/NaN.
    """
    bits = torch.bitwise_and(x.view(torch.int32), 0x7F800000, out=None if out is None else out.view(torch.int32))
    return bits.view(torch.float32).clamp_(fs.min_normal, 2.0**127)


def _round_stochastic_magnitude(
    x: torch.Tensor, fs: FormatSpec, generator: torch.Generator | None
) -> torch.Tensor:
    """``|x|`` rounded stochastically onto the format's grid, *without* applying the range limit.

    The grid spacing at ``|x|`` is ``g = binade * 2**-mantissa_bits`` (see :func:`_binade`; below
    ``min_normal`` it stays at ``min_subnormal``, so the subnormal range needs no special case).
    With ``y = |x| / g`` (exact: ``g`` is a power of two) the result is ``floor(y) * g`` or
    ``(floor(y) + 1) * g``, the upper one with probability ``y - floor(y)``, so ``E[q] = |x|``, and
    after the sign is restored ``E[q(x)] = x``. The uniform draw has 24 random bits, so the round-up
    probability is exact whenever ``y - floor(y)`` is a multiple of 2**-24: for every FP32 input with
    ``|x| >= min_subnormal / 2``. Below that (values that become 0 or ``min_subnormal``) it is
    ``|x| / min_subnormal`` rounded up to a multiple of 2**-24: a bias below ``2**-24 * min_subnormal``.

    Values beyond the largest finite value stay on the continued grid (e.g. 480 for E4M3);
    :func:`quantise` applies the format's overflow behaviour. Works in place on three buffers
    (fresh allocations are what costs most on this CPU: page faults).
    """
    steps = 2.0**fs.mantissa_bits
    y = x.abs()
    scale = _binade(x, fs)
    y.div_(scale).mul_(steps)  # |x| / g, exact
    lower = y.floor()  # inf stays inf (floor, not trunc: the same for y >= 0, and vectorised on CPU)
    frac = y.sub_(lower)  # in [0, 1), exact; NaN for inf/NaN inputs, which then never round up
    uniform = scale.uniform_(0.0, 1.0, generator=generator)  # the scale's buffer, reused
    lower.add_(uniform.lt_(frac))  # + 1 with probability frac
    return lower.div_(steps).mul_(_binade(x, fs, out=frac))  # back to values: frac's buffer, reused


def _apply_range_to_magnitude(q_mag: torch.Tensor, fs: FormatSpec) -> torch.Tensor:
    """Magnitudes beyond ``max_normal`` become ``max_normal`` (saturating format) or inf; in place."""
    if fs.saturates:
        return q_mag.clamp_(max=fs.max_normal)  # inf -> max, NaN stays NaN
    # IEEE-like formats: the grid point after max_normal (all-ones fraction) is 2**(emax + 1). Scaling
    # by 2**(127 - emax) sends exactly those values past FP32's range to inf and scaling back restores
    # the rest exactly (powers of two): two cheap passes instead of a compare and a masked fill.
    shift = 2.0 ** (127 - math.floor(math.log2(fs.max_normal)))
    return q_mag.mul_(shift).mul_(1.0 / shift)


def quantise(
    x: torch.Tensor,
    fmt: NumberFormat | str,
    rounding: Rounding | str = Rounding.NEAREST,
    generator: torch.Generator | None = None,
    *,
    counter: OverflowCounter | None = None,
    kind: Kind = "fwd",
) -> torch.Tensor:
    """Round ``x`` to the values representable in ``fmt``; FP32 in, FP32 out.

    Args:
        x: an FP32 tensor (any shape, any device).
        fmt: target format. ``FP32`` returns ``x`` itself (no copy, no work, nothing counted).
        rounding: ``NEAREST`` rounds to nearest, ties to even, exactly as ``x.to(dtype).float()``
            (the hardware default); ``STOCHASTIC`` rounds to one of the two neighbouring representable
            values with probabilities that make ``E[q(x)] == x`` (see :func:`_round_stochastic_magnitude`).
        generator: random generator for stochastic rounding (the global one when None).
        counter: if given, underflows and overflows are added to it under ``kind``.
        kind: ``"fwd"`` (activations/weights) or ``"bwd"`` (gradients), for the counter.

    Returns:
        A new FP32 tensor holding only values of ``fmt`` (or ``x`` for FP32). Out-of-range values
        become ±inf (FP16, BF16, E5M2) or saturate to ±448 (E4M3), as torch's casts do; see the module
        docstring. The operation is not differentiable (use :func:`quantise_fwd_bwd` in models).
    """
    return _quantise(x, spec(fmt), Rounding(rounding), generator, counter, kind)


def _kernel_rounds(x: torch.Tensor, fs: FormatSpec, rounding: Rounding) -> bool:
    """Whether :func:`_quantise` rounds ``x`` with the one-pass kernel (FP8, round-to-nearest, CPU, numba)."""
    return rounding is Rounding.NEAREST and fs.bits == 8 and x.device.type == "cpu" and fast_rounding.available()


def _quantise(x: torch.Tensor, fs: FormatSpec, rounding: Rounding, generator: torch.Generator | None,
              counter: OverflowCounter | None, kind: Kind) -> torch.Tensor:
    """:func:`quantise` with its format and rounding already resolved (the per-call path of the models)."""
    if fs.name is NumberFormat.FP32:
        return x
    if x.dtype != torch.float32:
        raise TypeError(f"quantise expects a float32 tensor, got {x.dtype}")
    x = x.detach()
    if _kernel_rounds(x, fs, rounding):
        # One pass, counts included, the same values as the casts below (labkit.fast_rounding).
        q, underflows, overflows = fast_rounding.round_checked(
            x, fast_rounding.constants(fs.mantissa_bits, fs.min_normal, fs.max_normal, fs.saturates),
            count=counter is not None)
        if counter is not None:
            counter.record(kind, x.numel(), underflows, overflows)
        return q
    if rounding is Rounding.NEAREST:
        q = _round_nearest(x, fs)
        if counter is not None:
            overflow = _count_overflows(x, x, fs.overflow_threshold)
    else:
        q_mag = _round_stochastic_magnitude(x, fs, generator)
        if counter is not None:
            overflow = _count_overflows(x, q_mag, fs.max_normal)
        q = _apply_range_to_magnitude(q_mag, fs).copysign_(x)
    if counter is not None:
        # Rounding maps 0 to 0 and keeps inf/NaN non-zero, so the zeros it adds are the underflows.
        underflow = torch.count_nonzero(x) - torch.count_nonzero(q)
        counter.record(kind, x.numel(), underflow, overflow)
    return q


# ----------------------------------------------------------------------------------------------
# Autograd


class Quantise(torch.autograd.Function):
    """Identity whose forward output is rounded to one format and whose gradient to another.

    ``Quantise.apply(x, spec(fwd), spec(bwd), rounding, counter, generator)``; prefer :func:`quantise_fwd_bwd`.
    The gradient passes straight through the rounding (the rounding's own derivative, zero almost
    everywhere, is ignored), then is itself rounded to ``bwd``: this is how the gradient arriving at
    a matmul's output would be stored in a low-precision backward pass.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        fwd: FormatSpec,
        bwd: FormatSpec,
        rounding: Rounding,
        counter: OverflowCounter | None,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        ctx.bwd, ctx.rounding, ctx.counter, ctx.generator = bwd, rounding, counter, generator
        out = _quantise(x, fwd, rounding, generator, counter, "fwd")
        return x.view_as(x) if out is x else out  # an alias, not the input itself (autograd rule)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return _quantise_grad(grad, ctx.bwd, ctx.rounding, ctx.generator, ctx.counter), None, None, None, None, None


def _quantise_grad(grad: torch.Tensor, fs: FormatSpec, rounding: Rounding, generator: torch.Generator | None,
                   counter: OverflowCounter | None) -> torch.Tensor:
    """A gradient rounded to ``fs`` (counted as ``"bwd"``), or ``grad`` itself for FP32."""
    if fs.name is NumberFormat.FP32:
        return grad
    if not grad.is_contiguous() and not _kernel_rounds(grad, fs, rounding):
        # The torch path draws stochastic rounding's random numbers in memory order: contiguous keeps
        # the draws where they were. The kernel reads any dense layout as it is.
        grad = grad.contiguous()
    return _quantise(grad, fs, rounding, generator, counter, "bwd")


class SimulatedMatmul:
    """A matmul kernel that simulates a number format: its operands rounded to ``fwd``, the gradient arriving
    at its output rounded to ``bwd``, the arithmetic in FP32 (what :func:`simulated_ops` does with three
    autograd nodes, in one).

    ``linear(x, weight, bias, out_scale, grad_x_scale, grad_w_scale)`` has the interface of the real FP8
    kernel (``labkit.fp8.Fp8Matmul``): ``F.linear`` is ``linear(x, weight, bias)``, and the unit-scaled
    ops take it as their ``kernel``. ``inputs`` and ``grad`` are the roundings
    (:func:`labkit.scaling.ops.scaled_linear` calls them).
    """

    def __init__(self, fwd: FormatSpec, bwd: FormatSpec, rounding: Rounding,
                 counter: OverflowCounter | None = None, generator: torch.Generator | None = None) -> None:
        self.fwd, self.bwd, self.rounding, self.counter, self.generator = fwd, bwd, rounding, counter, generator

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, out_scale: float = 1.0,
               grad_x_scale: float = 1.0, grad_w_scale: float = 1.0) -> torch.Tensor:
        return scaled_linear(x, weight, bias, out_scale, grad_x_scale, grad_w_scale, rounding=self)

    def inputs(self, x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The operands rounded to ``fwd``: the input, then the weight (the order stochastic draws follow)."""
        return tuple(_quantise(t, self.fwd, self.rounding, self.generator, self.counter, "fwd") for t in (x, weight))

    def grad(self, grad: torch.Tensor) -> torch.Tensor:
        """The gradient of the output, rounded to ``bwd``."""
        return _quantise_grad(grad, self.bwd, self.rounding, self.generator, self.counter)


def linear_on_kernel(op: Callable[..., torch.Tensor], kernel: Any) -> Callable[..., torch.Tensor] | None:
    """A linear op run by a matmul kernel (:class:`SimulatedMatmul`, ``labkit.fp8.Fp8Matmul``): ``F.linear``
    becomes the kernel's own linear (scales 1); a unit-scaled linear (any op taking ``kernel=``) is given the
    kernel, which then applies the op's scales. None for any other op."""
    if op is F.linear:
        return kernel.linear
    if "kernel" in inspect.signature(op).parameters:
        return functools.partial(op, kernel=kernel)
    return None


class QuantiseInputs(torch.autograd.Function):
    """``Quantise`` with an FP32 backward for several tensors in one autograd node: each is rounded to ``fwd``
    (in order, so stochastic rounding draws as one node per tensor would), gradients pass through.
    ``QuantiseInputs.apply(fwd, rounding, counter, generator, *tensors)``: a matmul's input and weight."""

    @staticmethod
    def forward(ctx: Any, fwd: FormatSpec, rounding: Rounding, counter: OverflowCounter | None,
                generator: torch.Generator | None, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(_quantise(t, fwd, rounding, generator, counter, "fwd") for t in tensors)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return (None, None, None, None, *grads)


class QuantiseTiles(torch.autograd.Function):
    """``Quantise`` (forward format only, gradients passed through) for views that tile one contiguous tensor,
    such as attention's q, k and v, three slices of the qkv projection: the tensor is rounded once, in
    place of three copies of strided slices, and the views are taken again from the result.
    ``QuantiseTiles.apply(fwd, rounding, counter, generator, *views)``; see :func:`quantise_tiles`."""

    @staticmethod
    def forward(ctx: Any, fwd: FormatSpec, rounding: Rounding, counter: OverflowCounter | None,
                generator: torch.Generator | None, *views: torch.Tensor) -> tuple[torch.Tensor, ...]:
        base = views[0]._base
        rounded = _quantise(base, fwd, rounding, generator, counter, "fwd")
        offset = base.storage_offset()
        return tuple(rounded.as_strided(v.shape, v.stride(), v.storage_offset() - offset) for v in views)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return (None, None, None, None, *grads)


def quantise_tiles(views: tuple[torch.Tensor, ...], fwd: FormatSpec, rounding: Rounding,
                   counter: OverflowCounter | None = None,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...] | None:
    """``views`` rounded to ``fwd`` (gradients unchanged) by rounding the tensor they tile once, or None when
    they do not exactly tile one contiguous tensor, or when rounding is stochastic (the random draws would
    fall on other elements than when each view is rounded): then round each. The same values and counts."""
    base = views[0]._base
    if (rounding is not Rounding.NEAREST or base is None or not base.is_contiguous()
            or any(v._base is not base for v in views)):
        return None
    layout = tuple((tuple(v.shape), v.stride(), v.storage_offset() - base.storage_offset()) for v in views)
    if not _tile(base.numel(), layout):
        return None
    return QuantiseTiles.apply(fwd, rounding, counter, generator, *views)


@functools.lru_cache(maxsize=64)
def _tile(numel: int, layout: tuple[tuple[tuple[int, ...], tuple[int, ...], int], ...]) -> bool:
    """Whether views with these (shape, stride, offset) cover each of ``numel`` elements exactly once
    (checked on a marker tensor once per layout: a model gives the same layout at every step)."""
    if sum(math.prod(shape) for shape, _, _ in layout) != numel:
        return False
    marks = torch.zeros(numel, dtype=torch.int8)
    try:
        for shape, stride, offset in layout:
            marks.as_strided(shape, stride, offset).add_(1)
    except RuntimeError:  # out of bounds, or a view that overlaps itself
        return False
    return bool((marks == 1).all())


def quantise_fwd_bwd(
    x: torch.Tensor,
    fwd: NumberFormat | str,
    bwd: NumberFormat | str,
    rounding: Rounding | str = Rounding.NEAREST,
    counter: OverflowCounter | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Round ``x`` to ``fwd`` in the forward pass and its incoming gradient to ``bwd`` in the backward.

    The gradient that arrives at this point (the gradient of the loss with respect to the returned
    tensor) is rounded to ``bwd`` and passed on unchanged otherwise. To simulate a low-precision
    matmul ``y = x @ w`` as FP8 training recipes run it::

        y = quantise_fwd_bwd(x, fmt, FP32) @ quantise_fwd_bwd(w, fmt, FP32)   # inputs in fmt
        y = quantise_fwd_bwd(y, FP32, grad_fmt)   # dL/dy in grad_fmt, as the backward matmuls read it

    so both backward matmuls (``dL/dx = dL/dy @ w.T`` and ``dL/dw = x.T @ dL/dy``) see ``grad_fmt``
    gradients and ``fmt`` values. When both formats are FP32, ``x`` itself is returned (no autograd
    node, no cost); an FP32 side is passed through without rounding or counting.
    """
    fwd_spec, bwd_spec = spec(fwd), spec(bwd)
    if fwd_spec.name is NumberFormat.FP32 and bwd_spec.name is NumberFormat.FP32:
        return x
    return Quantise.apply(x, fwd_spec, bwd_spec, Rounding(rounding), counter, generator)


# ----------------------------------------------------------------------------------------------
# Loss scaling


class LossScaler:
    """Loss scaling: multiply the loss before backward, divide the gradients after.

    Small gradients that would underflow a narrow format are lifted into its range by the scale.
    Modes (:class:`LossScaling`):

    * ``NONE``: scale 1, nothing is divided, no step is skipped (``unscale_`` still reports inf/NaN);
    * ``FIXED``: a constant scale; a step whose gradients overflowed is skipped, the scale kept;
    * ``DYNAMIC``: as fixed, but an overflow also multiplies the scale by ``backoff_factor`` (1/2), and
      ``growth_interval`` consecutive clean steps multiply it by ``growth_factor`` (2).

    With unit scaling (Blake et al. 2023), the point is that *no* loss scaling is needed: every
    tensor, gradients included, starts near unit scale, centred in the FP16/FP8 range.

    Use, per step::

        loss_value = scaler.scale(loss)
        loss_value.backward()
        found_inf = scaler.unscale_(model.parameters())
        if not scaler.update(found_inf):   # True means "skip this step"
            optimizer.step()
    """

    def __init__(
        self,
        mode: LossScaling | str = LossScaling.NONE,
        init_scale: float = 2.0**12,
        growth_interval: int = 200,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
    ) -> None:
        self.mode = LossScaling(mode)
        if not (math.isfinite(init_scale) and init_scale > 0):
            raise ValueError(f"init_scale must be a positive finite number, got {init_scale}")
        if growth_interval < 1:
            raise ValueError(f"growth_interval must be >= 1, got {growth_interval}")
        if not growth_factor > 1.0 or not 0.0 < backoff_factor < 1.0:
            raise ValueError("growth_factor must be > 1 and backoff_factor in (0, 1)")
        self._scale = 1.0 if self.mode is LossScaling.NONE else float(init_scale)
        self.growth_interval = growth_interval
        self.growth_factor = growth_factor
        self.backoff_factor = backoff_factor
        self._clean_steps = 0
        self.skipped_steps = 0  # steps skipped because of an overflow, since construction

    @property
    def scale_value(self) -> float:
        """The current loss scale (1.0 when loss scaling is off)."""
        return self._scale

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        """``loss * scale`` (``loss`` itself when loss scaling is off)."""
        if self.mode is LossScaling.NONE:
            return loss
        return loss * self._scale

    def unscale_(self, params: Any) -> bool:
        """Divide every ``p.grad`` in ``params`` by the scale, in place; True if any is inf/NaN.

        One fused kernel per device both checks and divides, then one host sync reads the flag.
        With mode ``NONE`` the gradients are only checked.
        """
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return False
        by_device: dict[torch.device, list[torch.Tensor]] = {}
        for g in grads:
            by_device.setdefault(g.device, []).append(g)
        flags = []
        for device, group in by_device.items():
            found = torch.zeros(1, dtype=torch.float32, device=device)
            inv_scale = torch.full((1,), 1.0 / self._scale, dtype=torch.float32, device=device)
            torch._amp_foreach_non_finite_check_and_unscale_(group, found, inv_scale)
            flags.append(found.to(grads[0].device))
        return bool(torch.cat(flags).any())

    def update(self, found_inf: bool) -> bool:
        """Adjust the scale after a step; returns True when the optimizer step must be skipped.

        ``DYNAMIC``: on overflow the scale is multiplied by ``backoff_factor`` and the step skipped;
        after ``growth_interval`` consecutive clean steps it is multiplied by ``growth_factor``.
        ``FIXED``: an overflow skips the step; the scale never changes. ``NONE``: never skips.
        """
        if self.mode is LossScaling.NONE:
            return False
        if found_inf:
            self.skipped_steps += 1
            self._clean_steps = 0
            if self.mode is LossScaling.DYNAMIC:
                self._scale *= self.backoff_factor
            return True
        if self.mode is LossScaling.DYNAMIC:
            self._clean_steps += 1
            if self._clean_steps >= self.growth_interval:
                self._scale *= self.growth_factor
                self._clean_steps = 0
        return False

    def state_dict(self) -> dict[str, Any]:
        """The scaler's state (for checkpoints and run records)."""
        return {"mode": self.mode.value, "scale": self._scale, "clean_steps": self._clean_steps,
                "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a ``state_dict()`` (a resumed run)."""
        self._scale, self._clean_steps = float(state["scale"]), int(state["clean_steps"])
        self.skipped_steps = int(state["skipped_steps"])


# ----------------------------------------------------------------------------------------------
# Simulating a format in a model


def simulated_ops(ops: Ops, fwd: NumberFormat, bwd: NumberFormat, rounding: Rounding = Rounding.NEAREST,
                  counter: OverflowCounter | None = None, generator: torch.Generator | None = None) -> Ops:
    """``ops`` with every matmul-like op (linear, readout, embedding, attention, LSTM) run as an FP8
    training recipe runs it: inputs and weights rounded to ``fwd``, the gradient arriving at the output
    rounded to ``bwd``. Norms, nonlinearities and the loss stay FP32, as in mixed-precision recipes.

    The LSTM rounds its inputs and weights but not its internal recurrent state (the fused kernel is
    opaque, and the unit-scaled LSTM runs the same kernel).
    """

    fwd_spec, bwd_spec, fp32, rounding = spec(fwd), spec(bwd), spec(NumberFormat.FP32), Rounding(rounding)
    kernel = SimulatedMatmul(fwd_spec, bwd_spec, rounding, counter, generator)

    def q_in(t: torch.Tensor) -> torch.Tensor:
        return t if fwd_spec is fp32 else Quantise.apply(t, fwd_spec, fp32, rounding, counter, generator)

    def q_out(t: torch.Tensor) -> torch.Tensor:
        return t if bwd_spec is fp32 else Quantise.apply(t, fp32, bwd_spec, rounding, counter, generator)

    def matmul(op):
        if (on_kernel := linear_on_kernel(op, kernel)) is not None:
            return on_kernel

        def run(x, weight, bias=None):
            if fwd_spec is not fp32:  # input and weight rounded in one node
                x, weight = QuantiseInputs.apply(fwd_spec, rounding, counter, generator, x, weight)
            return q_out(op(x, weight, bias))

        return run

    def embedding(ids, table):
        return q_out(ops.embedding(ids, q_in(table)))

    def attention(q, k, v):
        tiles = None if fwd_spec is fp32 else quantise_tiles((q, k, v), fwd_spec, rounding, counter, generator)
        return q_out(ops.attention(*(tiles or (q_in(q), q_in(k), q_in(v)))))

    @functools.wraps(ops.lstm)
    def lstm(x, weights, num_layers, training):
        return q_out(ops.lstm(q_in(x), [q_in(w) for w in weights], num_layers, training))

    return ops.replace(linear=matmul(ops.linear), readout=matmul(ops.readout), embedding=embedding,
                       attention=attention, lstm=lstm)
