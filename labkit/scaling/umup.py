"""``u-mup``: u-μP (Blake et al. 2024) — unit scaling plus μP's learning-rate rules.

The forward and backward passes are those of :mod:`labkit.scaling.unit`, except the residual weights,
which follow u-μP's rule (its Appendix G): every attention branch and every MLP branch contributes the
same share of the residual stream, and all of them together as much as the embedding; and the readout,
which is scaled by 1/fan_in (μP's rule) rather than fan_in^-1/2.

What u-μP adds is in the optimizer's parameter groups. Each parameter's learning-rate factor comes
from its tags (:mod:`labkit.models.roles`: role and residual depth, set where the model builds it),
with the rules of Graphcore's ``unit_scaling.optim`` (the tests check every factor against it):

* Adam(W) (``lr_scale_func_adam``): a hidden weight × fan_in^-1/2 (a unit-scale weight of fan-in n needs
  updates of size 1/√n to change its output by O(1)); an embedding table × fan_out^-1/2, its width d
  (u-μP §4.4: an embedding is a weight whose fan-in is d); readout, biases and norm gains × 1; every
  parameter inside a residual stack of L blocks also × L^-1/2.
* SGD (``lr_scale_func_sgd``): depends on the readout's constraint. labkit's readout is unconstrained
  (as Graphcore's ``LinearReadout``), so gradients are unit-scaled and the rules are Adam's. With a
  readout constrained ``to_output_scale``: weights and embeddings × fan_in^1/2, biases and norms × their
  length, readout × 1, and the same depth factor.

With these rules the best base learning rate should stay put as the model widens: the lab's
learning-rate-transfer sweep measures whether it does. (Not carried over: Graphcore's optimizers also make
weight decay independent of each parameter's learning rate; labkit's ``weight_decay`` is 0 by default and is
applied as AdamW/SGD apply it.)
"""

from __future__ import annotations

from typing import Any

from torch import nn

from labkit.config import Optimizer, Scaling
from labkit.models.layers import Ops
from labkit.models.roles import Role, residual_depth_of, role_of
from labkit.scaling import ops as U
from labkit.scaling.unit import Unit, unit_ops


def residual_tau(index: int, branches: int) -> float:
    """u-μP's τ for residual branch ``index`` of ``branches`` (attention even, MLP odd), with equal
    contributions of embedding, attention and MLP layers (``residual_mult = residual_attn_ratio = 1``)."""
    n_attn, n_mlp = (index + 1) // 2, index // 2
    return 1.0 / (branches / 2 + n_attn + n_mlp) ** 0.5


def _fan_in(param: nn.Parameter) -> int:
    """Fan-in as Graphcore's optimizer counts it: length of a vector, second dim of a matrix (for an
    embedding table that is its width), product of the last two dims of a 3-d tensor."""
    shape = param.shape
    if len(shape) == 1:
        return shape[0]
    if len(shape) == 2:
        return shape[1]
    if len(shape) == 3:
        return shape[1] * shape[2]
    raise ValueError(f"no fan-in rule for a {len(shape)}-d parameter of shape {tuple(shape)}")


def lr_scale(param: nn.Parameter, optimizer: Optimizer,
             readout_constraint: U.Constraint = U.Constraint.NONE) -> tuple[float, str]:
    """u-μP's learning-rate factor for a tagged parameter, and the rule applied (in words).

    ``readout_constraint`` is the constraint of the model's readout op; it only matters for SGD.
    """
    role, depth = role_of(param), residual_depth_of(param)
    if role is None:
        raise ValueError(f"parameter of shape {tuple(param.shape)} has no role tag: build the model from "
                         "labkit.models.layers, or tag it with labkit.models.roles.tag(param, Role.WEIGHT / ...)")
    adam_like = optimizer is Optimizer.ADAMW or readout_constraint is U.Constraint.NONE
    if not adam_like and readout_constraint is not U.Constraint.TO_OUTPUT_SCALE:
        raise ValueError(f"u-μP has no SGD rule for a readout constrained {readout_constraint.value!r}; "
                         "use Constraint.NONE or TO_OUTPUT_SCALE")
    fan_in = _fan_in(param)
    if role is Role.READOUT:
        scale, rule = 1.0, "readout: × 1"
    elif role in (Role.BIAS, Role.NORM):
        scale, rule = (1.0, f"{role}: × 1") if adam_like else (float(fan_in), f"{role}: × length ({fan_in})")
    else:
        power = -0.5 if adam_like else 0.5
        what = "embedding: × fan_out" if role is Role.EMBEDDING else "weight: × fan_in"
        scale, rule = fan_in**power, f"{what}^{'-1/2' if adam_like else '1/2'} ({fan_in})"
    if depth is not None:
        scale, rule = scale * depth**-0.5, f"{rule}, × depth^-1/2 ({depth})"
    return scale, rule


class UMuP(Unit):
    name = Scaling.UMUP
    summary = "u-μP (2024): unit scaling + μP learning-rate rules, so the best LR holds across widths."
    default_lr = {Optimizer.ADAMW: 2.0**-2, Optimizer.SGD: 2.0**-6}

    def ops(self) -> Ops:
        return unit_ops(residual_tau=residual_tau, readout=U.linear_readout)

    #: The readout op's constraint (``ops.linear_readout``'s default); u-μP's SGD rules depend on it.
    readout_constraint = U.Constraint.NONE

    def param_groups(self, model: nn.Module, lr: float, optimizer: Optimizer) -> list[dict[str, Any]]:
        """One group per parameter, each with ``lr_scale`` (the u-μP factor from its tags, :func:`lr_scale`),
        the ``rule`` applied, in words, and the ``group`` it shares with the parameters under the same rule
        (``make_optimizer`` gives the optimizer one group per rule: a few groups train faster than one per
        parameter, and their ``eff_lr``/``rel_update`` curves are the ones worth reading)."""
        groups = []
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            scale, rule = lr_scale(p, optimizer, self.readout_constraint)
            groups.append({"params": [p], "lr": lr * scale, "lr_scale": scale, "name": name, "rule": rule,
                           "group": rule_group(p)})
        return groups


def rule_group(param: nn.Parameter) -> str:
    """A short label for the parameters that share ``param``'s u-μP rule: its role, the fan-in where the
    rule depends on it, and "(blocks)" inside the residual stack, e.g. ``weight 128 (blocks)``."""
    role = role_of(param)
    label = str(role)
    if role in (Role.WEIGHT, Role.EMBEDDING):
        label += f" {_fan_in(param)}"
    return label + (" (blocks)" if residual_depth_of(param) is not None else "")
