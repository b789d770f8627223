"""The seed article's "unit scaling": every parameter tensor divided by its L2 norm.

Two readings of the article, both offered so the lab can measure them:

* ``seed-l2-once`` (its section 5 code): before training, ``p.data /= torch.norm(p.data)`` for every
  parameter; training then proceeds as usual and the norms drift freely.
* ``seed-l2-always`` (its section 3.2, step 3): the forward and backward passes always *use*
  ``w / ||w||_2``. Implemented as a parametrisation (like weight norm): the optimizer updates a free
  tensor ``v`` and the model sees ``v / ||v||``, so every used tensor has norm 1 at every step.

The norm is per tensor, as the article writes ("the parameter vector"); ``per_row=True`` normalises each
output row instead, which is weight normalisation with its gain fixed at 1 (checked against
``torch.nn.utils.parametrizations.weight_norm`` in the tests).

One deliberate difference from the article's code: a tensor whose norm is 0 is left alone. Zero-
initialised tensors exist (every LayerNorm bias of the Transformer), and the article's code would
compute 0/0 and fill them with NaN. Neither reading changes a parameter count, a FLOP or a byte.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from labkit.config import Optimizer, Scaling
from labkit.scaling.base import ScalingMethod


class SeedL2Once(ScalingMethod):
    name = Scaling.SEED_L2_ONCE
    summary = "Seed §5: divide every parameter tensor by its L2 norm once, then train normally."
    default_lr = {Optimizer.ADAMW: 2.0**-8, Optimizer.SGD: 2.0**1}

    def prepare(self, model: nn.Module) -> None:
        with torch.no_grad():
            for p in model.parameters():
                norm = torch.norm(p)
                if norm > 0:
                    p /= norm


class UnitNorm(nn.Module):
    """Parametrisation ``v -> v / ||v||_2`` over the whole tensor, or over each row (dim 0 slices)."""

    def __init__(self, per_row: bool = False) -> None:
        super().__init__()
        self.per_row = per_row

    def forward(self, v: Tensor) -> Tensor:
        if self.per_row and v.dim() > 1:
            return v / torch.linalg.vector_norm(v, dim=tuple(range(1, v.dim())), keepdim=True)
        return v / torch.linalg.vector_norm(v)


class SeedL2Always(ScalingMethod):
    name = Scaling.SEED_L2_ALWAYS
    summary = "Seed §3.2: forward and backward always use w/||w||_2 (a parametrisation, per tensor)."
    default_lr = {Optimizer.ADAMW: 2.0**-2, Optimizer.SGD: 2.0**3}

    def __init__(self, per_row: bool = False) -> None:
        self.per_row = per_row

    def prepare(self, model: nn.Module) -> None:
        for module in list(model.modules()):
            for name, p in list(module.named_parameters(recurse=False)):
                if torch.count_nonzero(p) > 0:  # see the module docstring: zero tensors stay free
                    parametrize.register_parametrization(module, name, UnitNorm(self.per_row), unsafe=True)
