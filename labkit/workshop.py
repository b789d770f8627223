"""Support for the workshop notebooks (``notebooks/``): run modes, small experiments, tables and figures.

Every notebook starts the same way::

    from labkit import workshop as ws
    ws.setup()                    # one torch thread; says whether smoke mode is on
    STEPS = ws.full_or_smoke(300, 20)   # full mode: 300 steps; smoke mode (LABKIT_SMOKE=1): 20

Smoke mode runs the *same* cells with tiny step counts and grids, so that ``make test`` can execute every
notebook under nbval in seconds. Anything a notebook computes lives here or elsewhere in ``labkit`` (with
tests); the notebooks only call it, show it and say what it means.

Notebooks are committed through ``nbstripout``, a git clean filter that ``make`` installs: outputs are removed
except in cells marked ``keep_output`` (the ``# NBVAL_CHECK_OUTPUT`` cells, whose outputs nbval compares) and
widget state is dropped, whatever JupyterLab saved. ``python -m labkit.workshop check FILE...`` lists definitions
too long for a notebook.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import json
import math
import os
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from labkit.build import build_for_run, load_corpus
from labkit.config import NumberFormat, RunConfig
from labkit.data import Tokenizer
from labkit.palette import run_colour
from labkit.runs import Run

SMOKE_ENV = "LABKIT_SMOKE"
CHECK_MARK = "# NBVAL_CHECK_OUTPUT"
_TRUE = ("1", "true", "yes", "on")


# ---------------------------------------------------------------------------------------------------------
# Modes
# ---------------------------------------------------------------------------------------------------------


def smoke_mode() -> bool:
    """True when the environment variable ``LABKIT_SMOKE`` is set to 1/true/yes/on (the tests set it)."""
    return os.environ.get(SMOKE_ENV, "").strip().lower() in _TRUE


def _sweep_lr_label(lr: float) -> str:
    from labkit.sweep.analysis import lr_label  # sweeps are imported on first use (as elsewhere in this module)

    return lr_label(lr)


def full_or_smoke(full: Any, smoke: Any) -> Any:
    """``smoke`` in smoke mode, else ``full``: step counts, grids and widths that shrink under test."""
    return smoke if smoke_mode() else full


#: The former name of :func:`full_or_smoke` ("scaled" also means unit-scaled in this lab). Kept until the
#: notebooks edited on other branches are merged; new code uses ``full_or_smoke``.
scaled = full_or_smoke


def setup(threads: int = 1) -> str:
    """Prepare a notebook: set torch's CPU thread count (steady timings on a shared 2-core machine) and
    return a one-line description of the mode, for the notebook to print."""
    torch.set_num_threads(threads)
    mode = (f"smoke mode ({SMOKE_ENV}=1): tiny runs, numbers are not meaningful" if smoke_mode()
            else "full mode")
    return f"labkit workshop: {mode}; torch uses {torch.get_num_threads()} CPU thread(s)."


@contextlib.contextmanager
def runs_folder(root: str | os.PathLike | None, name: str) -> Iterator[Path]:
    """``root`` when given (runs are kept there, and a sweep with the same name resumes), else a fresh temporary
    folder that is deleted on leaving the block: a notebook's re-run never reuses stale results, and nothing is
    left behind (what matters is loaded into memory first)."""
    if root is not None:
        yield Path(root)
        return
    with tempfile.TemporaryDirectory(prefix=f"labkit-{name}-") as path:
        yield Path(path)


def sweep_figure(table: pd.DataFrame, facet: str = "scaling", color: str = "width", title: str | None = None,
                 ceiling: float = 4.6, metric: str = "final_val_loss") -> Any:
    """:func:`labkit.sweep.lr_transfer_figure` with the loss axis capped at ``ceiling`` (default 4.6, just above a
    uniform guess over a 70-character vocabulary), so that one run that blew up to a loss of 100 does not
    flatten every other line; points above the cap are left off the chart and counted in the title."""
    from labkit.sweep import lr_transfer_figure

    fig = lr_transfer_figure(table, metric=metric, facet=facet, color=color, title=title)
    values = pd.to_numeric(table[metric], errors="coerce")
    finished = values[(table["status"] == "finished") & np.isfinite(values)]
    if len(finished) and finished.max() > ceiling:
        above = int((finished > ceiling).sum())
        fig.update_yaxes(range=[float(finished.min()) - 0.1, ceiling])
        fig.update_layout(title_text=f"{fig.layout.title.text} — {above} run(s) above {ceiling:g} not shown")
    return fig


@dataclass
class Trained:
    """A run together with what it trained: the model (in eval mode) and the corpus tokenizer."""

    run: Run
    model: nn.Module
    tokenizer: Tokenizer


def train_model(config: RunConfig | None = None, **overrides: Any) -> Trained:
    """Train one run with the lab's engine and keep the model, to score and sample text with it."""
    from labkit.train import Trainer

    config = (config or RunConfig()).replace(**overrides) if overrides else (config or RunConfig())
    trainer = Trainer(config)
    run = trainer.train()
    model = trainer.model.eval()
    return Trained(run, model, _corpus(config).tokenizer)


