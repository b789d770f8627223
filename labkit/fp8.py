"""Real FP8 arithmetic: linear layers whose matmuls run in torch's float8 dtypes through ``torch._scaled_mm``.

The simulation (:mod:`labkit.formats`) rounds values to FP8 and multiplies in FP32. This module does what
an FP8 training recipe does on hardware: each operand is *cast* to ``torch.float8_e4m3fn`` or
``torch.float8_e5m2`` (round to nearest, E4M3 saturating at ±448, E5M2 overflowing to ±inf) and the
product is computed by ``torch._scaled_mm`` with FP32 output:

* forward ``Y = X·Wᵀ``: X and W in the forward format (E4M3);
* backward ``dX = dY·W`` and ``dW = dYᵀ·X``: dY in the gradient format (E5M2), X and W as saved (FP8).

One autograd node per linear layer (:class:`_Fp8Linear`), which also applies the unit-scaled linear's fixed
scales (``labkit.scaling.ops.linear``) to its FP32 outputs, so the FP8 casts see the tensors *before*
those scales: a unit-scaled model's unit-RMS activations, weights and gradients are cast with a scale of 1.
A standard model can choose per-tensor *current amax* scaling (:attr:`Fp8Scaling.AMAX`, as
TransformerEngine and torchao do): each tensor is divided by ``amax / max_normal`` before the cast so its
largest magnitude lands on the format's largest value, and ``_scaled_mm`` multiplies the scales back.

Only the linear layers (and the readout) run in real FP8. Embedding lookups, attention and the LSTM keep
the simulation's rounding (``simulated_ops``), so real and simulated runs differ only in the matmuls and
their agreement measures exactly that.

Layout and shapes. ``_scaled_mm`` wants its first operand row-major and its second column-major; on CUDA
every dimension must also be a multiple of 16. Operands are laid out as required (FP8 copies are a byte
per value), and on CUDA zero-padded to multiples of 16 (exact: zeros add nothing to a dot product); the
result is cut back. Where ``_scaled_mm`` itself refuses an operand pair (a GPU without FP8 tensor cores,
E5M2×E5M2 on Hopper), the same FP8 operands are multiplied in FP32 instead: the numbers are identical
(every FP8 value and product is exact in FP32), only the speed is not FP8's. Each such fallback is warned
about once and counted in :attr:`Fp8Matmul.stats` (the trainer stores it as ``run.info["fp8"]``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from labkit.config import Fp8Scaling, NumberFormat
from labkit.formats import OverflowCounter, _count_overflows, linear_on_kernel, spec
from labkit.models.layers import Ops

__all__ = ["FP8_FORMATS", "Fp8Matmul", "backend_agreement", "cast_to_fp8", "real_fp8_ops", "scaled_matmul"]

FP8_FORMATS = (NumberFormat.FP8_E4M3, NumberFormat.FP8_E5M2)
_CUDA_MULTIPLE = 16  # _scaled_mm on CUDA: every dimension a multiple of 16


def cast_to_fp8(t: Tensor, fmt: NumberFormat, scaling: Fp8Scaling = Fp8Scaling.NONE, *,
                counter: OverflowCounter | None = None, kind: str = "fwd", pad_to: int = 1) -> tuple[Tensor, Tensor]:
    """Cast a 2-D FP32 tensor to ``fmt``'s float8 dtype; returns ``(values in FP8, dequantisation scale)``.

    ``t ≈ values.float() * scale``. With ``Fp8Scaling.NONE`` the scale is 1; with ``AMAX`` it is
    ``amax(|t|) / max_normal`` (1 when ``t`` is all zeros), so the largest magnitude maps to the format's
    largest finite value. ``counter`` counts underflows (non-zero values cast to 0) and overflows exactly
    as the simulation does. ``pad_to`` zero-pads both dimensions up to a multiple of it.
    """
    fs = spec(fmt)
    t = t.detach()
    if scaling is Fp8Scaling.AMAX:
        amax = t.abs().amax().float()
        scale = torch.where(amax > 0, amax / fs.max_normal, torch.ones_like(amax))
        t = t / scale
    else:
        scale = torch.ones((), dtype=torch.float32, device=t.device)
    rows, cols = t.shape
    pad_rows, pad_cols = -rows % pad_to, -cols % pad_to
    if pad_rows or pad_cols:
        t = F.pad(t, (0, pad_cols, 0, pad_rows))
    q = t.to(fs.dtype)
    if counter is not None:
        # Zero is 0x00 or 0x80 in both FP8 encodings; count_nonzero has no float8 kernel on the CPU.
        nonzero_q = torch.count_nonzero(q.view(torch.uint8).bitwise_and(0x7F))
        counter.record(kind, rows * cols, torch.count_nonzero(t) - nonzero_q,
                       _count_overflows(t, t, fs.overflow_threshold))
    return q, scale


def scaled_matmul(a: Tensor, scale_a: Tensor, b: Tensor, scale_b: Tensor,
                  fallback: Callable[[str], None] | None = None) -> Tensor:
    """``(a·scale_a) @ (b·scale_b)`` in FP32 for FP8 ``a`` (M×K) and ``b`` (K×N), by ``torch._scaled_mm``.

    ``a`` is made row-major and ``b`` column-major if they are not. If ``_scaled_mm`` refuses the pair,
    ``fallback(reason)`` is called (when given; else the error is raised) and the product is computed in
    FP32 from the same FP8 values.
    """
    if not a.is_contiguous():
        a = a.contiguous()
    if not b.t().is_contiguous():
        b = b.t().contiguous().t()
    try:
        return torch._scaled_mm(a, b, scale_a=scale_a, scale_b=scale_b, out_dtype=torch.float32)
    except (RuntimeError, NotImplementedError) as exc:
        if fallback is None:
            raise
        fallback(f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
        return (a.float() * scale_a) @ (b.float() * scale_b)


class Fp8Matmul:
    """The real FP8 kernel of a run: casts to ``fwd`` / ``bwd`` with ``scaling``, multiplies with ``_scaled_mm``.

    ``linear(x, weight, bias, out_scale, grad_x_scale, grad_w_scale)`` is the layer op (see
    :class:`_Fp8Linear`); the unit-scaled ops of :mod:`labkit.scaling.ops` call it with their scales.
    ``stats`` counts products done by ``_scaled_mm`` and by the FP32 fallback, with each fallback's reason.
    """

    def __init__(self, fwd: NumberFormat = NumberFormat.FP8_E4M3, bwd: NumberFormat = NumberFormat.FP8_E5M2,
                 scaling: Fp8Scaling = Fp8Scaling.NONE, counter: OverflowCounter | None = None) -> None:
        if fwd not in FP8_FORMATS or bwd not in FP8_FORMATS:
            raise ValueError(f"real FP8 needs FP8 formats, got fwd={fwd.value!r}, bwd={bwd.value!r}")
        self.fwd, self.bwd, self.scaling, self.counter = fwd, bwd, Fp8Scaling(scaling), counter
        self.stats: dict[str, Any] = {"scaled_mm": 0, "fallback": 0, "fallback_reasons": {}}
        self._refused: set[tuple] = set()  # (device, dtypes) pairs _scaled_mm refused: go straight to FP32

    def cast(self, t: Tensor, fmt: NumberFormat, kind: str) -> tuple[Tensor, Tensor]:
        pad_to = _CUDA_MULTIPLE if t.is_cuda else 1
        return cast_to_fp8(t, fmt, self.scaling, counter=self.counter, kind=kind, pad_to=pad_to)

    def mm(self, a: Tensor, scale_a: Tensor, b: Tensor, scale_b: Tensor) -> Tensor:
        """FP32 product of two FP8 operands (see :func:`scaled_matmul`), counted in ``stats``."""
        key = (a.device.type, a.dtype, b.dtype)
        if key in self._refused:
            self.stats["fallback"] += 1
            return (a.float() * scale_a) @ (b.float() * scale_b)

        def refused(reason: str) -> None:
            self._refused.add(key)
            name = f"{key[0]} {str(a.dtype).removeprefix('torch.')} x {str(b.dtype).removeprefix('torch.')}"
            self.stats["fallback_reasons"][name] = reason
            self.stats["fallback"] += 1
            warnings.warn(f"torch._scaled_mm refused {name} ({reason}); these products are computed in FP32 "
                          "from the same FP8 values (identical numbers, not FP8 speed)", RuntimeWarning,
                          stacklevel=4)

        before = self.stats["fallback"]
        out = scaled_matmul(a, scale_a, b, scale_b, fallback=refused)
        if self.stats["fallback"] == before:
            self.stats["scaled_mm"] += 1
        return out

    def linear(self, x: Tensor, weight: Tensor, bias: Tensor | None = None, out_scale: float = 1.0,
               grad_x_scale: float = 1.0, grad_w_scale: float = 1.0) -> Tensor:
        """``(X·Wᵀ + b) × out_scale`` with the matmuls in FP8; gradients × their scales (see :class:`_Fp8Linear`)."""
        return _Fp8Linear.apply(x, weight, bias, out_scale, grad_x_scale, grad_w_scale, self)


class _Fp8Linear(torch.autograd.Function):
    """``F.linear`` in real FP8, with the scales of ``labkit.scaling.ops.linear`` (all 1 for standard).

    fwd: ``Y = out_scale · (X_fp8 · W_fp8ᵀ + b)``; bwd: ``dX = grad_x_scale · dY_fp8 · W_fp8``,
    ``dW = grad_w_scale · dY_fp8ᵀ · X_fp8``, ``db = grad_w_scale · Σ dY_fp8``. X and W are saved in FP8.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, out_scale: float,  # type: ignore[override]
                grad_x_scale: float, grad_w_scale: float, kernel: Fp8Matmul) -> Tensor:
        lead, fan_in = x.shape[:-1], x.shape[-1]
        rows, fan_out = x.numel() // fan_in, weight.shape[0]
        xq, xs = kernel.cast(x.reshape(rows, fan_in), kernel.fwd, "fwd")
        wq, ws = kernel.cast(weight, kernel.fwd, "fwd")
        y = kernel.mm(xq, xs, wq.t(), ws)[:rows, :fan_out]
        if bias is not None:
            y = y + bias
        if out_scale != 1.0:
            y = y * out_scale
        ctx.save_for_backward(xq, xs, wq, ws)
        ctx.kernel, ctx.shape = kernel, (rows, fan_in, fan_out, x.shape)
        ctx.scales, ctx.has_bias = (grad_x_scale, grad_w_scale), bias is not None
        return y.reshape(*lead, fan_out)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        xq, xs, wq, ws = ctx.saved_tensors
        kernel, (rows, fan_in, fan_out, x_shape) = ctx.kernel, ctx.shape
        grad_x_scale, grad_w_scale = ctx.scales
        gq, gs = kernel.cast(grad.reshape(rows, fan_out).float(), kernel.bwd, "bwd")
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = kernel.mm(gq, gs, wq, ws)[:rows, :fan_in].mul_(grad_x_scale).reshape(x_shape)
        if ctx.needs_input_grad[1]:
            grad_w = kernel.mm(gq.t(), gs, xq, xs)[:fan_out, :fan_in].mul_(grad_w_scale)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = (gq[:rows, :fan_out].float().sum(0) * gs).mul_(grad_w_scale)
        return grad_x, grad_w, grad_b, None, None, None, None


