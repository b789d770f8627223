"""Reading a sweep: the best learning rate per width and method, the LR-transfer figure, a table for slides.

Every function takes a sweep table (``Sweep.table()`` or :func:`labkit.sweep.load_sweep`) and looks only at
rows whose status is ``finished``; diverged runs are counted and drawn as crosses, pending and failed ones
are counted. ``lr`` is the config's learning rate, or the method's default (``peak_lr``) when it was None.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from labkit.palette import run_colour

METRIC = "final_val_loss"
GROUP = ("scaling", "width")


def _with_lr(table: pd.DataFrame) -> pd.DataFrame:
    df = table.reset_index(drop=True)  # tables of several sweeps, concatenated, repeat row labels
    lr = pd.to_numeric(df["lr"], errors="coerce")
    if "peak_lr" in df:
        lr = lr.fillna(pd.to_numeric(df["peak_lr"], errors="coerce"))
    df["lr"] = lr
    df["log2_lr"] = np.log2(lr)
    return df


def _finished(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    values = pd.to_numeric(df[metric], errors="coerce")
    return df[(df["status"] == "finished") & np.isfinite(values)].assign(**{metric: values})


def best_lr(table: pd.DataFrame, metric: str = METRIC, by: Sequence[str] = GROUP) -> pd.DataFrame:
    """One row per group (default: per scaling method and width) with the learning rate of lowest ``metric``.

    Columns: the ``by`` columns, ``best_lr``, ``log2_lr``, ``metric``, ``at_edge`` (the best LR is the
    smallest or largest tried: the optimum may lie outside the grid), and counts ``runs``, ``finished``,
    ``diverged``, ``failed``, ``pending``. Groups with no finished run have NaN for the best LR.
    """
    by = list(by)
    df = _with_lr(table)
    counts = df.groupby(by)["status"].value_counts().unstack(fill_value=0)
    counts = counts.reindex(columns=["finished", "diverged", "failed", "pending"], fill_value=0)
    counts.insert(0, "runs", df.groupby(by).size())
    lr_range = df.groupby(by)["lr"].agg(["min", "max"])
    ok = _finished(df, metric)
    best = ok.loc[ok.groupby(by)[metric].idxmin(), [*by, "lr", "log2_lr", metric]].set_index(by)
    best = best.rename(columns={"lr": "best_lr"}).reindex(counts.index)
    best["at_edge"] = (best["best_lr"] == lr_range["min"]) | (best["best_lr"] == lr_range["max"])
    return best.join(counts).reset_index()


def lr_shift(table: pd.DataFrame, metric: str = METRIC, method: str = "scaling", across: str = "width") -> pd.DataFrame:
    """How far the best LR moves across ``across`` (widths) for each ``method``, in octaves (powers of two).

    ``shift`` = largest minus smallest log2 best LR; 0 means the best LR transferred exactly.
    """
    best = best_lr(table, metric, by=(method, across)).dropna(subset=["log2_lr"])
    grouped = best.groupby(method)["log2_lr"]
    out = pd.DataFrame({"widths": grouped.size(), "min_log2_lr": grouped.min(), "max_log2_lr": grouped.max()})
    out["shift"] = out["max_log2_lr"] - out["min_log2_lr"]
    return out.reset_index()


def lr_label(lr: float) -> str:
    """A learning rate as sweeps print it: ``2^-7`` on the power-of-two grid, else ``0.003``; ``—`` if missing."""
    if not (isinstance(lr, float | int) and np.isfinite(lr) and lr > 0):
        return "—"
    exponent = np.log2(lr)
    return f"2^{exponent:g}" if float(exponent).is_integer() else f"{lr:.3g}"


def paper_table(table: pd.DataFrame, metric: str = METRIC, rows: str = "scaling", columns: str = "width",
                digits: int = 3) -> pd.DataFrame:
    """Best LR and its ``metric`` per (``rows``, ``columns``) as strings such as ``2^-7 (1.832)``.

    A ``†`` marks a best LR at the edge of the grid; ``diverged`` / ``—`` mark groups with no finished run.
    Ready for ``.to_markdown()`` or ``.to_latex()``.
    """
    best = best_lr(table, metric, by=(rows, columns))

    def cell(row: pd.Series) -> str:
        if pd.isna(row["best_lr"]):
            return "diverged" if row["diverged"] else "—"
        return f"{lr_label(row['best_lr'])} ({row[metric]:.{digits}f})" + (" †" if row["at_edge"] else "")

    best["cell"] = best.apply(cell, axis=1)
    pivot = best.pivot(index=rows, columns=columns, values="cell")
    pivot.columns = [f"{columns}={c}" for c in pivot.columns]
    return pivot.rename_axis(index=rows)


def lr_transfer_figure(table: pd.DataFrame, metric: str = METRIC, facet: str = "scaling", color: str = "width",
                       title: str | None = None) -> Any:
    """``metric`` against log2 learning rate: one panel per ``facet`` value, one line per ``color`` value.

    Panels and lines are laid out from every row of the table, pending ones included, so the figure keeps its
    shape while a sweep fills it in. Stars mark each line's best LR, crosses along the top diverged runs.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    df = _with_lr(table)
    facets = list(dict.fromkeys(df[facet])) or [""]
    lines = sorted(dict.fromkeys(df[color]))
    palette = {value: run_colour(i) for i, value in enumerate(lines)}
    figure = make_subplots(rows=1, cols=len(facets), shared_yaxes=True, subplot_titles=[str(f) for f in facets],
                           horizontal_spacing=0.03)
    ok = _finished(df, metric)
    ceiling = ok[metric].max() if len(ok) else None
    shown: set[Any] = set()
    for col, facet_value in enumerate(facets, start=1):
        for value in lines:
            here = df[(df[facet] == facet_value) & (df[color] == value)]
            done = ok[(ok[facet] == facet_value) & (ok[color] == value)].sort_values("lr")
            name = f"{color}={value}"
            style = dict(legendgroup=name, marker_color=palette[value], line_color=palette[value])
            if len(done):
                figure.add_trace(go.Scatter(x=done["log2_lr"], y=done[metric], mode="lines+markers", name=name,
                                            showlegend=value not in shown, **style,
                                            hovertemplate=f"{name}<br>lr=2^%{{x}}<br>{metric}=%{{y:.4f}}<extra></extra>"),
                                 row=1, col=col)
                shown.add(value)
                best = done.loc[[done[metric].idxmin()]]
                figure.add_trace(go.Scatter(x=best["log2_lr"], y=best[metric], mode="markers", showlegend=False,
                                            marker=dict(symbol="star", size=14, color=palette[value]),
                                            legendgroup=name, hoverinfo="skip"), row=1, col=col)
            diverged = here[here["status"] == "diverged"]
            if len(diverged) and ceiling is not None:
                figure.add_trace(go.Scatter(x=diverged["log2_lr"], y=[ceiling] * len(diverged), mode="markers",
                                            showlegend=False, legendgroup=name,
                                            marker=dict(symbol="x", size=9, color=palette[value]),
                                            hovertemplate=f"{name}<br>lr=2^%{{x}}: diverged<extra></extra>"),
                                 row=1, col=col)
    figure.update_xaxes(title_text="log₂ learning rate", dtick=1)
    figure.update_yaxes(title_text=metric.replace("_", " "), col=1)
    finished, total = len(ok), len(df)
    figure.update_layout(title=title or f"{metric.replace('_', ' ')} vs learning rate ({finished}/{total} runs)",
                         template="plotly_white", height=380, margin=dict(t=70, l=60, r=20, b=50))
    return figure