def seeded_model(config: RunConfig | None = None, **overrides: Any) -> Trained:
    """The model ``config`` would start training from (seeded, untrained), with an empty run record."""
    config = (config or RunConfig()).replace(**overrides) if overrides else (config or RunConfig())
    tokenizer = _corpus(config).tokenizer
    model, _, _ = build_for_run(config, tokenizer.vocab_size)
    return Trained(Run(config), model.eval(), tokenizer)


def _corpus(config: RunConfig):
    return load_corpus(config.corpus, config.tokenizer.value, config.val_fraction)


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


# ---------------------------------------------------------------------------------------------------------
# Notebook 1: P(S), per-token tables, length and perplexity
# ---------------------------------------------------------------------------------------------------------

_VISIBLE = {" ": "␣", "\n": "⏎", "\t": "⇥"}


def visible(token: str) -> str:
    """A token as a table can show it: space ``␣``, newline ``⏎``, tab ``⇥``."""
    return "".join(_VISIBLE.get(c, c) for c in token)


def probability_table(table: pd.DataFrame) -> pd.DataFrame:
    """``labkit.lm.sentence_probability``'s table, for reading: visible tokens, P(S) so far in scientific
    notation, log probabilities to 3 decimals."""
    return pd.DataFrame({
        "i": table["position"],
        "token w_i": [visible(t) for t in table["token"]],
        "P(w_i | w_<i)": table["p"].round(4),
        "log P(w_i | w_<i)": table["log_p"].round(3),
        "log P(w_1..w_i)": table["cum_log_p"].round(3),
        "P(w_1..w_i)": [f"{p:.3e}" for p in table["cum_p"]],
    })


