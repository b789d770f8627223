"""Unit-scaled functional ops: small pure functions named after ``torch.nn.functional``.

Unit Scaling (Blake, Orr & Luschi, ICML 2023; see ``SCIENCE.md`` section 2) keeps every tensor of the
forward *and* backward pass near unit scale at initialisation (weights drawn N(0, 1)). Each op multiplies
its output by a fixed forward scale and each gradient it produces by a fixed backward scale. The
primitive is :func:`scale_fwd_bwd`, and each function's docstring states its rule (``fwd``: the output
scale; ``bwd``: the scale of each gradient the op produces).

Speed: the scales cost no arithmetic to speak of, but each extra autograd node and each extra pass over
an activation does. So a linear layer's scales are the ``alpha``/``beta`` of the matmuls that compute
its output and gradients, the layer norm, GELU, residual split and add are one autograd node each (the
scales of the small weight gradients applied in place), and the LSTM runs PyTorch's fused kernel. The
custom nodes define ``forward(ctx, ...)``: the ``setup_context`` style costs ~13 µs more per node in
torch 2.13 (it supports ``torch.func`` transforms, which labkit does not use). The same rules
written literally, one ``scale_fwd``/``scale_bwd`` per scale, are in :mod:`labkit.scaling.reference`
(and the Python-loop LSTM in :func:`lstm_reference`); the tests check both give the same numbers.

Conventions:

* ``linear`` shapes follow ``F.linear``: ``weight`` is (fan_out, fan_in), ``Y = X W^T``.
* "batch" for a weight gradient is the number of rows that share the weight (``x.numel() // fan_in``).
* The constraint (:class:`Constraint`) decides how an op's output scale and the scale of the gradient of
  its (non-weight) input are tied. Tying them (``TO_OUTPUT_SCALE``, the default) keeps that gradient the
  true gradient of the scaled forward function; weight-gradient scales are always free (they only change
  the effective per-tensor learning rate).
* Activation scales are computed once (numerical integration over N(0, 1) in float64, cached), not
  hard-coded. :func:`lstm` is not in Graphcore's library: its scales are derived in its docstring.

The reference implementation is Graphcore's ``unit-scaling`` 0.3.5 (``unit_scaling.functional``); the
tests compare against it. Differences, all deliberate, are noted in the functions concerned (activation
constants, causal attention's per-position model of output std, the mean in ``cross_entropy`` with ignored targets).
"""

from __future__ import annotations

import enum
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "Constraint",
    "activation_scales",
    "cross_entropy",
    "embedding",
    "gelu",
    "layer_norm",
    "linear",
    "linear_readout",
    "lstm",
    "lstm_cell",
    "lstm_reference",
    "lstm_scales",
    "relu",
    "residual_add",
    "residual_split",
    "rms",
    "rms_norm",
    "scale_bwd",
    "scale_fwd",
    "scale_fwd_bwd",
    "scaled_linear",
    "scaled_dot_product_attention",
    "sigmoid",
    "silu",
    "softmax",
    "tanh",
]


# --------------------------------------------------------------------------------------------------
# The primitive


