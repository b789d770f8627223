"""The unit-scaled ops written literally: each scale its own ``scale_fwd``/``scale_bwd`` node.

:mod:`labkit.scaling.ops` computes some ops with fewer autograd nodes and fewer passes over the
activations (a linear layer whose scales are its matmuls' alpha and beta, a layer norm, sum, GELU and
residual split each in one node, the LSTM in PyTorch's fused kernel), because on a small model the
cost of unit scaling is those extra nodes and elementwise passes, not the arithmetic of the scales.
The fast versions must compute the same numbers. This module keeps the plain versions, one line per
rule, to read and to test against: ``reference_ops(ops)`` swaps them into a unit-scaled op table, and
``tests/test_fast_paths.py`` checks that a model built either way gives the same output and gradients.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from labkit.models.layers import Ops
from labkit.scaling import ops as U
from labkit.scaling import unit


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None,
           constraint: U.Constraint = U.Constraint.TO_OUTPUT_SCALE, output_power: float = 0.5) -> Tensor:
    """``Y = X W^T + b``. fwd: × fan_in^-output_power; bwd: grad_x × fan_out^-1/2, grad_w and grad_b ×
    batch^-1/2; ``constraint`` ties output and grad_x. As ``ops.linear`` (``output_power=1``:
    ``ops.linear_readout``)."""
    fan_out, fan_in = weight.shape
    output_scale, grad_x_scale = U._constrain(constraint, fan_in**-output_power, fan_out**-0.5)
    grad_w_scale = (x.numel() // fan_in) ** -0.5
    x, weight = U.scale_bwd(x, grad_x_scale), U.scale_bwd(weight, grad_w_scale)
    bias = None if bias is None else U.scale_bwd(bias, grad_w_scale)
    return U.scale_fwd(F.linear(x, weight, bias), output_scale)


def layer_norm(x: Tensor, normalized_shape: int | Sequence[int], weight: Tensor | None = None,
               bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """``F.layer_norm``. fwd: not rescaled; bwd: grad of weight and bias × sqrt(normalized size / numel)."""
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    grad_scale = (math.prod(shape) / x.numel()) ** 0.5
    weight = None if weight is None else U.scale_bwd(weight, grad_scale)
    bias = None if bias is None else U.scale_bwd(bias, grad_scale)
    return F.layer_norm(x, shape, weight, bias, eps)


def add(a: Tensor, b: Tensor) -> Tensor:
    """``(a + b) × 2^-1/2``; grads × 1, except a broadcast input's: × sqrt(its numel / output numel)."""
    out = torch.broadcast_shapes(a.shape, b.shape)
    a, b = (U.scale_bwd(t, (t.numel() / math.prod(out)) ** 0.5) for t in (a, b))
    return U.scale_fwd(a + b, 2**-0.5)


def residual_split(x: Tensor, tau: float = 1.0) -> tuple[Tensor, Tensor]:
    """Fork ``x``. fwd: both unscaled; bwd: branch grad × τ/√(1+τ²), skip grad × 1/√(1+τ²)."""
    denom = (1.0 + tau * tau) ** 0.5
    return U.scale_bwd(x, tau / denom), U.scale_bwd(x, 1.0 / denom)


def residual_add(residual: Tensor, skip: Tensor, tau: float = 1.0) -> Tensor:
    """``(skip + τ · residual) / √(1+τ²)``. fwd: residual × τ/√(1+τ²), skip × 1/√(1+τ²); bwd: both
    gradients unscaled (their scaling happened in :func:`residual_split`)."""
    denom = (1.0 + tau * tau) ** 0.5
    return U.scale_fwd(residual, tau / denom) + U.scale_fwd(skip, 1.0 / denom)


def gelu(x: Tensor, approximate: Literal["none", "tanh"] = "none",
         constraint: U.Constraint = U.Constraint.TO_OUTPUT_SCALE) -> Tensor:
    """GELU. fwd: × 1/std(gelu(X)); bwd: grad of x × the (constrained) backward scale (as silu, tanh, ...)."""
    return U._scaled_elementwise("gelu" if approximate == "none" else "gelu_tanh", x, constraint)


def cross_entropy(logits: Tensor, targets: Tensor, ignore_index: int = -100) -> Tensor:
    """Mean softmax cross-entropy. fwd: loss summed, × 1/count; bwd: grad of logits × vocab/√(vocab-1)."""
    vocab = logits.shape[-1]
    logits = U.scale_bwd(logits.reshape(-1, vocab), vocab / (vocab - 1) ** 0.5)
    targets = targets.reshape(-1)
    loss = F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="sum")
    count = int((targets != ignore_index).sum())
    return U.scale_fwd(loss, 1.0 / count if count else math.nan)


#: The literal version of each readout op of the unit-scaled tables.
_READOUTS = {unit.readout: functools.partial(linear, constraint=U.Constraint.NONE),
             U.linear_readout: functools.partial(linear, constraint=U.Constraint.NONE, output_power=1.0)}


def reference_ops(ops: Ops) -> Ops:
    """A unit-scaled op table (``Unit().ops()``, ``UMuP().ops()``) with its fast ops replaced by the
    literal ones above and the LSTM by the Python loop ``ops.lstm_reference``: same numbers, slower."""
    return ops.replace(linear=linear, readout=_READOUTS[ops.readout], layer_norm=layer_norm, add=add,
                       residual_split=residual_split, residual_add=residual_add, gelu=gelu,
                       cross_entropy=cross_entropy,
                       lstm=functools.partial(unit.lstm, layer=U.lstm_reference))