def probability_figure(tables: Mapping[str, pd.DataFrame], title: str = "") -> Any:
    """Per-token probability bars (top) and the running log P(S) (bottom), one colour per model."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("P(wᵢ | w₁..wᵢ₋₁) for each character",
                                        "log P(w₁..wᵢ): the sentence's log probability so far"))
    for i, (name, table) in enumerate(tables.items()):
        colour = run_colour(i)
        labels = [f"{p}:{visible(t)}" for p, t in zip(table["position"], table["token"], strict=True)]
        fig.add_trace(go.Bar(x=labels, y=table["p"], name=name, marker_color=colour, legendgroup=name), 1, 1)
        fig.add_trace(go.Scatter(x=labels, y=table["cum_log_p"], name=name, mode="lines+markers",
                                 line_color=colour, legendgroup=name, showlegend=False), 2, 1)
    fig.update_yaxes(title_text="probability", range=[0, 1], row=1, col=1)
    fig.update_yaxes(title_text="log P (nats)", row=2, col=1)
    fig.update_xaxes(title_text="position:character", row=2, col=1, tickangle=0)
    fig.update_layout(title=title or None, barmode="group", template="plotly_white", height=560,
                      margin=dict(t=60, l=60, r=20, b=50))
    return fig


def length_table(trained: Trained, text: str, lengths: Iterable[int], context: str = "\n") -> pd.DataFrame:
    """How P(S) and perplexity behave as a text gets longer: score each prefix ``text[:n]``.

    Columns: ``characters``, ``log P(S)`` (natural log), ``log10 P(S)``, ``perplexity`` (exp of minus the mean
    log probability per character), and the same two numbers for a uniform model over the vocabulary
    (every character 1/V), the floor a model must beat.
    """
    from labkit.lm import perplexity, sentence_probability

    vocab = trained.tokenizer.vocab_size
    rows = []
    for n in lengths:
        table = sentence_probability(trained.model, trained.tokenizer, text[:n], context)
        log_p = float(table["log_p"].sum())
        rows.append({"characters": len(table), "log P(S)": log_p, "log10 P(S)": log_p / math.log(10),
                     "perplexity": perplexity(table), "uniform log10 P(S)": -len(table) * math.log10(vocab),
                     "uniform perplexity": float(vocab)})
    return pd.DataFrame(rows)


def length_figure(table: pd.DataFrame) -> Any:
    """Two panels from :func:`length_table`: log10 P(S) falls with length; perplexity per character does not."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("log₁₀ P(S) vs length", "perplexity per character"))
    x = table["characters"]
    fig.add_trace(go.Scatter(x=x, y=table["log10 P(S)"], name="trained model", mode="lines+markers",
                             line_color=run_colour(0), legendgroup="m"), 1, 1)
    fig.add_trace(go.Scatter(x=x, y=table["uniform log10 P(S)"], name="uniform over the vocabulary",
                             mode="lines", line=dict(color="#999999", dash="dash"), legendgroup="u"), 1, 1)
    fig.add_trace(go.Scatter(x=x, y=table["perplexity"], name="trained model", mode="lines+markers",
                             line_color=run_colour(0), legendgroup="m", showlegend=False), 1, 2)
    fig.add_trace(go.Scatter(x=x, y=table["uniform perplexity"], name="uniform", mode="lines",
                             line=dict(color="#999999", dash="dash"), legendgroup="u", showlegend=False), 1, 2)
    fig.update_xaxes(title_text="characters in S")
    fig.update_yaxes(title_text="log₁₀ P(S)", row=1, col=1)
    top = max(float(table["uniform perplexity"].max()), float(table["perplexity"].max()))
    ticks = [v for v in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000) if v <= 2 * top]
    fig.update_yaxes(title_text="perplexity (log scale)", type="log", tickvals=ticks,
                     range=[0, math.log10(1.5 * top)], row=1, col=2)
    fig.update_layout(template="plotly_white", height=380, margin=dict(t=50, l=60, r=20, b=50))
    return fig


def compare_texts(trained: Trained, texts: Sequence[str], context: str = "\n") -> pd.DataFrame:
    """P(S), log P(S) and perplexity of several texts under one model, to compare texts of different lengths."""
    from labkit.lm import perplexity, sentence_probability

    rows = []
    for text in texts:
        table = sentence_probability(trained.model, trained.tokenizer, text, context)
        log_p = float(table["log_p"].sum())
        rows.append({"text": text.replace("\n", "⏎"), "characters": len(table), "log P(S)": round(log_p, 2),
                     "P(S)": f"{math.exp(log_p):.2e}", "perplexity": round(perplexity(table), 2)})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------------
# Notebook 2: the seed's L2 "unit scaling", measured
# ---------------------------------------------------------------------------------------------------------


def norm_table(config: RunConfig, after: str = "seed-l2-once") -> pd.DataFrame:
    """Each parameter tensor of ``config``'s model at initialisation, under standard scaling and after the
    seed's division by the L2 norm (``after``): size, L2 norm and RMS (typical entry size) of both.

    Dividing a tensor of n entries by its norm leaves entries of RMS 1/√n: the bigger the tensor, the
    smaller its entries.
    """
    from labkit.instrument import used_norms

    base, _, _ = build_for_run(config.replace(scaling="standard"), _corpus(config).tokenizer.vocab_size)
    other, _, _ = build_for_run(config.replace(scaling=after), _corpus(config).tokenizer.vocab_size)
    norms_after = used_norms(other)
    rows = []
    for name, p in base.named_parameters():
        n = p.numel()
        norm = float(torch.linalg.vector_norm(p.detach()))
        rows.append({"parameter": name, "entries": n, "L2 norm (standard)": norm,
                     "RMS (standard)": norm / math.sqrt(n), f"L2 norm ({after})": norms_after[name],
                     f"RMS ({after})": norms_after[name] / math.sqrt(n)})
    return pd.DataFrame(rows)