class _ScaleFwdBwd(torch.autograd.Function):
    """Identity up to scale: value × ``fwd_scale`` in the forward pass, gradient × ``bwd_scale``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, fwd_scale: float | Tensor, bwd_scale: float) -> Tensor:  # type: ignore[override]
        ctx.bwd_scale = bwd_scale
        if isinstance(fwd_scale, float) and fwd_scale == 1.0:
            return x.view_as(x)  # a view: no copy of a large activation
        return x * fwd_scale  # a 0-d tensor scale (never read on the host) works too

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        return (grad if ctx.bwd_scale == 1.0 else grad * ctx.bwd_scale), None, None


def scale_fwd_bwd(x: Tensor, fwd_scale: float, bwd_scale: float) -> Tensor:
    """fwd: ``x × fwd_scale``; bwd: grad of x = incoming grad × ``bwd_scale`` (the two are independent).

    Returns ``x`` itself when both scales are 1.
    """
    if fwd_scale == 1.0 and bwd_scale == 1.0:
        return x
    return _ScaleFwdBwd.apply(x, float(fwd_scale), float(bwd_scale))


def scale_fwd(x: Tensor, scale: float) -> Tensor:
    """fwd: ``x × scale``; bwd: gradient passed through unscaled."""
    return scale_fwd_bwd(x, scale, 1.0)


def scale_bwd(x: Tensor, scale: float) -> Tensor:
    """fwd: ``x`` unchanged; bwd: gradient × ``scale``.

    A view of ``x`` with a gradient hook (cheaper than an autograd node); ``x`` itself when the scale is
    1 or no gradient will flow.
    """
    if scale == 1.0 or not (x.requires_grad and torch.is_grad_enabled()):
        return x
    return _scale_grad(x.view_as(x), scale)


def _scale_grad(t: Tensor, scale: float) -> Tensor:
    """Multiply the gradient that reaches the non-leaf tensor ``t`` by ``scale`` (a hook); returns ``t``."""
    if scale != 1.0 and t.requires_grad:
        t.register_hook(lambda grad: grad * scale)
    return t


def rms(t: Tensor) -> float:
    """Root mean square of all entries, ``sqrt(mean(t²))``, as a Python float (computed in float64)."""
    return float(t.detach().double().pow(2).mean().sqrt())


# --------------------------------------------------------------------------------------------------
# Constraints


class Constraint(enum.Enum):
    """How an op's output scale and its input-gradient scale(s) are tied together.

    ``TO_OUTPUT_SCALE``: every scale becomes the output scale (Graphcore's default; keeps the gradient
    of the input the true gradient of the scaled function). ``GMEAN``: every scale becomes the geometric
    mean of all of them. ``NONE``: each keeps its own ideal value (unit output *and* unit gradient, at
    the price of a gradient that is the true one times a constant).
    """

    TO_OUTPUT_SCALE = "to_output_scale"
    GMEAN = "gmean"
    NONE = "none"


def _constrain(constraint: Constraint, output_scale: float, *grad_scales: float) -> tuple[float, ...]:
    """Apply ``constraint`` to ``(output_scale, *grad_scales)``; returns as many scales as it was given."""
    scales = (output_scale, *grad_scales)
    match Constraint(constraint):
        case Constraint.TO_OUTPUT_SCALE:
            return tuple(output_scale for _ in scales)
        case Constraint.GMEAN:
            g = math.exp(sum(math.log(s) for s in scales) / len(scales))
            return tuple(g for _ in scales)
        case Constraint.NONE:
            return scales
    raise AssertionError(constraint)  # pragma: no cover


def _log_interpolate(alpha: float, lower: float, upper: float) -> float:
    """``lower^(1-alpha) · upper^alpha``: geometric interpolation (alpha=0 gives lower, 1 gives upper)."""
    return math.exp((1.0 - alpha) * math.log(lower) + alpha * math.log(upper))


# --------------------------------------------------------------------------------------------------
# Matmuls and lookups


class _ScaledLinear(torch.autograd.Function):
    """``(X Wᵀ + b) × out_scale`` whose gradients are the true ones of ``X Wᵀ + b`` times their own scales:
    grad_x × ``grad_x_scale``, grad_W and grad_b × ``grad_w_scale`` (see :func:`scaled_linear`).

    Each scale is the ``alpha``/``beta`` of the BLAS call (``torch.addmm``) that computes the tensor it
    scales, so the scales cost no pass over any tensor and no extra autograd node.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, out_scale: float,  # type: ignore[override]
                grad_x_scale: float, grad_w_scale: float, rounding: Any) -> Tensor:
        ctx.rounding = rounding
        if rounding is not None:
            x, weight = rounding.inputs(x, weight)
        if torch.is_autocast_enabled(x.device.type):  # as F.linear under autocast: operands in its dtype
            dtype = torch.get_autocast_dtype(x.device.type)
            x, weight, bias = x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype)
        rows = x.reshape(-1, x.shape[-1])
        ctx.save_for_backward(rows, weight)
        ctx.x_shape, ctx.has_bias = x.shape, bias is not None
        ctx.grad_x_scale, ctx.grad_w_scale = grad_x_scale, grad_w_scale
        if bias is None:  # beta = 0: addmm ignores its first argument
            y = torch.addmm(rows.new_zeros(()), rows, weight.t(), beta=0.0, alpha=out_scale)
        else:
            y = torch.addmm(bias, rows, weight.t(), beta=out_scale, alpha=out_scale)
        return y.view(x.shape[:-1] + weight.shape[:1])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        rows, weight = ctx.saved_tensors
        if ctx.rounding is not None:
            grad = ctx.rounding.grad(grad)
        grad_rows = grad.reshape(-1, grad.shape[-1])
        needs = ctx.needs_input_grad
        grad_x = grad_w = grad_b = None
        # Each gradient is one addmm with beta = 0: its first argument (any tensor of the result's shape) is ignored.
        if needs[0]:
            grad_x = torch.addmm(rows, grad_rows, weight, beta=0.0, alpha=ctx.grad_x_scale).view(ctx.x_shape)
        if needs[1]:  # Gᵀ X: laid out as the weight (a transposed result would be copied)
            grad_w = torch.addmm(weight, grad_rows.t(), rows, beta=0.0, alpha=ctx.grad_w_scale)
        if ctx.has_bias and needs[2]:
            grad_b = grad_rows.sum(0).mul_(ctx.grad_w_scale)
        return grad_x, grad_w, grad_b, None, None, None, None


def scaled_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, out_scale: float = 1.0,
                  grad_x_scale: float = 1.0, grad_w_scale: float = 1.0, rounding: Any = None) -> Tensor:
    """``(X Wᵀ + b) × out_scale`` in one autograd node; gradients: the true ones of ``X Wᵀ + b`` × their scale,
    grad_x × ``grad_x_scale``, grad_W and grad_b × ``grad_w_scale``. All scales 1: ``F.linear``.

    The FP32 kernel behind :func:`linear` (the scales are BLAS ``alpha``/``beta``: no extra pass).
    ``rounding``: None, or a simulated number format (``labkit.formats.SimulatedMatmul``) whose
    ``inputs(x, weight)`` rounds the operands in the forward pass and ``grad(g)`` the incoming gradient
    in the backward pass, inside this same node.
    """
    return _ScaledLinear.apply(x, weight, bias, out_scale, grad_x_scale, grad_w_scale, rounding)


