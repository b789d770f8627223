"""The one colour palette of the lab: the live panel, exported figures and the notebooks' figures share it."""

from __future__ import annotations

#: Tableau 10 (plotly's ``qualitative.T10``): distinct, colour-blind friendly for the first few.
PALETTE: tuple[str, ...] = ("#4C78A8", "#F58518", "#E45756", "#72B7B2", "#54A24B", "#EECA3B", "#B279A2", "#FF9DA6",
                            "#9D755D", "#BAB0AC")


def run_colour(index: int) -> str:
    """The colour of the ``index``-th run or series (0-based), reused cyclically after ten."""
    return PALETTE[index % len(PALETTE)]
