"""Per-layer scales (RMS of activations, gradients, weights): across widths at initialisation, in a run, and
through single unit-scaled ops."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from labkit.config import RunConfig
from labkit.runs import Run


def scales_across_widths(base: RunConfig, scalings: Iterable[str], widths: Iterable[int]) -> pd.DataFrame:
    """Per-layer RMS of activations, gradients and weights at initialisation (``labkit.scales.initial_scales``)
    for every scaling method and width: columns ``scaling``, ``width``, ``layer``, ``kind``, ``rms``."""
    from labkit.scales import initial_scales

    frames = []
    for scaling in scalings:
        for width in widths:
            heads = base.heads if width % base.heads == 0 else 1
            table = initial_scales(base.replace(scaling=scaling, width=width, heads=heads))
            frames.append(table.assign(scaling=scaling, width=width))
    return pd.concat(frames, ignore_index=True)[["scaling", "width", "layer", "kind", "rms"]]


def scale_spread(scales: pd.DataFrame) -> pd.DataFrame:
    """From :func:`scales_across_widths`: per scaling, kind and width, the smallest, median and largest
    per-layer RMS as powers of two (log2), so the spread across layers and its drift with width are visible."""
    df = scales.assign(log2_rms=np.log2(scales["rms"].clip(lower=1e-45)))
    out = df.groupby(["scaling", "kind", "width"])["log2_rms"].agg(["min", "median", "max"]).round(1)
    return out.rename(columns={"min": "min log2 RMS", "median": "median log2 RMS", "max": "max log2 RMS"})


#: Reference lines for scale charts: (label, value, dash).
FORMAT_LINES = (("FP8 E4M3 smallest normal 2^-6", 2.0**-6, "dot"),
                ("FP16 / FP8 E5M2 smallest normal 2^-14", 2.0**-14, "dash"),
                ("FP8 E4M3 largest 448", 448.0, "dot"))


def scales_figure(scales: pd.DataFrame, kinds: Sequence[str] = ("activation", "gradient", "weight")) -> Any:
    """Per-layer RMS vs width at initialisation: one row of panels per scaling method, one column per kind,
    one line per layer (darker: later in the network). Dotted and dashed lines mark where FP8/FP16 stop
    representing normal numbers. Flat lines near 1 are what unit scaling aims for."""
    import plotly.graph_objects as go
    from plotly.colors import sample_colorscale
    from plotly.subplots import make_subplots

    scalings = list(dict.fromkeys(scales["scaling"]))
    titles = [f"{s}: {k}s" for s in scalings for k in kinds]
    fig = make_subplots(rows=len(scalings), cols=len(kinds), shared_xaxes=True, shared_yaxes=True,
                        subplot_titles=titles, vertical_spacing=0.1, horizontal_spacing=0.04)
    layers = list(dict.fromkeys(scales["layer"]))
    colours = dict(zip(layers, sample_colorscale("Viridis", [i / max(1, len(layers) - 1) * 0.9
                                                              for i in range(len(layers))]), strict=True))
    for r, scaling in enumerate(scalings, start=1):
        for c, kind in enumerate(kinds, start=1):
            part = scales[(scales["scaling"] == scaling) & (scales["kind"] == kind)]
            for layer, rows in part.groupby("layer", sort=False):
                rows = rows.sort_values("width")
                fig.add_trace(go.Scatter(x=rows["width"], y=rows["rms"], mode="lines+markers", name=layer,
                                         legendgroup=layer, showlegend=(r == 1 and c == 1),
                                         line=dict(color=colours[layer], width=1.5), marker=dict(size=5)), r, c)
            for _, value, dash in FORMAT_LINES[:2]:
                fig.add_hline(y=value, line=dict(color="#c0392b", dash=dash, width=1), row=r, col=c)
    for label, _, dash in FORMAT_LINES[:2]:  # legend entries for the reference lines
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=label,
                                 line=dict(color="#c0392b", dash=dash, width=1)), 1, 1)
    low = math.floor(math.log10(max(scales["rms"][scales["rms"] > 0].min(), 1e-12))) - 0.3
    fig.update_xaxes(type="log", dtick=math.log10(2), tickformat="d", title_text=None)
    fig.update_xaxes(title_text="width", row=len(scalings))
    fig.update_yaxes(type="log", exponentformat="power", dtick=1, range=[min(low, -4.5), 0.8])
    fig.update_yaxes(title_text="RMS at init", col=1)
    fig.update_layout(template="plotly_white", height=330 * len(scalings) + 80,
                      title="Per-layer RMS at initialisation vs width", legend=dict(font=dict(size=9)),
                      margin=dict(t=80, l=60, r=20, b=50))
    return fig


def latest_scales(runs: Mapping[str, Run]) -> pd.DataFrame:
    """Per run and kind (activation, gradient, weight): the smallest, median and largest per-layer RMS at the
    run's latest sampled step (runs need ``scales_every > 0``), to put numbers on the scale panel."""
    rows = []
    for label, run in runs.items():
        table = run.scales_table
        if table.empty:
            continue
        last = table[table["step"] == table["step"].max()]
        for kind, part in last.groupby("kind"):
            rows.append({"run": label, "kind": kind, "step": int(last["step"].iloc[0]),
                         "min RMS": part["rms"].min(), "median RMS": part["rms"].median(),
                         "max RMS": part["rms"].max()})
    columns = ["run", "kind", "step", "min RMS", "median RMS", "max RMS"]
    return pd.DataFrame(rows, columns=columns).set_index(["run", "kind"])