@functools.lru_cache(maxsize=1024)
def _linear_scales(constraint: Constraint, output_power: float, fan_out: int, fan_in: int,
                   batch: int) -> tuple[float, float, float]:
    """(output, grad_x, grad_w) scales of a linear op (a model asks for the same few at every step)."""
    output_scale, grad_x_scale = _constrain(constraint, fan_in**-output_power, fan_out**-0.5)
    return output_scale, grad_x_scale, batch**-0.5


def _linear(x: Tensor, weight: Tensor, bias: Tensor | None, constraint: Constraint,
            output_power: float, kernel: Any = None) -> Tensor:
    fan_out, fan_in = weight.shape
    scales = _linear_scales(constraint, output_power, fan_out, fan_in, x.numel() // fan_in)
    if kernel is not None:  # a number format's matmul (labkit.fp8.Fp8Matmul, labkit.formats.SimulatedMatmul)
        return kernel.linear(x, weight, bias, *scales)
    return scaled_linear(x, weight, bias, *scales)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None,
           constraint: Constraint = Constraint.TO_OUTPUT_SCALE, kernel: Any = None) -> Tensor:
    """``Y = X W^T + b``. fwd: × fan_in^-1/2 (bias included); bwd: grad_x × fan_out^-1/2, grad_w and
    grad_b × batch^-1/2, where batch = ``x.numel() // fan_in``; then ``constraint`` ties output and grad_x.

    With the default ``TO_OUTPUT_SCALE`` grad_x is scaled by fan_in^-1/2 too (unit only if fan_in ≈
    fan_out; off by sqrt(fan_out / fan_in) otherwise). ``kernel``: a ``labkit.fp8.Fp8Matmul`` runs the
    matmuls in real FP8 (tensors cast before the scales are applied), a ``labkit.formats.SimulatedMatmul``
    simulates a format; None: FP32 (:func:`scaled_linear`).
    """
    return _linear(x, weight, bias, constraint, 0.5, kernel)


def linear_readout(x: Tensor, weight: Tensor, bias: Tensor | None = None,
                   constraint: Constraint = Constraint.NONE, kernel: Any = None) -> Tensor:
    """Final projection to logits (μP-style). fwd: × 1/fan_in; bwd: grad_x × fan_out^-1/2, grad_w and
    grad_b × batch^-1/2; unconstrained by default, as Graphcore's ``linear_readout``.

    So at init the logits have RMS ≈ fan_in^-1/2 (small: the softmax starts near uniform) while the
    gradient of ``x`` is unit scale. ``kernel``: as for :func:`linear`.
    """
    return _linear(x, weight, bias, constraint, 1.0, kernel)


def embedding(ids: Tensor, weight: Tensor, padding_idx: int | None = None) -> Tensor:
    """Table lookup. fwd: unscaled (an N(0,1) table is already unit scale); bwd: grad of the table ×
    (vocab / batch_tokens)^1/2, batch_tokens = ``ids.numel()`` (as Graphcore's ``embedding``).

    Each row receives the sum of ≈ batch_tokens / vocab unit gradients, hence the scale.
    """
    vocab = weight.shape[0]
    weight = scale_bwd(weight, (vocab / ids.numel()) ** 0.5)
    return F.embedding(ids, weight, padding_idx)


# --------------------------------------------------------------------------------------------------
# Elementwise nonlinearities


def _gelu_tanh(x: Tensor) -> Tensor:
    return F.gelu(x, approximate="tanh")


_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": F.gelu,
    "gelu_tanh": _gelu_tanh,
    "silu": F.silu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "relu": F.relu,
}

ActivationName = Literal["gelu", "gelu_tanh", "silu", "sigmoid", "tanh", "relu"]


@functools.cache
def _normal_moments(name: ActivationName) -> tuple[float, float, float]:
    """(E f(X), std f(X), sqrt(E f'(X)²)) for X ~ N(0, 1), by the trapezoid rule on [-12, 12] in float64.

    The grid has an even number of points, so it avoids x = 0 (ReLU's kink); the Gaussian tails beyond
    ±12 are below 1e-30. Accurate to ~1e-9 for the smooth functions, ~1e-7 for ReLU.
    """
    f = _ACTIVATIONS[name]
    with torch.enable_grad():  # the first call may come from inside torch.no_grad() (inference, sampling)
        x = torch.linspace(-12.0, 12.0, 2**18, dtype=torch.float64, requires_grad=True)
        y = f(x)
        (dy,) = torch.autograd.grad(y.sum(), x)
    x, y = x.detach(), y.detach()
    density = torch.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    mean = float(torch.trapezoid(density * y, x))
    second = float(torch.trapezoid(density * y * y, x))
    grad_second = float(torch.trapezoid(density * dy * dy, x))
    return mean, math.sqrt(second - mean * mean), math.sqrt(grad_second)


def activation_scales(name: ActivationName) -> tuple[float, float]:
    """(forward scale, backward scale) = (1 / std f(X), 1 / sqrt(E f'(X)²)) for X ~ N(0, 1), unconstrained.

    Values: gelu 1.7009, 1.4811; silu 1.7872, 1.6233; sigmoid 4.8013, 4.7226; tanh 1.5925, 1.4674;
    relu 1.7129, 1.4142 (gelu_tanh within 1e-5 of gelu). The backward scale makes the input gradient unit
    scale when the incoming gradient is unit scale and independent of X.
    """
    _, std, grad_rms = _normal_moments(name)
    return 1.0 / std, 1.0 / grad_rms