def measure_costs(configs: Mapping[str, RunConfig], steps: int = 3) -> pd.DataFrame:
    """Compute and memory of each config, measured by the lab's engine over a few steps.

    Columns: ``parameters``, ``FLOPs/step`` (forward + backward, counted by PyTorch's FlopCounterMode: matrix
    multiplications, not elementwise work) and bytes of ``parameters``, ``gradients``, ``optimizer state``,
    ``activations`` (saved for backward) and ``total``, from the last step's record.
    """
    from labkit.train import train

    rows = []
    for label, config in configs.items():
        run = train(config.replace(steps=steps, eval_every=steps, eval_batches=1))
        last = run.records[-1]
        rows.append({"run": label, "parameters": run.info["parameters"], "FLOPs/step": run.info["flops_per_step"],
                     "param bytes": int(last["mem_params"]), "grad bytes": int(last["mem_grads"]),
                     "optimizer bytes": int(last["mem_optimizer"]),
                     "activation bytes": int(last["mem_activations"]), "total bytes": int(last["mem_total"])})
    return pd.DataFrame(rows).set_index("run")


def step_times(configs: Mapping[str, RunConfig], steps: int = 30, warmup: int = 3) -> pd.DataFrame:
    """Median time of one bare training step of each config, and its ratio to the first config.

    The configs take turns step by step (``labkit.bench.interleaved_step_times``), so a busy spell of a
    shared machine slows all of them alike; ``warmup`` turns are not counted.
    """
    from labkit.bench import interleaved_step_times

    times = interleaved_step_times(dict(configs), steps, warmup)
    medians = pd.Series({label: 1e3 * statistics.median(t) for label, t in times.items()})
    return pd.DataFrame({"step time (ms)": medians.round(1),
                         "vs first": (medians / medians.iloc[0]).round(2)}).rename_axis("run")


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


def run_table(runs: Mapping[str, Run]) -> pd.DataFrame:
    """One row per run: status, peak learning rate, final training and validation loss."""
    rows = []
    for label, run in runs.items():
        s = run.summary()
        rows.append({"run": label, "status": s["status"], "peak lr": run.info.get("peak_lr"),
                     "final train loss": _round(s["final_train_loss"], 3),
                     "final val loss": _round(s["final_val_loss"], 3)})
    return pd.DataFrame(rows).set_index("run")


@dataclass
class SweepResult:
    """A finished sweep held in memory: its table (one row per run) and every run with its metrics."""

    name: str
    frame: pd.DataFrame
    runs: dict[str, Run]  # by run id

    def table(self) -> pd.DataFrame:
        """One row per config: status, config fields, summary numbers (as ``labkit.sweep.Sweep.table``)."""
        return self.frame.copy()

    def best_lr(self, **kwargs: Any) -> pd.DataFrame:
        """:func:`labkit.sweep.best_lr` of this sweep."""
        from labkit.sweep import best_lr

        return best_lr(self.frame, **kwargs)

    def figure(self, **kwargs: Any) -> Any:
        """:func:`sweep_figure` of this sweep."""
        return sweep_figure(self.frame, **kwargs)


def lr_sweep(base: RunConfig, lrs: Sequence[float], name: str, root: str | os.PathLike | None = None,
             executor: str = "sequential", **axes: Sequence[Any]) -> SweepResult:
    """Train ``base`` at every learning rate in ``lrs`` for every combination of ``axes`` (e.g.
    ``scaling=[...]``, ``width=[...]``) with :mod:`labkit.sweep` on ``executor`` ("sequential", "local": one
    worker process per core, ...). Runs are saved under ``root`` if given, else in a temporary folder that is
    deleted once the results are loaded (see :func:`runs_folder`)."""
    from labkit.sweep import Sweep

    with runs_folder(root, name) as folder:
        sweep = Sweep.from_grid(base, name=name, root=folder, lr=list(lrs), **axes)
        sweep.run(executor, progress=False)
        table = sweep.table()
        runs = {run_id: sweep.store.load(run_id) for run_id in table["run_id"].dropna()}
    return SweepResult(name, table, runs)


