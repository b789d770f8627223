"""What a scaling method is: ops for the forward pass, a way to prepare parameters, optimizer groups."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from labkit.config import Optimizer, Scaling
from labkit.models.layers import STANDARD_OPS, Ops


class ScalingMethod:
    """Base class: PyTorch's defaults. Subclasses override what their method changes.

    A method has three jobs, used in this order by ``labkit.train``:
    ``ops()`` picks the arithmetic the model is built with; ``prepare(model)`` changes the freshly
    initialised parameters in place (re-initialise, rescale, parametrise); ``param_groups(model, lr, optimizer)``
    gives the optimizer its parameter groups (where per-parameter learning-rate rules live).
    """

    name: Scaling = Scaling.STANDARD
    summary: str = "PyTorch's default initialisation and parametrisation (the control)."
    #: Peak learning rate per optimizer at the default model size: the best of a sweep (docs/RESULTS.md).
    default_lr: Mapping[Optimizer, float] = {Optimizer.ADAMW: 2.0**-7, Optimizer.SGD: 2.0**0}

    def ops(self) -> Ops:
        return STANDARD_OPS

    def prepare(self, model: nn.Module) -> None:
        """Change the model's freshly initialised parameters in place (nothing, by default)."""

    def param_groups(self, model: nn.Module, lr: float, optimizer: Optimizer) -> list[dict[str, Any]]:
        """One group with every trainable parameter at the same learning rate."""
        return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": lr, "lr_scale": 1.0}]