def _scaled_elementwise(name: ActivationName, x: Tensor, constraint: Constraint) -> Tensor:
    output_scale, grad_scale = _constrain(constraint, *activation_scales(name))
    return scale_fwd(_ACTIVATIONS[name](scale_bwd(x, grad_scale)), output_scale)


class _ScaledGelu(torch.autograd.Function):
    """``F.gelu(x) × out_scale``, gradient of x = ``gelu'(x) × grad × grad_scale``: one node, scaled in place."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, approximate: str, out_scale: float, grad_scale: float) -> Tensor:  # type: ignore[override]
        ctx.approximate, ctx.grad_scale = approximate, grad_scale
        ctx.save_for_backward(x)
        return F.gelu(x, approximate=approximate).mul_(out_scale)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        grad_x = torch.ops.aten.gelu_backward(grad, x, approximate=ctx.approximate)
        return grad_x.mul_(ctx.grad_scale), None, None, None


def gelu(x: Tensor, approximate: Literal["none", "tanh"] = "none",
         constraint: Constraint = Constraint.TO_OUTPUT_SCALE) -> Tensor:
    """GELU. fwd: × 1/std(gelu(X)) = 1.7009; bwd: × 1.7009 too by default (unconstrained: 1.4811).

    Graphcore's ``gelu`` uses an empirical model instead (1.7668 at mult=1): same function, factor
    differs by 3.9%. With the default constraint the input gradient has RMS 1.148 for unit inputs.
    One autograd node (the scales applied in place); :func:`labkit.scaling.reference.gelu` is the
    same op composed of ``scale_fwd``/``scale_bwd``.
    """
    name: ActivationName = "gelu" if approximate == "none" else "gelu_tanh"
    output_scale, grad_scale = _constrain(constraint, *activation_scales(name))
    return _ScaledGelu.apply(x, approximate, output_scale, grad_scale)


def silu(x: Tensor, constraint: Constraint = Constraint.TO_OUTPUT_SCALE) -> Tensor:
    """SiLU (swish). fwd: × 1/std(silu(X)) = 1.7872; bwd: × 1.7872 by default (unconstrained: 1.6233).

    Graphcore's ``silu`` uses an empirical model (1.7668 at mult=1), 1.1% away.
    """
    return _scaled_elementwise("silu", x, constraint)


def sigmoid(x: Tensor, constraint: Constraint = Constraint.TO_OUTPUT_SCALE) -> Tensor:
    """Logistic sigmoid. fwd: × 1/std(σ(X)) = 4.8013; bwd: × 4.8013 by default (unconstrained: 4.7226).

    The output keeps its mean (2.4 after scaling): do not use this where σ must stay a gate in (0, 1).
    """
    return _scaled_elementwise("sigmoid", x, constraint)


def tanh(x: Tensor, constraint: Constraint = Constraint.TO_OUTPUT_SCALE) -> Tensor:
    """tanh. fwd: × 1/std(tanh(X)) = 1.5925; bwd: × 1.5925 by default (unconstrained: 1.4674)."""
    return _scaled_elementwise("tanh", x, constraint)


def relu(x: Tensor, constraint: Constraint = Constraint.TO_OUTPUT_SCALE) -> Tensor:
    """ReLU. fwd: × 1/std(relu(X)) = sqrt(2 / (1 - 1/π)) = 1.7129; bwd: × 1.7129 by default
    (unconstrained: sqrt(2))."""
    return _scaled_elementwise("relu", x, constraint)


def softmax(x: Tensor, dim: int, mult: float = 1.0,
            constraint: Constraint = Constraint.TO_OUTPUT_SCALE) -> Tensor:
    """``softmax(mult · x)`` along ``dim`` of size n. fwd: × n^(1-a/2); bwd: × (n/mult)^(1-a/2), with
    a = 1 / (1 + 4/mult²); then ``constraint`` (default: both use the forward scale).

    Graphcore's empirical model: a geometric interpolation between the flat limit (outputs ≈ 1/n) and
    the one-hot limit (RMS ≈ n^-1/2). At mult = 1 this is × n^0.9.
    """
    n = x.shape[dim]
    alpha = 1.0 / (1.0 + 4.0 / mult**2)
    output_scale = _log_interpolate(alpha, n, n**0.5)
    grad_scale = _log_interpolate(alpha, n / mult, (n / mult) ** 0.5)
    output_scale, grad_scale = _constrain(constraint, output_scale, grad_scale)
    return scale_fwd(F.softmax(scale_bwd(x, grad_scale) * mult, dim=dim), output_scale)


@functools.cache
def _causal_row_scales(seq: int, alpha: float, dtype: torch.dtype = torch.float64,
                       device: torch.device | None = None) -> Tensor:
    """(seq, 1): the output scale of query position t, 1/σ_t = (t+1)^((1-a)/2) (see below), computed in
    float64 and cached in the dtype and on the device asked for."""
    visible = torch.arange(1, seq + 1, dtype=torch.float64)
    return visible.pow((1.0 - alpha) / 2.0)[:, None].to(dtype=dtype, device=device)


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = True,
                                 mult: float = 1.0) -> Tensor:
    """softmax(q k^T · mult/d_head) v on (..., seq, d_head). fwd: each query position's output × 1/σ,
    σ = ℓ^(1-a) a model of its RMS, a = 1/(1 + 4·d_head/mult²); bwd: the true gradient of that function.

    The model follows Graphcore: interpolate between flat attention (a → 0: the output averages the ℓ^-2
    visible unit values, RMS ℓ) and one-hot attention (σ = 1). Non-causal, every query sees all s keys:
    ℓ = s^-1/2, one constant, as Graphcore (which scales the gradients of q, k and v by the same constant:
    the same thing). Causal: query position t sees n_t = t+1 keys, so ℓ_t = n_t^-1/2 and the scale
    n_t^((1-a)/2) depends on the position only. Deliberate difference: Graphcore uses one constant for
    all positions from the total length s (an approximation of the mean flat variance, ln(s)/s), so the
    output at position t, and with it P(w_t | w_<t), changes with the number of tokens that *follow*;
    ours does not (a proper causal LM: the conditionals of a prefix do not depend on what comes after).
    Output RMS ≈ 1 at every position at init; v's gradient has mean variance exactly 1 in the flat limit
    (Σ_j Σ_{t≥j} n_t^(1-a)/n_t² / s = 1 at a = 0). The gradients of q and k come out at about
    mult / sqrt(d_head), not 1: the 1/d_head score scale (μP) makes the softmax nearly flat at init;
    this is by design, as in Graphcore's.
    """
    seq, d_head = v.shape[-2], v.shape[-1]
    alpha = 1.0 / (1.0 + 4.0 * d_head / mult**2)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=mult / d_head)
    if causal:
        return out * _causal_row_scales(seq, alpha, out.dtype, out.device)
    return out * (1.0 / _log_interpolate(alpha, seq**-0.5, 1.0))


# --------------------------------------------------------------------------------------------------
# Residuals and normalisation


class _ResidualSplit(torch.autograd.Function):
    """Two views of x; gradient of x = (τ·grad of branch + grad of skip) / √(1+τ²), in one pass."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, tau: float) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        ctx.tau = tau
        return x.view_as(x), x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad_branch: Tensor, grad_skip: Tensor) -> tuple[Tensor | None, None]:  # type: ignore[override]
        return torch.add(grad_skip, grad_branch, alpha=ctx.tau).mul_((1.0 + ctx.tau * ctx.tau) ** -0.5), None


