"""Layers whose arithmetic is chosen by the scaling method.

Every model in ``labkit.models`` is built from the modules below. Each holds its parameters exactly as
the ``torch.nn`` module it mirrors (same names, shapes and default initialisation), but its forward pass
calls a function from an :class:`Ops` table. The standard table is plain ``torch.nn.functional``; the
unit-scaled table (``labkit.scaling``) swaps in scaled ops, and a simulated number format wraps the
ops so their inputs and gradients are rounded. The model code never changes: only the table does.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labkit.models.roles import Role, tag


def _residual_split(x: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    """Standard residual: the branch and the skip both see ``x`` unchanged."""
    return x, x


def _residual_add(branch: Tensor, skip: Tensor, tau: float) -> Tensor:
    """Standard residual: ``skip + branch`` (``tau`` only matters to unit scaling)."""
    return skip + branch


def fixed_residual_tau(index: int, branches: int) -> float:
    """Relative weight of residual branch ``index`` (0-based, attention branches even, MLP branches odd)
    out of ``branches``: 0.01 for attention and 0.5 for MLPs, Graphcore's ``unit_scale()`` defaults."""
    return 0.01 if index % 2 == 0 else 0.5


def _causal_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """softmax(q k^T / sqrt(d_head)) v with a causal mask; shapes (B, heads, T, d_head)."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def fused_lstm(x: Tensor, weights: Sequence[Tensor], num_layers: int, training: bool) -> Tensor:
    """PyTorch's fused multi-layer LSTM (what ``nn.LSTM`` runs), batch-first, zero initial state.

    ``weights`` are per layer (w_ih, w_hh, b_ih, b_hh), gate order (i, f, g, o) as in ``nn.LSTM``.
    """
    batch, hidden = x.shape[0], weights[1].shape[1]
    zeros = x.new_zeros(num_layers, batch, hidden)
    output, _, _ = torch.lstm(x, (zeros, zeros), list(weights), True, num_layers, 0.0, training, False, True)
    return output


#: Marks an LSTM op that runs PyTorch's fused kernel, whose matmuls FLOP counting cannot see (it adds
#: them by formula, ``labkit.instrument``); wrappers made with ``functools.wraps`` keep the mark.
fused_lstm.runs_fused_kernel = True


def runs_fused_kernel(op: Callable[..., Tensor]) -> bool:
    """Whether the LSTM op ``op`` (or the op it wraps) runs PyTorch's fused kernel."""
    return getattr(op, "runs_fused_kernel", False)


@dataclass(frozen=True)
class Ops:
    """The functions a model's forward pass calls. Replace fields to change the arithmetic.

    Signatures: ``linear(x, w, b)``, ``readout(x, w, b)`` (the final projection to logits),
    ``embedding(ids, table)``, ``gelu(x)``, ``add(a, b)``, ``residual_split(x, tau) -> (branch, skip)``,
    ``residual_add(branch, skip, tau)``, ``attention(q, k, v)`` (causal), ``layer_norm(x, shape, w, b, eps)``,
    ``lstm(x, weights, num_layers, training)``, ``cross_entropy(logits, targets)`` (mean over tokens),
    ``residual_tau(index, branches)``: the relative weight τ of each residual branch of a Transformer.
    """

    linear: Callable[..., Tensor] = F.linear
    readout: Callable[..., Tensor] = F.linear
    embedding: Callable[..., Tensor] = F.embedding
    gelu: Callable[[Tensor], Tensor] = F.gelu
    add: Callable[[Tensor, Tensor], Tensor] = torch.add
    residual_split: Callable[[Tensor, float], tuple[Tensor, Tensor]] = _residual_split
    residual_add: Callable[[Tensor, Tensor, float], Tensor] = _residual_add
    attention: Callable[[Tensor, Tensor, Tensor], Tensor] = _causal_attention
    layer_norm: Callable[..., Tensor] = F.layer_norm
    lstm: Callable[..., Tensor] = fused_lstm
    cross_entropy: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy
    residual_tau: Callable[[int, int], float] = fixed_residual_tau

    def replace(self, **changes: Callable[..., object]) -> Ops:
        return dataclasses.replace(self, **changes)


STANDARD_OPS = Ops()


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and init) whose product is ``op(x, weight, bias)``.

    The weight is tagged ``role`` (a hidden ``WEIGHT``, or ``READOUT`` for the projection to logits),
    the bias ``BIAS`` (:mod:`labkit.models.roles`).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 op: Callable[..., Tensor] = F.linear, role: Role = Role.WEIGHT) -> None:
        super().__init__(in_features, out_features, bias)
        self.op = op
        tag(self.weight, role)
        if self.bias is not None:
            tag(self.bias, Role.BIAS)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x, self.weight, self.bias)


class Embedding(nn.Embedding):
    """``nn.Embedding`` (same parameters and init) whose lookup is ``op(ids, weight)``; table tagged ``EMBEDDING``."""

    def __init__(self, num_embeddings: int, embedding_dim: int, *,
                 op: Callable[..., Tensor] = F.embedding) -> None:
        super().__init__(num_embeddings, embedding_dim)
        self.op = op
        tag(self.weight, Role.EMBEDDING)

    def forward(self, ids: Tensor) -> Tensor:
        return self.op(ids, self.weight)


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` (same parameters and init) computed by ``op``; gain tagged ``NORM``, bias ``BIAS``."""

    def __init__(self, dim: int, *, op: Callable[..., Tensor] = F.layer_norm) -> None:
        super().__init__(dim)
        self.op = op
        tag(self.weight, Role.NORM)
        tag(self.bias, Role.BIAS)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x, self.normalized_shape, self.weight, self.bias, self.eps)


class LSTM(nn.Module):
    """A batch-first multi-layer LSTM with ``nn.LSTM``'s parameter names, shapes and initialisation.

    Written out (rather than using ``nn.LSTM``) so that every weight is an ordinary attribute: this is
    what lets the seed's always-normalised weights (a parametrisation) and the unit-scaled and
    low-precision ops reach the recurrent weights. With the standard ops it runs the same fused kernel
    as ``nn.LSTM`` and gives identical outputs (checked in the tests).
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, *,
                 op: Callable[..., Tensor] = fused_lstm) -> None:
        super().__init__()
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.op = op
        for layer in range(num_layers):
            fan_in = input_size if layer == 0 else hidden_size
            self.register_parameter(f"weight_ih_l{layer}", nn.Parameter(torch.empty(4 * hidden_size, fan_in)))
            self.register_parameter(f"weight_hh_l{layer}", nn.Parameter(torch.empty(4 * hidden_size, hidden_size)))
            self.register_parameter(f"bias_ih_l{layer}", nn.Parameter(torch.empty(4 * hidden_size)))
            self.register_parameter(f"bias_hh_l{layer}", nn.Parameter(torch.empty(4 * hidden_size)))
        for name, p in self.named_parameters():
            tag(p, Role.WEIGHT if name.startswith("weight") else Role.BIAS)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def weights(self) -> list[Tensor]:
        """Per layer: w_ih, w_hh, b_ih, b_hh (read through any parametrisation)."""
        names = ("weight_ih_l{}", "weight_hh_l{}", "bias_ih_l{}", "bias_hh_l{}")
        return [getattr(self, n.format(layer)) for layer in range(self.num_layers) for n in names]

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x, self.weights(), self.num_layers, self.training)
