"""What each parameter is for: its role and residual depth, tagged where the model builds it.

Learning-rate rules such as u-μP's give each parameter a factor that depends on what the parameter *is*
(a hidden weight, an embedding table, the readout, a bias, a norm gain) and on whether it sits inside a
residual stack of depth L. The layers in :mod:`labkit.models.layers` tag their parameters when they are
built, and each model tags its residual stack; the rules (``labkit.scaling.umup``) read only the tags,
never names or registration order. To use the rules on a model labkit did not write, tag its
parameters with :func:`tag` and :func:`tag_residual_depth`.

This mirrors Graphcore's ``unit_scaling.Parameter`` (``mup_type`` and ``mup_scaling_depth``), with one
more role: labkit names embedding tables ``EMBEDDING``, where Graphcore tags them ``"weight"`` (the
rules treat the two alike: an embedding's fan-in is its width). Tags are plain attributes of the
``nn.Parameter``: they survive ``model.to(...)`` and ``torch.save``, not ``copy.deepcopy`` (PyTorch's
``Parameter.__deepcopy__`` copies the data only); re-tag a deep copy.
"""

from __future__ import annotations

from enum import StrEnum

from torch import nn


class Role(StrEnum):
    """A parameter's role, as learning-rate rules see it."""

    WEIGHT = "weight"  #: a hidden matmul weight (fan-in = its second dimension)
    EMBEDDING = "embedding"  #: an embedding table (vocab or positions × width)
    READOUT = "readout"  #: the final projection to logits (Graphcore's ``"output"``)
    BIAS = "bias"
    NORM = "norm"  #: a normalisation gain


def tag(param: nn.Parameter, role: Role) -> nn.Parameter:
    """Record ``role`` on ``param`` (residual depth: none until :func:`tag_residual_depth`); returns it."""
    param.role = Role(role)
    param.residual_depth = None
    return param


def tag_residual_depth(module: nn.Module, depth: int) -> None:
    """Mark every parameter of ``module`` as inside a residual stack of ``depth`` layers (blocks)."""
    if depth < 1:
        raise ValueError(f"residual depth must be >= 1, got {depth}")
    for param in module.parameters():
        param.residual_depth = depth


def role_of(param: nn.Parameter) -> Role | None:
    """The parameter's role, or None if nobody tagged it."""
    return getattr(param, "role", None)


def residual_depth_of(param: nn.Parameter) -> int | None:
    """Depth of the residual stack the parameter is in, or None (not in one, or untagged)."""
    return getattr(param, "residual_depth", None)