class _ResidualAdd(torch.autograd.Function):
    """``(skip + τ·residual) / √(1+τ²)``; both gradients passed through unscaled."""

    @staticmethod
    def forward(ctx: Any, residual: Tensor, skip: Tensor, tau: float) -> Tensor:  # type: ignore[override]
        return torch.add(skip, residual, alpha=tau).mul_((1.0 + tau * tau) ** -0.5)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        return grad, grad, None


def residual_split(x: Tensor, tau: float = 1.0) -> tuple[Tensor, Tensor]:
    """Fork ``x`` into (residual-branch input, skip). fwd: both unscaled; bwd: branch grad × τ/√(1+τ²),
    skip grad × 1/√(1+τ²). Pair with :func:`residual_add` (same τ).

    The branch's share of the backward scale is applied here, where the branches meet again in the
    backward pass, so the summed gradient of ``x`` stays unit scale when both incoming ones are.
    One autograd node, which also does the sum of the two gradients.
    """
    return _ResidualSplit.apply(x, float(tau))


def residual_add(residual: Tensor, skip: Tensor, tau: float = 1.0) -> Tensor:
    """``(skip + τ · residual) / √(1+τ²)``. fwd: residual × τ/√(1+τ²), skip × 1/√(1+τ²); bwd: both
    gradients passed through unscaled (their scaling happens in :func:`residual_split`). One node."""
    return _ResidualAdd.apply(residual, skip, float(tau))


def _shape(normalized_shape: int | Sequence[int]) -> tuple[int, ...]:
    return (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)