def _fp8_linear_op(op: Callable[..., Tensor], kernel: Fp8Matmul) -> Callable[..., Tensor]:
    """The real-FP8 version of a linear op (:func:`labkit.formats.linear_on_kernel`), or a TypeError."""
    if (on_kernel := linear_on_kernel(op, kernel)) is not None:
        return on_kernel
    raise TypeError(f"the linear op {getattr(op, '__qualname__', op)!r} has no real FP8 version "
                    "(it takes no kernel= argument); use fp8_backend='simulated'")


def real_fp8_ops(base: Ops, simulated: Ops, kernel: Fp8Matmul) -> Ops:
    """``simulated`` (the simulation of ``base``) with ``base``'s linear and readout ops run in real FP8."""
    return simulated.replace(linear=_fp8_linear_op(base.linear, kernel),
                             readout=_fp8_linear_op(base.readout, kernel))


def backend_agreement(runs: Mapping[str, Any], pairs: Sequence[tuple[str, str]]) -> pd.DataFrame:
    """For each ``(run, reference)`` pair of labels in ``runs`` (``Run`` objects): the largest difference of
    their training losses at the steps both recorded, both final losses, and the share of gradient values
    the run's FP8 casts flushed to zero. Made for a real-FP8 run beside its simulation (or FP32)."""
    rows = []
    for label, reference in pairs:
        a, b = runs[label].metrics, runs[reference].metrics
        both = a[["step", "train_loss"]].merge(b[["step", "train_loss"]], on="step", suffixes=("", "_ref"))
        underflow = (a["fmt_underflow_bwd"].sum() / a["fmt_values_bwd"].sum()) if "fmt_values_bwd" in a else 0.0
        rows.append({"run": label, "reference": reference,
                     "max |Δ loss|": float((both["train_loss"] - both["train_loss_ref"]).abs().max()),
                     "final loss": float(a["train_loss"].iloc[-1]),
                     "reference final loss": float(b["train_loss"].iloc[-1]),
                     "grad underflow %": 100 * float(underflow)})
    return pd.DataFrame(rows)
