"""Number formats: their ranges, rounding, gradient histograms against them, and what low-precision runs lost."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from labkit.build import build_for_run
from labkit.config import NumberFormat, RunConfig
from labkit.palette import run_colour
from labkit.runs import Run
from labkit.sweep.analysis import round_finite
from labkit.workshop.models import corpus_for


def format_table(formats: Iterable[NumberFormat | str] = tuple(NumberFormat)) -> pd.DataFrame:
    """Bits, range and precision of each number format (from ``labkit.formats.spec``)."""
    from labkit.formats import spec

    rows = []
    for fmt in formats:
        s = spec(fmt)
        rows.append({"format": s.name.value, "bits": s.bits, "exponent bits": s.exponent_bits,
                     "mantissa bits": s.mantissa_bits, "bytes/value": s.bytes_per_value,
                     "largest": f"{s.max_normal:.4g}", "smallest normal": f"2^{math.log2(s.min_normal):g}",
                     "smallest subnormal": f"2^{math.log2(s.min_subnormal):g}",
                     "relative step": f"2^-{s.mantissa_bits}",
                     "beyond largest": "saturates" if s.saturates else "inf"})
    return pd.DataFrame(rows).set_index("format")


def rounding_table(values: Sequence[float],
                   formats: Iterable[NumberFormat | str] = tuple(NumberFormat)) -> pd.DataFrame:
    """Each value rounded to nearest in each format (``labkit.formats.quantise``), as text with 4 significant
    digits: small values flush to 0, large ones become inf (or 448 for the saturating FP8 E4M3)."""
    from labkit.formats import quantise

    x = torch.tensor(list(values), dtype=torch.float32)
    columns = {NumberFormat(fmt).value: [f"{v:.4g}" for v in quantise(x, fmt).tolist()] for fmt in formats}
    return pd.DataFrame(columns, index=pd.Index([f"{v:g}" for v in values], name="value"))


def gradient_histogram(config: RunConfig) -> pd.DataFrame:
    """log2 histogram of every parameter gradient of ``config``'s model after one forward and backward pass
    at initialisation (``labkit.scales.log2_histogram``)."""
    from labkit.scales import log2_histogram

    corpus = corpus_for(config)
    model, ops, _ = build_for_run(config, corpus.tokenizer.vocab_size)
    x, y = corpus.get_batch("train", config.batch_size, config.seq_len, torch.Generator().manual_seed(config.seed))
    ops.cross_entropy(model(x).flatten(0, 1), y.flatten()).backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return log2_histogram(grads)


def histogram_summary(histograms: Mapping[str, pd.DataFrame],
                      formats: Iterable[str] = ("fp16", "bf16", "fp8-e4m3", "fp8-e5m2")) -> pd.DataFrame:
    """For each histogram (label → :func:`labkit.scales.log2_histogram` table): the median log2|g|, and the
    share of values below each format's smallest subnormal (they round to zero) and above its largest."""
    from labkit.formats import spec

    rows = []
    for label, hist in histograms.items():
        finite = hist[np.isfinite(hist["log2_abs"])]
        counts, exps = finite["count"].to_numpy(), finite["log2_abs"].to_numpy()
        total = counts.sum()
        cumulative = np.cumsum(counts)
        median = exps[np.searchsorted(cumulative, total / 2)] if total else math.nan
        row = {"gradients of": label, "values": int(total), "median log2|g|": median}
        for fmt in formats:
            s = spec(fmt)
            # bins are [2^e, 2^(e+1)): a bin lies wholly below half the smallest subnormal when 2^(e+1) <= sub/2
            below = counts[exps + 1 <= math.log2(s.min_subnormal) - 1].sum()
            above = counts[exps >= math.log2(s.max_normal)].sum()
            row[f"{fmt} → 0"] = f"{below / total:.1%}" if total else "—"
            row[f"{fmt} overflow"] = f"{above / total:.1%}" if total else "—"
        rows.append(row)
    return pd.DataFrame(rows).set_index("gradients of")


