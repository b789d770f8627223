"""Scaling methods, one module each, and the registry that maps a ``Scaling`` choice to its method.

=================  ===========================================================================
``standard``       PyTorch defaults (:mod:`labkit.scaling.standard`)
``seed-l2-once``   the seed article's §5 code (:mod:`labkit.scaling.seed_l2`)
``seed-l2-always`` the seed article's §3.2 step 3 (:mod:`labkit.scaling.seed_l2`)
``unit``           Unit Scaling, Blake, Orr & Luschi 2023 (:mod:`labkit.scaling.unit`)
``u-mup``          u-μP, Blake et al. 2024 (:mod:`labkit.scaling.umup`)
=================  ===========================================================================
"""

from __future__ import annotations

from labkit.config import Scaling
from labkit.scaling.base import ScalingMethod
from labkit.scaling.seed_l2 import SeedL2Always, SeedL2Once
from labkit.scaling.standard import Standard
from labkit.scaling.umup import UMuP
from labkit.scaling.unit import Unit

_METHODS: dict[Scaling, type[ScalingMethod]] = {
    Scaling.STANDARD: Standard,
    Scaling.SEED_L2_ONCE: SeedL2Once,
    Scaling.SEED_L2_ALWAYS: SeedL2Always,
    Scaling.UNIT: Unit,
    Scaling.UMUP: UMuP,
}


def get_method(scaling: Scaling | str) -> ScalingMethod:
    """The method object for a scaling choice (accepts the enum or its name)."""
    choice = Scaling(scaling)
    if choice not in _METHODS:
        raise NotImplementedError(f"scaling {choice.value!r} is not implemented yet; available: "
                                  f"{', '.join(m.value for m in _METHODS)}")
    return _METHODS[choice]()


__all__ = ["ScalingMethod", "get_method"]
