"""``standard``: PyTorch's default initialisation and parametrisation, the control of every experiment."""

from __future__ import annotations

from labkit.scaling.base import ScalingMethod


class Standard(ScalingMethod):
    """Nothing changed: ``nn.Linear``/``nn.Embedding``/``nn.LSTM`` initialisation, plain ops, one LR."""