def sweep_runs(sweep: SweepResult, label: str = "scaling", **where: Any) -> dict[str, Run]:
    """The runs of a sweep whose config matches ``where`` (floats compared with a relative tolerance), with
    their metrics, keyed by the value of their ``label`` column."""
    table = sweep.table()
    keep = pd.Series(True, index=table.index)
    for column, value in where.items():
        if isinstance(value, float):
            keep &= np.isclose(pd.to_numeric(table[column], errors="coerce"), value, rtol=1e-6)
        else:
            keep &= table[column] == value
    rows = table[keep & table["run_id"].notna()]
    return {str(row[label]): sweep.runs[row["run_id"]] for _, row in rows.iterrows()}


def best_loss(table: pd.DataFrame, by: str = "scaling", metric: str = "final_val_loss") -> pd.Series:
    """Lowest ``metric`` of the finished runs of a sweep table for each value of ``by`` (NaN if none finished)."""
    values = pd.to_numeric(table[metric], errors="coerce").where(table["status"] == "finished")
    return values.groupby(table[by], sort=False).min()


def sweep_summary(table: pd.DataFrame, by: Sequence[str] = ("scaling",),
                  metric: str = "final_val_loss") -> pd.DataFrame:
    """Best learning rate (as a power of two) and its loss for each group, with the number of runs that
    diverged; ``at edge`` flags a best LR at the end of the grid (the true optimum may lie outside)."""
    from labkit.sweep import best_lr

    best = best_lr(table, metric=metric, by=list(by))
    out = best[[*by]].copy()
    out["best lr"] = [f"2^{v:.3g}" if np.isfinite(v) else "—" for v in best["log2_lr"]]
    out[f"best {metric.replace('_', ' ')}"] = best[metric].round(3)
    out["at edge"] = best["at_edge"].astype("boolean").fillna(False).astype(bool)
    out["runs"] = best["runs"]
    out["diverged"] = best["diverged"]
    return out.set_index(list(by))


def seed_verdicts(costs: pd.DataFrame, times: pd.DataFrame, best: pd.Series, reference: str = "standard",
                  tolerance: float = 0.02, time_tolerance: float = 0.10) -> pd.DataFrame:
    """Judge the seed article's claims from a notebook's own measurements, one row per claim and method.

    ``costs``: :func:`measure_costs`; ``times``: :func:`step_times`; ``best``: best validation loss per method
    (:func:`best_loss`); all indexed by the same method labels, ``reference`` among them. A reduction of
    FLOPs or bytes counts when it exceeds ``tolerance`` (relative), of step time when it exceeds
    ``time_tolerance`` (timings are noisy); "does not affect quality" holds when the method's best loss is
    within ``tolerance`` (relative) of the reference's.
    """
    rows = []
    ref = costs.loc[reference]
    ref_time = times.loc[reference, "step time (ms)"]

    def add(claim: str, measured: str, holds: bool | None) -> None:
        rows.append({"claim": claim, "measured": measured,
                     "verdict": {True: "holds", False: "does not hold", None: "undecided"}[holds]})

    for label in costs.index.drop(reference):
        row = costs.loc[label]
        flops = row["FLOPs/step"] / ref["FLOPs/step"]
        add(f"{label} reduces compute (FLOPs)", f"FLOPs/step × {flops:.3f}", flops < 1 - tolerance)
        if label in times.index:
            ratio = times.loc[label, "step time (ms)"] / ref_time
            add(f"{label} reduces compute (time)", f"step time × {ratio:.2f}", ratio < 1 - time_tolerance)
        memory = row["total bytes"] / ref["total bytes"]
        params = row["param bytes"] / ref["param bytes"]
        add(f"{label} reduces memory", f"bytes × {memory:.3f} (parameters × {params:.3f})", memory < 1 - tolerance)
        if label in best.index and reference in best.index and np.isfinite(best[label]) \
                and np.isfinite(best[reference]):
            change = best[label] / best[reference] - 1
            add(f"{label} does not affect quality", f"best val loss {best[label]:.3f} vs {best[reference]:.3f} "
                f"({change:+.1%})", bool(abs(change) <= tolerance))
        else:
            add(f"{label} does not affect quality", "no finished run to compare", None)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------------
