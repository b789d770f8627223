"""The unit-scaled ops written literally: each scale its own ``scale_fwd``/``scale_bwd`` node.

:mod:`labkit.scaling.ops` computes some ops with fewer autograd nodes and fewer passes over the
activations (a residual split that also sums its two gradients, a GELU in one node, the LSTM in PyTorch's
fused kernel), because on a small model the cost of unit scaling is those extra nodes
and elementwise passes, not the arithmetic of the scales. The fast versions must compute the same
numbers. This module keeps the plain versions, one line per rule, to read and to test against:
``reference_ops(ops)`` swaps them into a unit-scaled op table, and ``tests/test_fast_paths.py`` checks
that a model built either way gives the same output and gradients.
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import torch.nn.functional as F
from torch import Tensor

from labkit.models.layers import Ops
from labkit.scaling import ops as U
from labkit.scaling import unit


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


def reference_ops(ops: Ops) -> Ops:
    """A unit-scaled op table (``Unit().ops()``, ``UMuP().ops()``) with its fast ops replaced by the
    literal ones above and the LSTM by the Python loop ``ops.lstm_reference``: same numbers, slower."""
    return ops.replace(residual_split=residual_split, residual_add=residual_add, gelu=gelu,
                       cross_entropy=cross_entropy,
                       lstm=functools.partial(unit.lstm, layer=U.lstm_reference))