def round_finite(value: Any, digits: int) -> Any:
    """A finite float rounded to ``digits``; anything else (NaN, inf, None, text) as it is: for tables."""
    return round(value, digits) if isinstance(value, float) and math.isfinite(value) else value


def best_loss(table: pd.DataFrame, by: str = "scaling", metric: str = "final_val_loss") -> pd.Series:
    """Lowest ``metric`` of the finished runs of a sweep table for each value of ``by`` (NaN if none finished)."""
    values = pd.to_numeric(table[metric], errors="coerce").where(table["status"] == "finished")
    return values.groupby(table[by], sort=False).min()


def sweep_summary(table: pd.DataFrame, by: Sequence[str] = ("scaling",),
                  metric: str = "final_val_loss") -> pd.DataFrame:
    """Best learning rate (as a power of two) and its loss for each group, with the number of runs that
    diverged; ``at edge`` flags a best LR at the end of the grid (the true optimum may lie outside)."""
    best = best_lr(table, metric=metric, by=list(by))
    out = best[[*by]].copy()
    out["best lr"] = [f"2^{v:.3g}" if np.isfinite(v) else "—" for v in best["log2_lr"]]
    out[f"best {metric.replace('_', ' ')}"] = best[metric].round(3)
    out["at edge"] = best["at_edge"].astype("boolean").fillna(False).astype(bool)
    out["runs"] = best["runs"]
    out["diverged"] = best["diverged"]
    return out.set_index(list(by))