# Notebook 3: number formats and per-layer scales
# ---------------------------------------------------------------------------------------------------------


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


def gradient_histogram(config: RunConfig) -> pd.DataFrame:
    """log2 histogram of every parameter gradient of ``config``'s model after one forward and backward pass
    at initialisation (``labkit.scales.log2_histogram``)."""
    from labkit.scales import log2_histogram

    corpus = _corpus(config)
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


def show_source(obj: Any) -> Any:
    """The source code of a function or class, as a syntax-highlighted IPython ``Code`` object."""
    from IPython.display import Code

    return Code(inspect.getsource(obj), language="python")


# ---------------------------------------------------------------------------------------------------------
# Notebook 4: low precision
# ---------------------------------------------------------------------------------------------------------


def run_configs(configs: Mapping[str, RunConfig], name: str, executor: str = "sequential",
                root: str | os.PathLike | None = None) -> dict[str, Run]:
    """Train several labelled configs as one :mod:`labkit.sweep` (any executor; saved under ``root`` if given,
    else in a temporary folder, see :func:`runs_folder`) and return their runs, with metrics, by label."""
    from labkit.sweep import Sweep, config_key

    with runs_folder(root, name) as folder:
        sweep = Sweep(list(configs.values()), name=name, root=folder)
        sweep.run(executor, progress=False)
        table = sweep.table().set_index("key")
        runs = {}
        for label, config in configs.items():
            run_id = table.loc[config_key(config), "run_id"]
            runs[label] = sweep.store.load(run_id) if isinstance(run_id, str) else None
    return runs


def format_events(runs: Mapping[str, Run]) -> pd.DataFrame:
    """Per run: its formats, loss scaling, status, final validation loss, and the share of values that the
    simulated formats flushed to zero (underflow) or pushed out of range (overflow) over the whole run, in the
    forward pass (activations, weights) and the backward pass (gradients)."""
    rows = []
    for label, run in runs.items():
        cfg, df, s = run.config, run.metrics, run.summary()
        row = {"run": label, "format": cfg.format.value, "gradients": cfg.effective_grad_format.value,
               "loss scaling": cfg.loss_scaling.value, "status": s["status"],
               "final val loss": _round(s["final_val_loss"], 3)}
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
                      yaxis=dict(title="share of values (log)", type="log", exponentformat="power"),
                      template="plotly_white", height=420, margin=dict(t=60, l=70, r=20, b=50))
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
        rows.append({"run": label, "reference": reference, "loss": _round(la, 3) if ok else a["status"],
                     "reference loss": _round(lb, 3), "change": f"{change:+.1%}" if ok else "—",
                     "matches": bool(ok and abs(change) <= tolerance)})
    return pd.DataFrame(rows)


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


# ---------------------------------------------------------------------------------------------------------
# Notebook 5: learning-rate transfer
# ---------------------------------------------------------------------------------------------------------


def lr_rules_table(config: RunConfig, lr: float = 1.0) -> pd.DataFrame:
    """The per-parameter learning rates a scaling method gives the optimizer (``param_groups``): for each
    parameter its shape, the factor applied to the base learning rate, and the rule behind it."""

    model, _, method = build_for_run(config, _corpus(config).tokenizer.vocab_size)
    names = {id(p): n for n, p in model.named_parameters()}
    rows = []
    for group in method.param_groups(model, lr, config.optimizer):
        for p in group["params"]:
            rows.append({"parameter": group.get("name", names[id(p)]), "shape": "×".join(map(str, p.shape)),
                         "lr factor": group.get("lr_scale", 1.0), "rule": group.get("rule", "base rate")})
    return pd.DataFrame(rows).set_index("parameter")