def op_scale_table(width: int = 256, tokens: int = 2048, seed: int = 0) -> pd.DataFrame:
    """Empirical check of the unit-scaled op rules: feed unit-normal inputs (and N(0,1) weights for the scaled
    ops, PyTorch's default init for the standard ones) through each op, back-propagate a unit-normal gradient,
    and report the RMS of the output and of the gradients each op produces.

    Unit scaling's promise is a 1.0 in every cell of its rows, whatever the width.
    """
    import torch.nn.functional as F

    from labkit.scaling import ops as U

    gen = torch.Generator().manual_seed(seed)

    def normal(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).requires_grad_()

    rows = []
    vocab = 70
    with torch.random.fork_rng():  # PyTorch's default init draws from the global generator: seed it, then restore
        torch.manual_seed(seed)
        std_linear, std_emb = nn.Linear(width, 4 * width), nn.Embedding(vocab, width)
    cases: list[tuple[str, str, Callable[[], tuple[torch.Tensor, dict[str, torch.Tensor]]]]] = []
    x1, w1 = normal(tokens, width), normal(4 * width, width)
    cases.append(("linear (d → 4d)", "unit", lambda: (U.linear(x1, w1), {"x": x1, "w": w1})))
    x2 = normal(tokens, width)
    cases.append(("linear (d → 4d)", "standard", lambda: (std_linear(x2), {"x": x2, "w": std_linear.weight})))
    x3 = normal(tokens, width)
    cases.append(("gelu", "unit", lambda: (U.gelu(x3), {"x": x3})))
    x4 = normal(tokens, width)
    cases.append(("gelu", "standard", lambda: (F.gelu(x4), {"x": x4})))
    ids = torch.randint(0, vocab, (tokens,), generator=gen)
    t1 = normal(vocab, width)
    cases.append(("embedding", "unit", lambda: (U.embedding(ids, t1), {"table": t1})))
    cases.append(("embedding", "standard", lambda: (std_emb(ids), {"table": std_emb.weight})))
    for op, scaling, fn in cases:
        out, inputs = fn()
        grad = torch.randn(out.shape, generator=gen)
        out.backward(grad)
        row = {"op": op, "scaling": scaling, "output RMS": float(out.detach().pow(2).mean().sqrt())}
        for key, tensor in inputs.items():
            row[f"grad {key} RMS"] = float(tensor.grad.pow(2).mean().sqrt())
        rows.append(row)
    return pd.DataFrame(rows).set_index(["op", "scaling"])