def transfer_table(table: pd.DataFrame, small: int, large: int, metric: str = "final_val_loss",
                   by: str = "scaling", across: str = "width") -> pd.DataFrame:
    """What tuning on a small model buys: for each method, the best LR found at width ``small``, the loss at
    width ``large`` with that LR, the best loss at ``large`` over the whole grid, and the gap between them.

    A gap near zero means the LR tuned on the small model was (close to) right for the large one."""
    best = best_lr(table, metric=metric, by=[by, across]).set_index([by, across])
    values = pd.to_numeric(table[metric], errors="coerce").where(table["status"] == "finished")
    lrs = pd.to_numeric(table["lr"], errors="coerce")
    rows = []
    for method in dict.fromkeys(table[by]):
        tuned = best.loc[(method, small), "best_lr"] if (method, small) in best.index else math.nan
        here = (table[by] == method) & (table[across] == large) & np.isclose(lrs, tuned, rtol=1e-6)
        loss = float(values[here].iloc[0]) if here.any() else math.nan
        best_large = best.loc[(method, large), metric] if (method, large) in best.index else math.nan
        rows.append({by: method, f"best lr at {across} {small}": lr_label(tuned),
                     f"best lr at {across} {large}": lr_label(best.loc[(method, large), "best_lr"]
                                                              if (method, large) in best.index else math.nan),
                     f"loss at {large} with the {small} lr": round_finite(loss, 3),
                     f"best loss at {large}": round_finite(float(best_large), 3),
                     "gap": f"{loss / best_large - 1:+.1%}" if np.isfinite(loss) and np.isfinite(best_large)
                     else "—"})
    return pd.DataFrame(rows).set_index(by)


def best_lr_figure(table: pd.DataFrame, metric: str = "final_val_loss", by: str = "scaling",
                   across: str = "width") -> Any:
    """The best learning rate (log2) against width, one line per method: flat means the LR transferred.
    Hollow markers flag a best LR at the edge of the grid (the optimum may lie beyond it)."""
    import plotly.graph_objects as go

    best = best_lr(table, metric=metric, by=[by, across]).dropna(subset=["log2_lr"])
    fig = go.Figure()
    for i, (method, part) in enumerate(best.groupby(by, sort=False)):
        part = part.sort_values(across)
        symbols = ["circle-open" if edge else "circle" for edge in part["at_edge"]]
        fig.add_trace(go.Scatter(x=part[across], y=part["log2_lr"], mode="lines+markers", name=str(method),
                                 line=dict(color=run_colour(i), width=2),
                                 marker=dict(size=11, symbol=symbols, line=dict(width=2, color=run_colour(i))),
                                 customdata=part[metric],
                                 hovertemplate="width %{x}<br>best lr 2^%{y}<br>loss %{customdata:.3f}<extra></extra>"))
    fig.update_xaxes(type="log", dtick=math.log10(2), tickformat="d", title_text=across)
    fig.update_yaxes(title_text="best learning rate (log₂)", dtick=1)
    fig.update_layout(title="Best learning rate vs width (flat = transfers; hollow = at the edge of the grid)",
                      template="plotly_white", height=400, margin=dict(t=60, l=60, r=20, b=50))
    return fig