def transfer_table(table: pd.DataFrame, small: int, large: int, metric: str = "final_val_loss",
                   by: str = "scaling", across: str = "width") -> pd.DataFrame:
    """What tuning on a small model buys: for each method, the best LR found at width ``small``, the loss at
    width ``large`` with that LR, the best loss at ``large`` over the whole grid, and the gap between them.

    A gap near zero means the LR tuned on the small model was (close to) right for the large one."""
    from labkit.sweep import best_lr

    best = best_lr(table, metric=metric, by=[by, across]).set_index([by, across])
    values = pd.to_numeric(table[metric], errors="coerce").where(table["status"] == "finished")
    lrs = pd.to_numeric(table["lr"], errors="coerce")
    rows = []
    for method in dict.fromkeys(table[by]):
        tuned = best.loc[(method, small), "best_lr"] if (method, small) in best.index else math.nan
        here = (table[by] == method) & (table[across] == large) & np.isclose(lrs, tuned, rtol=1e-6)
        loss = float(values[here].iloc[0]) if here.any() else math.nan
        best_large = best.loc[(method, large), metric] if (method, large) in best.index else math.nan
        rows.append({by: method, f"best lr at {across} {small}": _sweep_lr_label(tuned),
                     f"best lr at {across} {large}": _sweep_lr_label(best.loc[(method, large), "best_lr"]
                                                              if (method, large) in best.index else math.nan),
                     f"loss at {large} with the {small} lr": _round(loss, 3),
                     f"best loss at {large}": _round(float(best_large), 3),
                     "gap": f"{loss / best_large - 1:+.1%}" if np.isfinite(loss) and np.isfinite(best_large)
                     else "—"})
    return pd.DataFrame(rows).set_index(by)


def best_lr_figure(table: pd.DataFrame, metric: str = "final_val_loss", by: str = "scaling",
                   across: str = "width") -> Any:
    """The best learning rate (log2) against width, one line per method: flat means the LR transferred.
    Hollow markers flag a best LR at the edge of the grid (the optimum may lie beyond it)."""
    import plotly.graph_objects as go

    from labkit.sweep import best_lr

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


# ---------------------------------------------------------------------------------------------------------
# Notebook 6: exercise checks
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Check:
    """The verdict on an exercise attempt: solved or not, and the measurement behind it."""

    solved: bool
    message: str

    def __str__(self) -> str:
        return ("✓ solved: " if self.solved else "✗ not yet: ") + self.message

    __repr__ = __str__

    def _repr_markdown_(self) -> str:
        return ("**✓ solved:** " if self.solved else "**✗ not yet:** ") + self.message


def check_perplexity(trained: Trained, text: str, reference: str, min_chars: int = 20) -> Check:
    """Exercise: a text of at least ``min_chars`` characters with a lower perplexity than ``reference``."""
    from labkit.lm import perplexity, sentence_probability

    if len(text) < min_chars:
        return Check(False, f"your text has {len(text)} characters; write at least {min_chars}")
    try:
        mine = perplexity(sentence_probability(trained.model, trained.tokenizer, text))
    except ValueError as exc:  # a character the corpus never uses
        return Check(False, str(exc))
    ref = perplexity(sentence_probability(trained.model, trained.tokenizer, reference))
    verdict = "lower" if mine < ref else "not lower"
    return Check(mine < ref, f"perplexity {mine:.2f} vs {ref:.2f} for {reference!r}: {verdict}")


def check_trains_like(run: Run, reference: Run, tolerance: float = 0.03, **required: Any) -> Check:
    """Exercise: ``run`` finished within ``tolerance`` (relative) of ``reference``'s final validation loss,
    with the config fields in ``required`` (e.g. ``format="fp8-e4m3"``, ``scaling="standard"``)."""
    config = run.config.to_dict()
    wrong = {k: (config[k], v) for k, v in required.items() if config[k] != v}
    if wrong:
        return Check(False, "; ".join(f"{k} must be {v!r} (yours: {mine!r})" for k, (mine, v) in wrong.items()))
    mine, ref = run.summary()["final_val_loss"], reference.summary()["final_val_loss"]
    if run.status.value != "finished" or mine is None or not math.isfinite(mine):
        return Check(False, f"the run ended {run.status.value}: {run.error or 'no validation loss'}")
    change = mine / ref - 1
    return Check(abs(change) <= tolerance, f"final validation loss {mine:.3f} vs {ref:.3f} in the reference "
                 f"({change:+.1%}; within ±{tolerance:.0%} counts)")


