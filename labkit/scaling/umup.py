"""``u-mup``: u-μP (Blake et al. 2024) — unit scaling plus μP's learning-rate rules.

The forward and backward passes are those of :mod:`labkit.scaling.unit`, except the residual weights,
which follow u-μP's rule (its Appendix G): every attention branch and every MLP branch contributes the
same share of the residual stream, and all of them together as much as the embedding; and the readout,
which is scaled by 1/fan_in (μP's rule) rather than fan_in^-1/2.

What u-μP adds is in the optimizer's parameter groups: with Adam(W), each *hidden* weight's learning
rate is multiplied by fan_in^-1/2 (a unit-scale weight of fan-in n needs updates of size 1/√n to change
its output by O(1)), and parameters inside the residual stack by depth^-1/2. Embeddings, the readout,
biases and norm gains keep the base rate. With these rules the best base learning rate stays put as the
model widens (≈ 2^0 with Adam): the lab's learning-rate-transfer sweep measures whether it does.

The rules are derived for Adam. With SGD, labkit applies no per-parameter factor and says so in the
group's ``rule`` field.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from labkit.config import Optimizer, Scaling
from labkit.models.layers import Linear, Ops
from labkit.scaling import ops as U
from labkit.scaling.unit import Unit, unit_ops


def residual_tau(index: int, branches: int) -> float:
    """u-μP's τ for residual branch ``index`` of ``branches`` (attention even, MLP odd), with equal
    contributions of embedding, attention and MLP layers (``residual_mult = residual_attn_ratio = 1``)."""
    n_attn, n_mlp = (index + 1) // 2, index // 2
    return 1.0 / (branches / 2 + n_attn + n_mlp) ** 0.5


def _readouts(model: nn.Module) -> set[int]:
    """The final projection to logits: the last Linear registered (``head`` / ``fc``)."""
    linears = [m for m in model.modules() if isinstance(m, Linear)]
    return {id(linears[-1].weight)} if linears else set()


class UMuP(Unit):
    name = Scaling.UMUP
    summary = "u-μP (2024): unit scaling + μP learning-rate rules, so the best LR holds across widths."
    default_lr = {Optimizer.ADAMW: 2.0**-1, Optimizer.SGD: 2.0**-9}

    def ops(self) -> Ops:
        return unit_ops(residual_tau=residual_tau, readout=U.linear_readout)

    def param_groups(self, model: nn.Module, lr: float, optimizer: Optimizer) -> list[dict[str, Any]]:
        """One group per parameter, each with ``lr_scale`` (the u-μP factor) and the ``rule`` applied."""
        depth = len(getattr(model, "blocks", ())) or 1
        readout = _readouts(model)
        groups = []
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            scale, rule = 1.0, "base rate"
            hidden = p.dim() == 2 and id(p) not in readout and not name.endswith("embedding.weight")
            if optimizer is not Optimizer.ADAMW:
                rule = "base rate (u-μP's rules are for Adam)"
            elif hidden:
                scale, rule = p.shape[1] ** -0.5, "hidden weight: × fan_in^-1/2"
            if optimizer is Optimizer.ADAMW and name.startswith("blocks."):
                scale, rule = scale * depth**-0.5, rule + ", × depth^-1/2"
            groups.append({"params": [p], "lr": lr * scale, "lr_scale": scale, "name": name, "rule": rule})
        return groups

