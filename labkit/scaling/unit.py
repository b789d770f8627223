"""``unit``: Unit Scaling (Blake, Orr & Luschi, ICML 2023).

Every weight is drawn N(0, 1) and every op scales its output and its gradients by fixed factors
(:mod:`labkit.scaling.ops`, one function per op with its rule) so that activations, weights and
gradients all have RMS ≈ 1 at initialisation, at any width. Values then sit in the middle of the
FP16/FP8 range, which is why the paper trains in low precision without loss scaling.

What this module adds to the ops: the initialisation, the table that routes each model op to its
scaled version, and a unit-scaled LSTM (not in the published library: derived in ``ops.lstm``).
Residual branches use Graphcore's ``unit_scale()`` weights: τ = 0.01 for attention, 0.5 for MLPs. The
readout (last projection to logits) is scaled like any matmul but left unconstrained (see ``readout``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from labkit.config import Optimizer, Scaling
from labkit.models.layers import LSTM, Embedding, LayerNorm, Linear, Ops, fixed_residual_tau
from labkit.scaling import ops as U
from labkit.scaling.base import ScalingMethod


class _ScaledSum(torch.autograd.Function):
    """``(a + b) × scale``; each input's gradient is the incoming one summed over the dims it was broadcast
    along, × sqrt(its size / the output's size) (1 where it was not broadcast)."""

    @staticmethod
    def forward(ctx: Any, a: Tensor, b: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        ctx.shapes = a.shape, b.shape
        return torch.add(a, b).mul_(scale)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        return (*(_summed_grad(grad, shape) for shape in ctx.shapes), None)


def _summed_grad(grad: Tensor, shape: torch.Size) -> Tensor:
    summed = grad.sum_to_size(shape)
    if summed.numel() == grad.numel():  # not broadcast: grad itself, or a view of it (never scaled in place)
        return summed
    return summed.mul_((summed.numel() / grad.numel()) ** 0.5)


def add(a: Tensor, b: Tensor) -> Tensor:
    """Sum of two independent unit-scale tensors: fwd × 2^-1/2 (unit variance again), grads × 1.

    When one is broadcast over the other (position embeddings over the batch), its gradient sums
    ``output.numel() / its numel()`` unit-scale terms, so it is scaled back by the square root of that
    count. One autograd node; :func:`labkit.scaling.reference.add` is the same op written with
    ``scale_fwd``/``scale_bwd``.
    """
    return _ScaledSum.apply(a, b, 2**-0.5)


def causal_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Unit-scaled causal attention (see ``ops.scaled_dot_product_attention``)."""
    return U.scaled_dot_product_attention(q, k, v, causal=True)


def lstm(x: Tensor, weights: Sequence[Tensor], num_layers: int, training: bool,
         layer: Callable[..., tuple[Tensor, Any]] = U.lstm) -> Tensor:
    """Stacked unit-scaled LSTM layers, zero initial state, batch-first. Each ``layer`` is ``ops.lstm``
    (PyTorch's fused kernel) or, for the readable reference path, ``ops.lstm_reference`` (a loop)."""
    for i in range(num_layers):
        w_ih, w_hh, b_ih, b_hh = weights[4 * i: 4 * i + 4]
        x, _ = layer(x, w_ih, w_hh, b_ih, b_hh)
    return x


lstm.runs_fused_kernel = True  # with the default layer (see labkit.models.layers.runs_fused_kernel)


def readout(x: Tensor, weight: Tensor, bias: Tensor | None = None, kernel: object = None) -> Tensor:
    """The final projection to logits, as in the 2023 paper: fwd × fan_in^-1/2, grad_x × fan_out^-1/2,
    unconstrained. The input gradient then differs from the true one by the constant (fan_in/fan_out)^1/2,
    a uniform rescaling of every earlier gradient (a built-in loss scale), not a change of direction."""
    return U.linear(x, weight, bias, constraint=U.Constraint.NONE, kernel=kernel)


def unit_ops(residual_tau=fixed_residual_tau, readout=readout) -> Ops:
    """The op table of a unit-scaled model. u-μP passes ``readout=ops.linear_readout`` (1/fan_in)."""
    return Ops(linear=U.linear, readout=readout, embedding=U.embedding, gelu=U.gelu, add=add,
               residual_split=U.residual_split, residual_add=U.residual_add, attention=causal_attention,
               layer_norm=U.layer_norm, lstm=lstm, cross_entropy=U.cross_entropy, residual_tau=residual_tau)


def unit_init_(model: nn.Module) -> None:
    """Weights N(0, 1), biases 0, norm gains 1: the scaled ops supply every other factor."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, Linear | Embedding):
                nn.init.normal_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, LSTM):
                for name, p in module.named_parameters():
                    (nn.init.normal_ if name.startswith("weight") else nn.init.zeros_)(p)
            elif isinstance(module, LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)


class Unit(ScalingMethod):
    name = Scaling.UNIT
    summary = "Unit Scaling (2023): N(0,1) weights, scaled ops; unit RMS at init for every tensor."
    default_lr = {Optimizer.ADAMW: 2.0**-4, Optimizer.SGD: 2.0**-7}

    def ops(self) -> Ops:
        return unit_ops()

    def prepare(self, model: nn.Module) -> None:
        unit_init_(model)
