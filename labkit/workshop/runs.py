"""Several runs side by side: a table of their results, their loss curves, and pairs compared."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from labkit.palette import run_colour
from labkit.runs import Run
from labkit.sweep.analysis import round_finite


def run_table(runs: Mapping[str, Run]) -> pd.DataFrame:
    """One row per run: status, peak learning rate, final training and validation loss."""
    rows = []
    for label, run in runs.items():
        s = run.summary()
        rows.append({"run": label, "status": s["status"], "peak lr": run.info.get("peak_lr"),
                     "final train loss": round_finite(s["final_train_loss"], 3),
                     "final val loss": round_finite(s["final_val_loss"], 3)})
    return pd.DataFrame(rows).set_index("run")


def loss_curves_figure(runs: Mapping[str, Run], title: str = "", smooth: int = 10,
                       log_y: bool = False) -> Any:
    """Training loss (thin, smoothed over ``smooth`` records) and validation loss (markers) of several runs."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for i, (label, run) in enumerate(runs.items()):
        df, colour = run.metrics, run_colour(i)
        if df.empty:
            continue
        train = df["train_loss"].rolling(smooth, min_periods=1).mean()
        fig.add_trace(go.Scatter(x=df["step"], y=train, mode="lines", name=f"{label}", legendgroup=label,
                                 line=dict(color=colour, width=1.5)))
        if "val_loss" in df and df["val_loss"].notna().any():
            val = df[df["val_loss"].notna()]
            fig.add_trace(go.Scatter(x=val["step"], y=val["val_loss"], mode="markers", legendgroup=label,
                                     name=f"{label} (validation)", showlegend=False,
                                     marker=dict(color=colour, size=8, symbol="diamond")))
    fig.update_layout(title=title or "Loss (lines: training, smoothed; diamonds: validation)",
                      xaxis_title="step", yaxis_title="loss (nats/character)", template="plotly_white",
                      height=400, margin=dict(t=60, l=60, r=20, b=50))
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def compare_losses(runs: Mapping[str, Run], pairs: Sequence[tuple[str, str]], tolerance: float = 0.03,
                   metric: str = "final_val_loss") -> pd.DataFrame:
    """For each pair (run, reference): both losses, the relative change, and whether the run matches its
    reference (within ``tolerance``, relative). A run that diverged or failed does not match."""
    rows = []
    for label, reference in pairs:
        a, b = runs[label].summary(), runs[reference].summary()
        la, lb = a.get(metric), b.get(metric)
        ok = a["status"] == "finished" and la is not None and lb is not None and math.isfinite(la)
        change = la / lb - 1 if ok else math.nan
        rows.append({"run": label, "reference": reference, "loss": round_finite(la, 3) if ok else a["status"],
                     "reference loss": round_finite(lb, 3), "change": f"{change:+.1%}" if ok else "—",
                     "matches": bool(ok and abs(change) <= tolerance)})
    return pd.DataFrame(rows)