def histogram_figure(histograms: Mapping[str, pd.DataFrame],
                     formats: Iterable[str] = ("fp16", "fp8-e4m3", "fp8-e5m2")) -> Any:
    """Histograms of log2|value| (one colour per label) with each format's representable range shaded."""
    import plotly.graph_objects as go

    from labkit.formats import spec

    fig = go.Figure()
    for i, (label, hist) in enumerate(histograms.items()):
        finite = hist[np.isfinite(hist["log2_abs"])]
        share = finite["count"] / max(1, finite["count"].sum())
        fig.add_trace(go.Bar(x=finite["log2_abs"] + 0.5, y=share, name=label, marker_color=run_colour(i),
                             opacity=0.7, width=1.0))
    for j, fmt in enumerate(formats):
        s = spec(fmt)
        low, high = math.log2(s.min_subnormal), math.log2(s.max_normal)
        fig.add_shape(type="rect", x0=low, x1=high, y0=1.0 + 0.04 * j, y1=1.03 + 0.04 * j, xref="x", yref="paper",
                      fillcolor=run_colour(5 + j), line_width=0)
        fig.add_annotation(x=low, y=1.015 + 0.04 * j, xref="x", yref="paper", text=f"{fmt} ", showarrow=False,
                           xanchor="right", font=dict(size=10))
        fig.add_vline(x=math.log2(s.min_normal), line=dict(color=run_colour(5 + j), dash="dot", width=1))
    fig.update_xaxes(range=[-28, 18], dtick=2)
    fig.update_layout(barmode="overlay", template="plotly_white", height=430,
                      title=dict(text="Gradients at initialisation: log₂|g| (bars: share of values; coloured strips:"
                                      " each format's range, dotted: its smallest normal)", font=dict(size=13)),
                      xaxis_title="log₂ |value|", yaxis_title="share of values",
                      margin=dict(t=110, l=60, r=20, b=50), legend=dict(x=0.99, xanchor="right", y=0.95))
    return fig


def format_events(runs: Mapping[str, Run]) -> pd.DataFrame:
    """Per run: its formats, loss scaling, status, final validation loss, and the share of values that the
    simulated formats flushed to zero (underflow) or pushed out of range (overflow) over the whole run, in the
    forward pass (activations, weights) and the backward pass (gradients)."""
    rows = []
    for label, run in runs.items():
        cfg, df, s = run.config, run.metrics, run.summary()
        row = {"run": label, "format": cfg.format.value, "gradients": cfg.effective_grad_format.value,
               "loss scaling": cfg.loss_scaling.value, "status": s["status"],
               "final val loss": round_finite(s["final_val_loss"], 3)}
        for kind in ("fwd", "bwd"):
            values = df[f"fmt_values_{kind}"].sum() if f"fmt_values_{kind}" in df else 0
            for what in ("underflow", "overflow"):
                count = df[f"fmt_{what}_{kind}"].sum() if f"fmt_{what}_{kind}" in df else 0
                row[f"{what} {kind}"] = f"{count / values:.2%}" if values else "—"
        rows.append(row)
    return pd.DataFrame(rows).set_index("run")


def events_figure(runs: Mapping[str, Run], kind: str = "bwd") -> Any:
    """Share of values flushed to zero per step (solid) and overflowed (dotted) in the forward (``fwd``) or
    backward (``bwd``) pass, one colour per run (runs in FP32 have no events and are skipped)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for i, (label, run) in enumerate(runs.items()):
        df = run.metrics
        if f"fmt_values_{kind}" not in df:
            continue
        values = df[f"fmt_values_{kind}"].replace(0, np.nan)
        for what, dash in (("underflow", "solid"), ("overflow", "dot")):
            share = df[f"fmt_{what}_{kind}"] / values
            if not (share > 0).any():
                continue  # nothing lost this way: no line, no legend entry
            fig.add_trace(go.Scatter(x=df["step"], y=share.where(share > 0), mode="lines", name=f"{label} {what}",
                                     line=dict(color=run_colour(i), dash=dash, width=1.5), legendgroup=label))
    pass_name = {"fwd": "forward pass (activations, weights)", "bwd": "backward pass (gradients)"}[kind]
    fig.update_layout(title=f"Share of values lost per step, {pass_name} (solid: underflow, dotted: overflow)",
                      xaxis_title="step",
                      # dtick 1: a label per decade (plotly's own choice over 4+ decades, "D2", drew none)
                      yaxis=dict(title="share of values (log)", type="log", exponentformat="power", dtick=1),
                      template="plotly_white", height=420, margin=dict(t=60, l=70, r=20, b=50))
    return fig


def underflow_by_width(widths: Iterable[int], scaling: str = "standard", fmt: str = "fp8-e4m3",
                       base: RunConfig | None = None, steps: int = 2) -> pd.DataFrame:
    """Train ``steps`` steps at each width in the simulated format ``fmt`` and report, for the last step, the
    share of forward values (activations, weights) and of gradient values that the format flushed to zero."""
    from labkit.train import train

    base = base or RunConfig()
    rows = []
    for width in widths:
        heads = base.heads if width % base.heads == 0 else 1
        run = train(base.replace(width=width, heads=heads, scaling=scaling, format=fmt, steps=steps,
                                 eval_every=steps + 1, eval_batches=1))
        last = run.records[-1]
        grad_fmt = run.config.effective_grad_format.value
        rows.append({"width": width, "forward format": run.config.format.value, "gradient format": grad_fmt,
                     "forward underflow": last["fmt_underflow_fwd"] / max(1, last["fmt_values_fwd"]),
                     "gradient underflow": last["fmt_underflow_bwd"] / max(1, last["fmt_values_bwd"])})
    return pd.DataFrame(rows).set_index("width")
