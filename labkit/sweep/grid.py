"""Grids of run configs, their stable keys, and doubling ranges (the command line's ``2**-10..2**0``
syntax is parsed by :func:`labkit.cli.parse_values`)."""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Iterable
from typing import Any

from labkit.config import ConfigError, RunConfig


def grid(base: RunConfig | None = None, **axes: Iterable[Any]) -> list[RunConfig]:
    """Every combination of the ``axes`` values applied to ``base``; the first axis varies slowest.

    ``grid(RunConfig(steps=200), scaling=["standard", "u-mup"], width=[64, 128], lr=doubling(2**-10, 1))``
    gives 2 × 2 × 11 configs. A scalar value is a one-point axis. Each config is validated as it is built,
    so a bad value fails here, before anything runs.
    """
    base = base or RunConfig()
    names = list(axes)
    values = [_as_list(axes[name]) for name in names]
    unknown = sorted(set(names) - set(base.to_dict()))
    if unknown:
        raise ConfigError(f"unknown config field(s) {unknown} in the grid; valid fields: {sorted(base.to_dict())}")
    return [base.replace(**dict(zip(names, combo, strict=True))) for combo in itertools.product(*values)]


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        return [value]
    return list(value)


def config_key(config: RunConfig) -> str:
    """A stable 16-hex-digit identity of a config: the same fields always give the same key."""
    return hashlib.sha256(config.to_json().encode()).hexdigest()[:16]


def doubling(low: float, high: float) -> list[float]:
    """``low, 2·low, 4·low, ...`` up to ``high`` inclusive: ``doubling(2**-3, 1) == [0.125, 0.25, 0.5, 1.0]``."""
    if not (low > 0 and high >= low and math.isfinite(high)):
        raise ConfigError(f"a range needs 0 < low <= high, got {low}..{high}")
    count = math.floor(math.log2(high) - math.log2(low) + 1e-9) + 1  # logs: high / low could overflow
    if count > 1024:
        raise ConfigError(f"{low}..{high} doubles {count} times: narrow the range")
    return [low * 2.0**k for k in range(count)]