def check_underflow_width(answer: int, threshold: float = 0.5, scaling: str = "standard",
                          fmt: str = "fp8-e4m3") -> Check:
    """Exercise: the smallest power-of-two width at which more than ``threshold`` of the gradient values
    underflow in ``fmt`` (measured now at ``answer`` and ``answer // 2``)."""
    if answer < 2 or answer & (answer - 1):
        return Check(False, f"give a power of two (got {answer})")
    table = underflow_by_width([answer // 2, answer], scaling=scaling, fmt=fmt, steps=1)
    below, at = table["gradient underflow"].loc[answer // 2], table["gradient underflow"].loc[answer]
    ok = at > threshold >= below
    return Check(ok, f"gradient underflow {below:.1%} at width {answer // 2} and {at:.1%} at width {answer} "
                 f"(the threshold {threshold:.0%} must lie between them)")


def check_lr_factor(answer: float, config: RunConfig, parameter: str, rtol: float = 0.01) -> Check:
    """Exercise: the learning-rate factor the scaling method of ``config`` gives ``parameter``."""
    table = lr_rules_table(config)
    if parameter not in table.index:
        return Check(False, f"no parameter {parameter!r}; choose one of {', '.join(table.index[:4])}, ...")
    true = float(table.loc[parameter, "lr factor"])
    ok = math.isclose(answer, true, rel_tol=rtol)
    return Check(ok, f"{parameter} at width {config.width}: factor {true:.4g} ({table.loc[parameter, 'rule']})"
                 if ok else f"{answer:.4g} is not the factor; look at the rule for a weight of this shape")


# ---------------------------------------------------------------------------------------------------------
# Keeping notebooks clean and short
# ---------------------------------------------------------------------------------------------------------


def is_checked(cell: Mapping[str, Any]) -> bool:
    """Whether a notebook cell is marked ``# NBVAL_CHECK_OUTPUT`` (its outputs are kept and compared)."""
    return cell.get("cell_type") == "code" and CHECK_MARK in _source(cell)


def long_definitions(nb: Mapping[str, Any], max_lines: int = 5) -> list[str]:
    """Functions, classes and lambdas defined in a notebook's code cells that span more than ``max_lines``
    lines (logic belongs in ``labkit``). Returns ``"cell N: def name (K lines)"`` strings; cells that do not
    parse as Python (after dropping ``%``/``!`` lines) are reported too."""
    problems = []
    for index, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") != "code":
            continue
        code = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in _source(cell).splitlines())
        try:
            tree = ast.parse(code)
        except SyntaxError as exc:
            problems.append(f"cell {index}: does not parse ({exc.msg}, line {exc.lineno})")
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
                lines = node.end_lineno - node.lineno + 1
                if lines > max_lines:
                    kind = {"ClassDef": "class", "Lambda": "lambda"}.get(type(node).__name__, "def")
                    problems.append(f"cell {index}: {kind} {getattr(node, 'name', '<lambda>')} ({lines} lines)")
    return problems


def _source(cell: Mapping[str, Any]) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


# ---------------------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------------------

def _round(value: Any, digits: int) -> Any:
    return round(value, digits) if isinstance(value, float) and math.isfinite(value) else value


def main(argv: list[str] | None = None) -> int:
    """``python -m labkit.workshop check FILE...``: list long definitions; exit 1 if any notebook has one.
    (Stripping outputs is git's clean filter, nbstripout, which ``make`` installs.)"""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2 or argv[0] != "check":
        print(main.__doc__)
        return 2
    status = 0
    for name in argv[1:]:
        problems = long_definitions(json.loads(Path(name).read_text(encoding="utf-8")))
        status |= bool(problems)
        print("\n".join(f"{name}: {p}" for p in problems) or f"{name}: ok")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
