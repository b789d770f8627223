"""Grids of run configs, their stable keys, and the ``2**-10..2**0`` range syntax of the command line."""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Callable, Iterable
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
    count = math.floor(math.log2(high / low) + 1e-9) + 1
    return [low * 2.0**k for k in range(count)]


def parse_values(text: str, parse_one: Callable[[str], Any]) -> list[Any]:
    """Comma-separated values, each a single value or a ``low..high`` doubling range.

    ``parse_values("2**-3..2**-1,1", parse_number) == [0.125, 0.25, 0.5, 1.0]``; integer fields give integers
    (``"32..128"`` -> ``[32, 64, 128]``).
    """
    values: list[Any] = []
    for piece in (p.strip() for p in text.split(",")):
        if not piece:
            continue
        if ".." not in piece:
            values.append(parse_one(piece))
            continue
        low_text, _, high_text = piece.partition("..")
        low, high = parse_one(low_text), parse_one(high_text)
        if not all(isinstance(v, int | float) for v in (low, high)):
            raise ConfigError(f"{piece!r}: a range low..high needs two numbers")
        values.extend(round(p) if isinstance(low, int) else p for p in doubling(low, high))
    if not values:
        raise ConfigError(f"no values in {text!r}")
    return values