class _LayerNorm(torch.autograd.Function):
    """``F.layer_norm`` whose weight and bias gradients are × ``grad_scale`` (in place: they are small)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, shape: tuple[int, ...], weight: Tensor | None,  # type: ignore[override]
                bias: Tensor | None, eps: float, grad_scale: float) -> Tensor:
        if torch.is_autocast_enabled(x.device.type):  # as F.layer_norm under autocast: computed in FP32
            x = x.float()
        out, ctx.mean, ctx.rstd = torch.native_layer_norm(x, shape, weight, bias, eps)
        ctx.save_for_backward(x, weight, bias)
        ctx.shape, ctx.grad_scale = shape, grad_scale
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, weight, bias = ctx.saved_tensors
        needs = ctx.needs_input_grad
        grad_x, grad_w, grad_b = _LAYER_NORM_BACKWARD(grad.contiguous(), x, ctx.shape, ctx.mean, ctx.rstd, weight,
                                                      bias, (needs[0], needs[2], needs[3]))
        grad_w = None if grad_w is None else grad_w.mul_(ctx.grad_scale)
        grad_b = None if grad_b is None else grad_b.mul_(ctx.grad_scale)
        return grad_x, None, grad_w, grad_b, None, None


_LAYER_NORM_BACKWARD = torch.ops.aten.native_layer_norm_backward.default


def layer_norm(x: Tensor, normalized_shape: int | Sequence[int], weight: Tensor | None = None,
               bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """``F.layer_norm``. fwd: not rescaled (already unit scale); bwd: grad_x unscaled, grad of weight and
    bias × sqrt(normalized size / numel), i.e. × rows^-1/2. One autograd node, as ``F.layer_norm``."""
    shape = _shape(normalized_shape)
    return _LayerNorm.apply(x, shape, weight, bias, eps, (math.prod(shape) / x.numel()) ** 0.5)


def rms_norm(x: Tensor, normalized_shape: int | Sequence[int], weight: Tensor | None = None,
             eps: float = 1e-5) -> Tensor:
    """``x / sqrt(mean(x²) + eps) · weight`` over the last dims. fwd: not rescaled; bwd: grad_x unscaled,
    grad of weight × sqrt(normalized size / numel)."""
    shape = _shape(normalized_shape)
    if weight is not None:
        weight = scale_bwd(weight, (math.prod(shape) / x.numel()) ** 0.5)
    return F.rms_norm(x, shape, weight, eps)


# --------------------------------------------------------------------------------------------------
# Loss


def cross_entropy(logits: Tensor, targets: Tensor, ignore_index: int = -100,
                  reduction: Literal["mean", "sum"] = "mean") -> Tensor:
    """Softmax cross-entropy on logits (..., vocab) and targets (...). fwd: loss summed, then × 1/count
    (the mean, as a value) for ``reduction="mean"``; bwd: grad of logits × vocab / sqrt(vocab - 1),
    *not* divided by the count (the 1/count is forward-only: built-in loss scaling).

    The gradient rule and the returned mean value match Graphcore's. Deliberate difference: count is
    the number of targets not equal to ``ignore_index`` (so the value equals ``F.cross_entropy``'s mean),
    where Graphcore divides by the number of rows; the two agree when nothing is ignored.
    """
    vocab = logits.shape[-1]
    targets = targets.reshape(-1)
    loss = F.cross_entropy(logits.reshape(-1, vocab), targets, ignore_index=ignore_index, reduction="sum")
    # The backward scale goes on the summed loss's (scalar) gradient: the loss's backward is linear in
    # it, so the logits' gradient comes out scaled without another pass over the logits.
    grad_scale = vocab / (vocab - 1) ** 0.5
    if reduction == "sum":
        return scale_bwd(loss, grad_scale)
    count = (targets != ignore_index).sum()  # a tensor: reading it as a number would wait for the device
    return _ScaleFwdBwd.apply(loss, count.to(loss.dtype).reciprocal(), grad_scale)  # 0 targets: 0·inf = NaN


# --------------------------------------------------------------------------------------------------
# LSTM (new: not in Graphcore's library)


@functools.cache
def lstm_scales(steps: int = 64, units: int = 8192, seed: int = 0) -> tuple[float, float]:
    """(σ_h, ρ) for :func:`lstm`: the stationary RMS of the hidden state h = o·tanh(c) when every gate
    pre-activation z is N(0, 1), and the RMS of the gradient of z per unit gradient on ĥ = h/σ_h.

    A fixed-seed mean-field Monte-Carlo in float64: ``units`` independent scalar cells run ``steps``
    steps (the first and last 16 are dropped as transients). Mean field: with N(0,1) weights and the
    scales of :func:`lstm` the four pre-activations of a cell are independent unit normals, and the
    recurrent gradient reaching ĥ_{t-1} (W_hh^T dz_t · σ_h / sqrt(H(1+σ_h²))) is a normal with variance
    4·σ_h²·E[dz_t²] / (1+σ_h²), independent of the cell's own state. Values: σ_h = 0.193, ρ = 0.652.
    """
    dtype = torch.float64
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(steps, 4, units, generator=gen, dtype=dtype)
    i, f, o = torch.sigmoid(z[:, 0]), torch.sigmoid(z[:, 1]), torch.sigmoid(z[:, 3])
    g = torch.tanh(z[:, 2])
    c_prev = torch.empty(steps, units, dtype=dtype)
    tanh_c = torch.empty(steps, units, dtype=dtype)
    c = torch.zeros(units, dtype=dtype)
    for t in range(steps):
        c_prev[t] = c
        c = f[t] * c + i[t] * g[t]
        tanh_c[t] = torch.tanh(c)
    burn = 16
    sigma_h = float((o * tanh_c)[burn:].pow(2).mean().sqrt())

    upstream = torch.randn(steps, units, generator=gen, dtype=dtype)
    noise = torch.randn(steps, units, generator=gen, dtype=dtype)
    dz2 = torch.zeros(steps, dtype=dtype)
    dc_next = torch.zeros(units, dtype=dtype)
    recurrent_var = 0.0
    for t in reversed(range(steps)):
        dh = (upstream[t] + noise[t] * recurrent_var**0.5) / sigma_h
        dc = dc_next + dh * o[t] * (1.0 - tanh_c[t] ** 2)
        dz_i = dc * g[t] * i[t] * (1.0 - i[t])
        dz_f = dc * c_prev[t] * f[t] * (1.0 - f[t])
        dz_g = dc * i[t] * (1.0 - g[t] ** 2)
        dz_o = dh * tanh_c[t] * o[t] * (1.0 - o[t])
        dz2[t] = (dz_i**2 + dz_f**2 + dz_g**2 + dz_o**2).mean() / 4.0
        recurrent_var = 4.0 * sigma_h**2 * float(dz2[t]) / (1.0 + sigma_h**2)
        dc_next = dc * f[t]
    rho = float(dz2[: steps - burn].mean().sqrt())
    return sigma_h, rho


def lstm_cell(x_proj: Tensor, h: Tensor, c: Tensor, w_hh: Tensor, b_hh: Tensor | None = None,
              scales: tuple[float, float] | None = None) -> tuple[Tensor, Tensor]:
    """One unit-scaled LSTM step; returns the new (ĥ, c). ``scales`` = :func:`lstm_scales` by default.

    ``x_proj`` (B, 4H) is this step's unit-scaled input projection, ``h`` = ĥ the unit-scaled hidden state
    (B, H), ``c`` the cell state. fwd: hp = (ĥ W_hh^T + b_hh)·σ_h·H^-1/2; z = (x_proj + hp) / √(1+σ_h²);
    gates i, f, o = σ(z), g = tanh(z) (plain: they stay gates); c' = f·c + i·g; ĥ' = o·tanh(c') / σ_h.
    bwd: the same scales (all tied, since ĥ and c loop back: an untied scale would compound over time
    steps and change the gradient's direction, not just its size). ``w_hh``'s own gradient scale is the
    caller's (:func:`lstm` applies it once, outside the time loop).
    """
    sigma_h = (scales or lstm_scales())[0]
    s = sigma_h * w_hh.shape[1] ** -0.5
    h_proj = scale_fwd(F.linear(scale_bwd(h, s), w_hh, b_hh), s)
    z = (x_proj + h_proj) * (1.0 + sigma_h**2) ** -0.5
    zi, zf, zg, zo = z.chunk(4, dim=-1)
    c = torch.sigmoid(zf) * c + torch.sigmoid(zi) * torch.tanh(zg)
    h = torch.sigmoid(zo) * torch.tanh(c) * (1.0 / sigma_h)
    return h, c


def _check_lstm_shapes(x: Tensor, w_ih: Tensor, w_hh: Tensor) -> None:
    if x.dim() != 3:
        raise ValueError(f"lstm expects a 3-d input (batch, seq, features), got shape {tuple(x.shape)}")
    hidden = w_hh.shape[1]
    if w_hh.shape[0] != 4 * hidden or w_ih.shape[0] != 4 * hidden:
        raise ValueError(f"weights must be (4H, in) and (4H, H); got {tuple(w_ih.shape)}, {tuple(w_hh.shape)}")


def lstm_reference(x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None = None, b_hh: Tensor | None = None,
         h0: Tensor | None = None, c0: Tensor | None = None,
         batch_first: bool = True) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """A unit-scaled one-layer LSTM with ``nn.LSTM``'s parameters: gate order (i, f, g, o), ``w_ih``
    (4H, in), ``w_hh`` (4H, H). Returns (ĥ for every step, (ĥ_T, c_T)), states shaped (1, B, H).

    The readable reference: a Python loop over time of :func:`lstm_cell`. :func:`lstm` computes the same
    function and the same gradients with PyTorch's fused kernel (what the models run; the tests check
    that the two agree).

    Rule: output ĥ = h/σ_h (unit RMS); grad of x, w_ih, w_hh, b_ih, b_hh unit RMS (σ_h = 0.193 and
    ρ = 0.652 from :func:`lstm_scales`). The state ĥ is unit-scaled too (pass it back as ``h0``).

    Derivation (weights N(0,1), x unit RMS):

    1. Input projection, all steps at once: ``xp = linear(x, w_ih, b_ih, Constraint.NONE)``: unit
       forward; grad_x × (4H)^-1/2 (unit for a unit grad of xp); grad_w_ih, grad_b_ih × (B·T)^-1/2.
    2. Gates see z = (xp + hp) / √(1+σ_h²), a sum of two independent terms of variance 1 and σ_h², so z is
       N(0,1) and the cell is a plain LSTM cell: c = f·c + i·g, h = o·tanh(c) has RMS σ_h ≈ 0.19 (σ(z) ≈
       1/2 twice, tanh compresses); ĥ = h/σ_h is unit and is both the output and the carried state.
    3. The recurrent projection hp = ĥ W_hh^T · σ_h·H^-1/2 (tied scales) has RMS σ_h, not 1: it carries h's
       natural scale, which gives input and recurrence the same variance ratio (1 : σ_h²) as ``nn.LSTM``
       at its default init. The naive rule (hp unit, z = (xp + hp)/√2) makes the recurrence ~5× stronger;
       measured: the output RMS then drifts up along the sequence and the gradient of x grows ~20× over 64
       steps backward in time (a chaotic regime), so it is not used.
    4. Backward: the gradient of z has RMS ρ per unit gradient on ĥ, so each projection's gradient has RMS
       ρ/√(1+σ_h²). xp's gradient is × √(1+σ_h²)/ρ (``scale_bwd`` before the loop: a constant factor on
       everything upstream, like any unconstrained gradient scale); w_hh's and b_hh's gradients (sums
       over B·T uses) are × √(1+σ_h²)/ρ · (B·T)^-1/2, applied once to the weight outside the loop.
       Nothing inside the loop has a backward scale different from its forward scale.

    Relation to ``nn.LSTM``: with k = (1+σ_h²)^-1/2 the forward equals ``nn.LSTM`` with weights
    k·w_ih/√in, k·w_hh/√H, biases k·b_ih/√in, k·σ_h·b_hh/√H, output divided by σ_h; each gradient is that
    function's gradient times a constant.
    """
    _check_lstm_shapes(x, w_ih, w_hh)
    if not batch_first:
        x = x.transpose(0, 1)
    batch, steps, _ = x.shape
    hidden = w_hh.shape[1]
    scales = lstm_scales()
    sigma_h, rho = scales
    grad_proj_scale = (1.0 + sigma_h**2) ** 0.5 / rho
    rec_weight_scale = grad_proj_scale * (batch * steps) ** -0.5

    x_proj = scale_bwd(linear(x, w_ih, b_ih, Constraint.NONE), grad_proj_scale)
    w_hh = scale_bwd(w_hh, rec_weight_scale)
    if b_hh is not None:
        b_hh = scale_bwd(b_hh, rec_weight_scale)
    h = x.new_zeros(batch, hidden) if h0 is None else h0.reshape(batch, hidden)
    c = x.new_zeros(batch, hidden) if c0 is None else c0.reshape(batch, hidden)
    outputs = []
    for t in range(steps):
        h, c = lstm_cell(x_proj[:, t], h, c, w_hh, b_hh, scales)
        outputs.append(h)
    output = torch.stack(outputs, dim=1 if batch_first else 0)
    return output, (h.unsqueeze(0), c.unsqueeze(0))



def lstm(x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None = None, b_hh: Tensor | None = None,
         h0: Tensor | None = None, c0: Tensor | None = None,
         batch_first: bool = True) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """:func:`lstm_reference` (same arguments, rule, outputs and gradients, to float rounding) run by
    PyTorch's fused LSTM kernel instead of a Python loop over time.

    Rule (derived in :func:`lstm_reference`): output and state ĥ unit RMS; grads of x, weights and biases
    unit RMS. With k = (1+σ_h²)^-1/2, g = √(1+σ_h²)/ρ and r = g·(B·T)^-1/2, the reference is ``nn.LSTM``
    on rescaled weights with output ĥ = h/σ_h, and each of its gradients is the true one times a constant:

    * fwd: the kernel's weights are w_ih·k·in^-1/2, b_ih·k·in^-1/2, w_hh·k·H^-1/2 (ĥ = h/σ_h meets
      σ_h·H^-1/2) and b_hh·k·σ_h·H^-1/2; an initial state ĥ₀ enters as h₀ = σ_h·ĥ₀; outputs are h/σ_h.
    * bwd: inside the kernel every gradient is the true one (as in the reference's loop, where all
      scales are tied). The reference's gradient of a weight is the kernel's gradient of its scaled
      copy × k·r (w_ih, b_ih, b_hh) or × k·r/σ_h (w_hh): one ``scale_fwd_bwd`` node per weight, forward
      scale folded in. Its gradient of x is the true one × g·(in/4H)^1/2 (the reference scales the input
      projection's gradient by g, then by (4H)^-1/2 where the true factor is in^-1/2): one ``scale_bwd``.
    """
    _check_lstm_shapes(x, w_ih, w_hh)
    batch, steps = (x.shape[0], x.shape[1]) if batch_first else (x.shape[1], x.shape[0])
    (four_hidden, n_in), hidden = w_ih.shape, w_hh.shape[1]
    sigma_h, rho = lstm_scales()
    k = (1.0 + sigma_h**2) ** -0.5
    g = 1.0 / (k * rho)
    r = g * (batch * steps) ** -0.5
    b_ih = x.new_zeros(four_hidden) if b_ih is None else b_ih
    b_hh = x.new_zeros(four_hidden) if b_hh is None else b_hh
    weights = [scale_fwd_bwd(w_ih, k * n_in**-0.5, k * r), scale_fwd_bwd(w_hh, k * hidden**-0.5, k * r / sigma_h),
               scale_fwd_bwd(b_ih, k * n_in**-0.5, k * r), scale_fwd_bwd(b_hh, k * sigma_h * hidden**-0.5, k * r)]
    x = scale_bwd(x, g * (n_in / four_hidden) ** 0.5)
    h0 = x.new_zeros(1, batch, hidden) if h0 is None else h0.reshape(1, batch, hidden) * sigma_h
    c0 = x.new_zeros(1, batch, hidden) if c0 is None else c0.reshape(1, batch, hidden)
    output, h_n, c_n = torch.lstm(x, (h0, c0), weights, True, 1, 0.0, torch.is_grad_enabled(), False, batch_first)
    return output * (1.0 / sigma_h), (h_n * (1.0 / sigma_h), c_n)
