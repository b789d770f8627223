"""The lab's charts: loss, parameter norms, memory and per-layer scales, one colour per run.

Two consumers share one layout (:func:`base_figure`: loss | norms | memory above, per-layer RMS | format
under/overflows below) and one set of trace builders (:func:`run_traces`, :func:`trace_values`):

* :class:`ChartSet` holds one live ``FigureWidget`` (:class:`LiveFigure`) and updates it while a run trains:
  one message per update, numpy arrays only, histories thinned to ``max_points``;
* :func:`static_figure` lays the same traces out in a plain ``go.Figure`` for export (no kernel needed).

:class:`RunSeries` turns a run's growing ``records`` list into columns incrementally, so a redraw costs
the same at step 5,000 as at step 50. Nothing here trains or measures anything: it only reads ``Run``.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import ipywidgets as widgets
import numpy as np
import plotly.graph_objects as go
from plotly.serializers import custom_serializers
from plotly.subplots import make_subplots
from traitlets import Dict

from labkit.instrument import layer_of
from labkit.runs import Run

MEMORY_PARTS: tuple[tuple[str, str], ...] = (
    ("mem_params", "parameters"),
    ("mem_grads", "gradients"),
    ("mem_optimizer", "optimizer state"),
    ("mem_activations", "activations"),
)
FMT_PARTS: tuple[tuple[str, str, str], ...] = (
    # record key, label, dash
    ("fmt_underflow_fwd", "underflow fwd", "dot"),
    ("fmt_underflow_bwd", "underflow bwd", "dashdot"),
    ("fmt_overflow_fwd", "overflow fwd", "solid"),
    ("fmt_overflow_bwd", "overflow bwd", "dash"),
)
SCALE_KINDS: tuple[tuple[str, str], ...] = (("activation", "solid"), ("gradient", "dash"), ("weight", "dot"))
BASE_KEYS: tuple[str, ...] = (
    "step", "tokens", "train_loss", "val_loss", "lr", "param_norm", "grad_norm", "mem_params", "mem_grads",
    "mem_optimizer", "mem_activations", "mem_total", "rss", "step_time", "tokens_per_s", "instr_time",
    "fmt_underflow_fwd", "fmt_overflow_fwd", "fmt_underflow_bwd", "fmt_overflow_bwd", "fmt_values_fwd",
    "fmt_values_bwd", "mem_cuda_allocated", "mem_cuda_reserved", "mem_cuda_peak",
)
#: Per-step columns named per optimizer parameter group (produced by the engine when it measures them).
GROUP_PREFIXES: tuple[str, ...] = ("eff_lr/", "rel_update/")
#: Device memory columns drawn beside RSS when a run has them (CUDA runs): key, label, dash.
DEVICE_MEMORY: tuple[tuple[str, str, str], ...] = (("mem_cuda_allocated", "CUDA allocated", "dot"),
                                                   ("mem_cuda_reserved", "CUDA reserved", "dashdot"),
                                                   ("mem_cuda_peak", "CUDA peak", "longdash"))
MIB = 2.0**20
NO_SCALE_NOTE = "no scale data for this run"
NO_FORMAT_NOTE = "no under/overflow counts for this run"

#: Which subplot each kind of trace lives in, and how its axes are labelled.
SLOTS: dict[str, dict[str, Any]] = {
    "loss": {"title": "Loss", "x": "step", "y": "loss (nats/token)", "log": False},
    "norms": {"title": "Parameter L2 norms (thick: global)", "x": "step", "y": "L2 norm (thin: per layer)",
              "log": True},
    "memory": {"title": "Memory at the peak step: measured | estimate", "x": "", "y": "MiB (format's bytes)",
               "log": False},
    "rms": {"title": "RMS per layer (input → output) at the latest sampled step", "x": "", "y": "RMS (log)",
            "log": True},
    "fmt": {"title": "Format under/overflows", "x": "step", "y": "values per step (log)", "log": True},
    "process": {"title": "Process memory (RSS; CUDA when present)", "x": "step", "y": "MiB", "log": False},
    "eff_lr": {"title": "Effective LR per parameter group", "x": "step", "y": "learning rate (log)", "log": True},
    "rel_update": {"title": "Relative update ‖ΔW‖/‖W‖ per group", "x": "step", "y": "ratio (log)", "log": True},
}


def _rgb(colour: str) -> tuple[int, int, int]:
    colour = colour.lstrip("#")
    return int(colour[0:2], 16), int(colour[2:4], 16), int(colour[4:6], 16)


def tint(colour: str, amount: float, alpha: float = 1.0) -> str:
    """``colour`` mixed with white by ``amount`` (0: unchanged, 1: white), as an ``rgba()`` string."""
    r, g, b = (round(c + (255 - c) * amount) for c in _rgb(colour))
    return f"rgba({r},{g},{b},{alpha:g})"


def thin_index(n: int, max_points: int) -> slice | np.ndarray:
    """Indices of at most ``max_points`` evenly spread rows out of ``n``, always keeping the first and last."""
    if n <= max_points:
        return slice(0, n)
    return np.unique(np.linspace(0, n - 1, max_points).round().astype(np.int64))


class RunSeries:
    """A run's records as numeric columns, appended incrementally by :meth:`sync`.

    Columns are the record keys in ``BASE_KEYS`` (NaN where a record lacks one) plus ``group/<layer>``: the
    L2 norm of each layer group (``labkit.instrument.layer_of``), the root sum of squares of its tensors.
    Per-layer scales keep only the latest sampled step (``latest_scales``).
    """

    def __init__(self, run: Run) -> None:
        self.run = run
        self.n = 0
        self.columns: dict[str, int] = {}
        self.groups: dict[str, list[str]] = {}
        self.group_columns: list[str] = []  # eff_lr/<group>, rel_update/<group> (GROUP_PREFIXES) when recorded
        self._data = np.empty((0, 0))
        self._n_scales = 0
        self.scale_layers: list[str] = []
        self.scale_step: float | None = None
        self.latest_scales: dict[str, dict[str, float]] = {}

    def _initialise(self, record: dict[str, Any]) -> None:
        for key in record:
            if key.startswith("norm/"):
                self.groups.setdefault(layer_of(key[5:]), []).append(key)
        self.group_columns = [key for key in record if key.startswith(GROUP_PREFIXES)]
        names = [*BASE_KEYS, *(f"group/{g}" for g in self.groups), *self.group_columns]
        self.columns = {name: i for i, name in enumerate(names)}
        self._data = np.full((max(64, self.run.config.steps // max(1, self.run.config.log_every) + 2),
                              len(names)), np.nan)

    def sync(self) -> bool:
        """Take in the records and scale rows added since the last call; True when there were any."""
        records = self.run.records
        total = len(records)
        new = records[self.n:total]
        if new and not self.columns:
            self._initialise(next((r for r in new if any(k.startswith("norm/") for k in r)), new[0]))
        if new:
            if self.n + len(new) > self._data.shape[0]:
                grown = np.full((max(2 * self._data.shape[0], self.n + len(new)), self._data.shape[1]), np.nan)
                grown[: self.n] = self._data[: self.n]
                self._data = grown
            base = [(self.columns[k], k) for k in BASE_KEYS]
            groups = [(self.columns[f"group/{g}"], keys) for g, keys in self.groups.items()]
            base += [(self.columns[k], k) for k in self.group_columns]
            data = self._data
            for i, record in enumerate(new, start=self.n):
                row = data[i]
                for col, key in base:
                    value = record.get(key)
                    if value is not None:
                        row[col] = value
                for col, keys in groups:
                    if keys[0] in record:
                        row[col] = math.sqrt(sum(record[k] ** 2 for k in keys if k in record))
            self.n = total
        scales_changed = self._sync_scales()
        return bool(new) or scales_changed

    def _sync_scales(self) -> bool:
        rows = self.run.scales
        total = len(rows)
        if total == self._n_scales:
            return False
        for row in rows[self._n_scales:total]:
            step = row.get("step")
            if step is None:
                continue
            if self.scale_step is None or step > self.scale_step:
                self.scale_step = step
                self.latest_scales = {}
            if step == self.scale_step:
                layer = str(row.get("layer"))
                if layer not in self.scale_layers:
                    self.scale_layers.append(layer)
                self.latest_scales.setdefault(str(row.get("kind")), {})[layer] = float(row.get("rms", math.nan))
        self._n_scales = total
        return True

    def column(self, key: str) -> np.ndarray:
        """The values of one column so far (a view; NaN where a record lacked the key)."""
        if key not in self.columns:
            return np.full(self.n, np.nan)
        return self._data[: self.n, self.columns[key]]

    def has(self, key: str) -> bool:
        """Whether any record so far has a finite value for ``key``."""
        return bool(self.n) and bool(np.isfinite(self.column(key)).any())

    @property
    def has_layer_scales(self) -> bool:
        """Whether the run recorded per-layer RMS (``run.scales``)."""
        return bool(self.latest_scales)

    @property
    def has_format_counts(self) -> bool:
        """Whether the run's records hold number-format under/overflow counts."""
        return any(self.has(key) for key, _, _ in FMT_PARTS)

    @property
    def has_scale_data(self) -> bool:
        """Whether the run recorded per-layer scales or format under/overflow counts."""
        return self.has_layer_scales or self.has_format_counts


def run_label(index: int, run: Run) -> str:
    """Short name of a run in legends and tables: ``#2 seed-l2-once``."""
    return f"#{index + 1} {run.config.scaling.value}"


@dataclass
class TraceSpec:
    """One trace of one run: where it goes (``slot``), what it shows (``role``) and its style."""

    slot: str
    role: str
    trace: go.Scatter
    legend: bool = False


def group_traces(series: RunSeries, colour: str, label: str, groups: list[str], start: int = 0,
                 total: int | None = None) -> list[TraceSpec]:
    """The thin per-layer-group lines of the norm chart, lighter for layers further from the input."""
    total = max(1, total if total is not None else len(groups))
    return [TraceSpec("norms", f"group/{g}", go.Scatter(
        name=f"{label} {g}", mode="lines", line={"color": tint(colour, 0.65 * (start + i) / total), "width": 1},
        legendgroup=series.run.id, showlegend=False)) for i, g in enumerate(groups)]


def column_traces(series: RunSeries, colour: str, label: str, columns: list[str]) -> list[TraceSpec]:
    """Lines of the per-parameter-group columns (``eff_lr/<group>``, ``rel_update/<group>``), one dash per group."""
    dashes = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
    specs = []
    for i, column in enumerate(columns):
        slot, group_name = column.split("/", 1)
        specs.append(TraceSpec(slot, column, go.Scatter(
            name=f"{label} {group_name}", mode="lines", legendgroup=series.run.id, showlegend=False,
            line={"color": colour, "width": 1.5, "dash": dashes[i % len(dashes)]},
            hovertemplate=f"{label} {group_name}: %{{y:.3g}}<extra></extra>")))
    return specs


def run_traces(series: RunSeries, colour: str, label: str, groups: list[str] | None = None) -> list[TraceSpec]:
    """Every trace of one run, empty (values come from :func:`trace_values`), styled in the run's colour.

    ``groups``: the layer groups to draw norms for (default: those of the run's records so far).
    """
    group = series.run.id
    common = {"legendgroup": group, "showlegend": False}
    specs = [
        TraceSpec("loss", "train", go.Scatter(name=f"{label} train", mode="lines",
                                              line={"color": tint(colour, 0.0, 0.55), "width": 1.2}, **common)),
        TraceSpec("loss", "val", go.Scatter(name=f"{label} validation", mode="lines+markers",
                                            line={"color": colour, "width": 2.5}, marker={"size": 6},
                                            **common), legend=True),
        TraceSpec("norms", "global", go.Scatter(name=f"{label} global", mode="lines",
                                                line={"color": colour, "width": 3}, **common)),
    ]
    specs += group_traces(series, colour, label, list(series.groups) if groups is None else groups)
    for i, (key, name) in enumerate(MEMORY_PARTS):  # one opaque stacked bar per run, beside its estimate
        specs.append(TraceSpec("memory", key, go.Bar(
            name=f"{label} {name}", marker={"color": tint(colour, 0.22 * i), "line": {"width": 0}},
            hovertemplate=f"{label} {name}: %{{y:.2f}} MiB<extra></extra>", **common)))
        specs.append(TraceSpec("memory", f"estimate/{key}", go.Bar(
            name=f"{label} {name} (estimate)", hovertemplate=f"{label} {name}, estimated before the run: "
                                                             "%{y:.2f} MiB<extra></extra>",
            marker={"color": "white", "line": {"color": tint(colour, 0.22 * i), "width": 1.5},
                    "pattern": {"shape": "/", "fgcolor": tint(colour, 0.22 * i), "size": 6}}, **common)))
    specs.append(TraceSpec("process", "rss", go.Scatter(name=f"{label} process RSS", mode="lines",
                                                        line={"color": colour, "width": 2}, **common)))
    for key, name, dash in DEVICE_MEMORY:
        if series.has(key) or series.n == 0:
            specs.append(TraceSpec("process", key, go.Scatter(name=f"{label} {name}", mode="lines",
                                                              line={"color": colour, "width": 1.5, "dash": dash},
                                                              **common)))
    specs += column_traces(series, colour, label, series.group_columns)
    for kind, dash in SCALE_KINDS:
        specs.append(TraceSpec("rms", f"rms/{kind}", go.Scatter(
            name=f"{label} {kind}", mode="lines+markers", line={"color": colour, "width": 1.5, "dash": dash},
            marker={"size": 5}, **common)))
    for key, name, dash in FMT_PARTS:
        specs.append(TraceSpec("fmt", key, go.Scatter(name=f"{label} {name}", mode="lines",
                                                      line={"color": colour, "width": 1.5, "dash": dash},
                                                      **common)))
    return specs


def trace_values(series: RunSeries, role: str, max_points: int) -> tuple[Any, np.ndarray]:
    """The (x, y) arrays of one trace, thinned to ``max_points``."""
    if role.startswith("rms/"):
        values = series.latest_scales.get(role[4:], {})
        return list(series.scale_layers), np.array([values.get(layer, np.nan) for layer in series.scale_layers])
    if role.startswith("estimate/"):
        estimate = series.run.info.get("memory_estimate") or {}
        key = {"mem_params": "param_bytes", "mem_grads": "grad_bytes", "mem_optimizer": "optimizer_bytes",
               "mem_activations": "activation_bytes"}[role[9:]]
        value = estimate.get(key)
        return [f"{run_short(series)} est."], np.array([value / MIB if value is not None else np.nan])
    if role.startswith("mem_") and role in dict(MEMORY_PARTS):
        total = series.column("mem_total")
        if not np.isfinite(total).any():
            return [run_short(series)], np.array([np.nan])
        peak = int(np.nanargmax(total))
        return [run_short(series)], np.array([series.column(role)[peak] / MIB])
    step = series.column("step")
    if role == "val":
        y = series.column("val_loss")
        keep = np.isfinite(y)
        x, y = step[keep], y[keep]
        idx = thin_index(len(x), max_points)
        return np.array(x[idx]), np.array(y[idx])
    idx = thin_index(series.n, max_points)
    if role == "train":
        y = series.column("train_loss")
    elif role == "global":
        y = series.column("param_norm")
    elif role == "rss" or role.startswith("mem_cuda_"):
        y = series.column(role) / MIB
    else:  # group/<layer> and fmt_* columns
        y = series.column(role)
    return np.array(step[idx]), np.array(y[idx])  # contiguous copies: the plot keeps them


def run_short(series: RunSeries) -> str:
    """The run's category on the memory chart's x axis (its id's random tail keeps runs apart)."""
    return f"{series.run.config.scaling.value} {series.run.config.format.value} ·{series.run.id[-3:]}"


def loss_range(series: Iterable[RunSeries], headroom: float = 1.0) -> list[float] | None:
    """The loss axis' range: from the lowest loss of the runs to ``headroom`` nats above the highest start.

    A run that blew up leaves the chart through the top edge instead of squashing every other curve flat.
    """
    lows, starts = [], []
    for s in series:
        losses = s.column("train_loss")
        finite = losses[np.isfinite(losses)]
        if len(finite):
            lows.append(float(finite.min()))
            starts.append(float(finite[0]))
    if not lows:
        return None
    return [max(0.0, min(lows) - 0.1), max(starts) + headroom]


def _axis_settings(slot: str) -> tuple[dict[str, Any], dict[str, Any]]:
    spec = SLOTS[slot]
    x = {"title": {"text": spec["x"]}, "automargin": True}
    y = {"title": {"text": spec["y"]}, "automargin": True, "type": "log" if spec["log"] else "linear"}
    if slot in ("rms", "memory"):
        x.update(type="category", tickangle=-40 if slot == "rms" else -25, tickfont={"size": 10})
    if spec["log"]:
        # Powers of ten, at most ~6 labels: a fixed tick per decade piled up when values spanned 15 decades.
        y.update(exponentformat="power", nticks=6)
    return x, y


#: Where each slot sits in the one figure: row 1 loss | norms | memory; row 2 RMS per layer (2 wide) | formats.
#: Row 3: process memory (RSS, CUDA) | effective LR per group | relative update per group.
GRID: dict[str, tuple[int, int]] = {"loss": (1, 1), "norms": (1, 2), "memory": (1, 3), "rms": (2, 1), "fmt": (2, 3),
                                    "process": (3, 1), "eff_lr": (3, 2), "rel_update": (3, 3)}
KEY_GROUPS = ("memory-key", "scale-key", "fmt-key")
#: Notes shown in the scale charts when the latest shown run has no data for them: (axis, text, test).
NOTES: dict[str, tuple[str, str, Callable[[RunSeries], bool]]] = {
    "no-data": ("x4", NO_SCALE_NOTE, lambda series: series.has_layer_scales),
    "no-fmt": ("x5", NO_FORMAT_NOTE, lambda series: series.has_format_counts),
}
#: Axis types re-sent with every data update (plotly.js re-guesses non-log types when data change).
PINNED_AXES = {"xaxis4.type": "category", "xaxis3.type": "category"}


def base_figure(height: int = 1000, keys: bool = True) -> go.Figure:
    """The empty grid of the lab's charts: titled subplots, units on the axes, log axes, a legend of line styles.

    Row 1: loss, parameter norms, memory (a stacked bar per run at its peak step, beside the estimate made before
    it started); row 2: RMS per layer (two columns wide) and format under/overflows; row 3: process memory (RSS, and
    CUDA when present), effective LR and relative update size per parameter group (when the run records them).
    With ``keys``, grey legend-only traces say which band of the memory stack and which dash is which.
    """
    fig = make_subplots(rows=3, cols=3, specs=[[{}, {}, {}], [{"colspan": 2}, None, {}], [{}, {}, {}]],
                        subplot_titles=[SLOTS[s]["title"] for s in GRID], horizontal_spacing=0.075,
                        vertical_spacing=0.12, row_heights=[0.37, 0.33, 0.30])
    for slot, (row, col) in GRID.items():
        x, y = _axis_settings(slot)
        fig.update_xaxes(row=row, col=col, **x)
        fig.update_yaxes(row=row, col=col, **y)
    fig.update_annotations(font={"size": 13})
    if keys:
        for trace in _key_traces():
            row, col = GRID[trace.meta]
            fig.add_trace(trace, row=row, col=col)
    fig.update_layout(template="plotly_white", height=height, autosize=True, hovermode="closest", uirevision="lab",
                      barmode="stack", bargap=0.25,
                      margin={"l": 60, "r": 20, "t": 40, "b": 40},
                      legend={"orientation": "h", "x": 0, "y": -0.2, "font": {"size": 11}, "tracegroupgap": 4,
                              "traceorder": "grouped"})
    return fig


def _key_traces() -> list[go.Scatter]:
    """Legend-only grey traces: the memory bands, the dashes of the scale and format charts."""
    grey = "#555555"
    traces = [go.Scatter(x=[None], y=[None], mode="lines", name=name, legendgroup="memory-key", meta="memory",
                         line={"color": tint(grey, 0.22 * i), "width": 8}, hoverinfo="skip")
              for i, (_, name) in enumerate(MEMORY_PARTS)]
    traces.append(go.Scatter(x=[None], y=[None], mode="markers", name="hatched: estimate before the run",
                             legendgroup="memory-key", meta="memory", hoverinfo="skip",
                             marker={"symbol": "square-open", "size": 10, "color": grey}))
    traces += [go.Scatter(x=[None], y=[None], mode="lines", name=f"{kind} RMS", legendgroup="scale-key", meta="rms",
                          line={"color": grey, "dash": dash}, hoverinfo="skip") for kind, dash in SCALE_KINDS]
    traces += [go.Scatter(x=[None], y=[None], mode="lines", name=name, legendgroup="fmt-key", meta="fmt",
                          line={"color": grey, "dash": dash}, hoverinfo="skip") for _, name, dash in FMT_PARTS]
    for trace in traces:
        trace.update(legendgrouptitle={"text": {"memory-key": "memory", "scale-key": "scales",
                                                "fmt-key": "formats"}[trace.legendgroup]})
    return traces


class LiveFigure(go.FigureWidget):
    """A ``FigureWidget`` made for streaming from a background thread; everything else is plotly's.

    * **Late views.** Plotly sends updates as one-off messages, so a view created later (page reload, Voilà)
      would show the figure as first displayed. ``get_state`` answers a view's state request, so it
      rebuilds ``_widget_data``/``_widget_layout`` from the current figure: reloads are whole, at no cost
      while training.
    * **Threads.** ipywidgets applies a view's message inside ``hold_trait_notifications``, which is per
      object, not per thread: an edit the training thread sent meanwhile was merged away. ``set_state``
      takes the lock that every change made by the lab holds.
    * **One message per edit.** Plotly sends an edit as "set the message, then reset it to None" plus two
      edit-id updates; here it is one state update and the message stays the trait's value (each carries
      new edit ids, so views see every one exactly once).
    * **No echo.** After each edit a view sends back its "deltas" (tens of kB), which FigureWidget merges
      into Python-side defaults and ipywidgets echoes to every view. The lab never reads those defaults,
      so they are dropped on arrival: without that, a run's updates queued the kernel's messages and a
      Stop click waited seconds. Only the edit id acknowledged is kept, for :meth:`stalled`.
    """

    _state_lock = threading.RLock()
    _js2py_traceDeltas = Dict(allow_none=True).tag(sync=True, echo_update=False, **custom_serializers)
    _js2py_layoutDelta = Dict(allow_none=True).tag(sync=True, echo_update=False, **custom_serializers)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._views_seen = False  # a view has reported in (so edits should be acknowledged)
        self._acked_edit = 0
        self._unacked_since: float | None = None
        super().__init__(*args, **kwargs)

    def _send_edit(self, name: str, msg: dict[str, Any]) -> None:
        with self.hold_sync():
            msg["trace_edit_id"] = self._last_trace_edit_id = self._last_trace_edit_id + 1
            msg["layout_edit_id"] = self._last_layout_edit_id = self._last_layout_edit_id + 1
            self._trace_edit_in_process = self._layout_edit_in_process = True
            setattr(self, name, msg)
        if self._unacked_since is None:
            self._unacked_since = time.monotonic()

    def _send_restyle_msg(self, restyle_data: dict, trace_indexes: Any = None, source_view_id: Any = None) -> None:
        self._send_edit("_py2js_restyle", {"restyle_data": restyle_data,
                                           "restyle_traces": self._normalize_trace_indexes(trace_indexes),
                                           "source_view_id": source_view_id})

    def _send_addTraces_msg(self, new_traces_data: list[dict]) -> None:
        self._send_edit("_py2js_addTraces", {"trace_data": new_traces_data})

    def _send_deleteTraces_msg(self, delete_inds: list[int]) -> None:
        self._send_edit("_py2js_deleteTraces", {"delete_inds": delete_inds})

    def _send_update_msg(self, restyle_data: dict, relayout_data: dict, trace_indexes: Any = None,
                         source_view_id: Any = None) -> None:
        self._send_edit("_py2js_update", {"style_data": restyle_data, "layout_data": relayout_data,
                                          "style_traces": self._normalize_trace_indexes(trace_indexes),
                                          "source_view_id": source_view_id})

    def restyle(self, restyle_data: dict[str, Any], trace_indexes: list[int], layout: dict[str, Any]) -> None:
        """``plotly_restyle`` that sends ``layout`` with it, in one message, even when it has not changed.

        plotly.js forgets an axis' type (other than log) whenever a trace's x or y data change, then guesses
        it again from the first trace on the axis; the per-layer chart's category axis came back linear and
        its points vanished. Sending the types with every data update keeps them.
        """
        indexes = self._normalize_trace_indexes(trace_indexes)
        changes = self._perform_plotly_restyle(restyle_data, indexes)
        self._perform_plotly_relayout(layout)
        self._send_update_msg(changes, layout, indexes)

    def set_state(self, sync_data: dict[str, Any]) -> None:
        with self._state_lock:
            super().set_state(sync_data)

    def _handler_js2py_traceDeltas(self, change: dict[str, Any]) -> None:  # replaces FigureWidget's observer
        msg = change["new"] or {}
        self._views_seen = True
        edit = msg.get("trace_edit_id") or 0
        if edit >= self._last_trace_edit_id:
            self._unacked_since = None
        self._acked_edit = max(self._acked_edit, edit)
        self._trace_edit_in_process = False

    def _handler_js2py_layoutDelta(self, change: dict[str, Any]) -> None:  # replaces FigureWidget's observer
        self._layout_edit_in_process = False

    @property
    def awaiting_view(self) -> bool:
        """True while a view that has reported in has not yet acknowledged the last edit (it is still drawing)."""
        return self._views_seen and self._unacked_since is not None

    def stalled(self, timeout: float) -> bool:
        """True when a view has shown this figure but has acknowledged no edit for ``timeout`` seconds.

        anywidget (0.11) gives a widget's JavaScript 2 s to load and start; past that, the model drops
        every later update, so the chart freezes while everything else works. The plotly bundle is 5 MB:
        on a busy machine that deadline is missed now and then. A stalled figure is replaced by a fresh one.
        """
        since = self._unacked_since
        return self._views_seen and since is not None and time.monotonic() - since > timeout

    def get_state(self, key: Any = None, drop_defaults: bool = False) -> dict[str, Any]:
        state = super().get_state(key=key, drop_defaults=drop_defaults)
        if key is not None or "_layout_obj" not in self.__dict__:  # an edit being sent, or still in __init__
            return state
        for name in state:
            if name.startswith("_py2js_"):  # a past edit, already part of the data below: never replay it
                state[name] = None
        fresh = {"_widget_data": lambda: self._data, "_widget_layout": lambda: self._layout_obj._props}
        for name, current in fresh.items():
            if name in state:
                with self._state_lock:
                    value = copy.deepcopy(current())
                to_json = self.trait_metadata(name, "to_json", self._trait_to_json)
                state[name] = to_json(value, self)
        return state


@dataclass
class _RunTraces:
    series: RunSeries
    colour: str
    label: str
    index: dict[str, int] = field(default_factory=dict)  # role -> trace index in the figure
    visible: bool = True


class ChartSet:
    """The lab's live charts: one ``FigureWidget`` (one 5 MB plotly bundle to load, not four) and the runs in it.

    ``add(series, colour, label)`` creates a run's traces (once its first record is in), ``update(series)``
    re-sends its arrays in one message, ``set_visible`` hides or shows a run, ``clear`` removes every run.
    All methods are thread-safe (the training thread draws, the kernel's thread toggles). A figure that no
    view acknowledges for ``stall_timeout`` seconds is replaced by a fresh copy (see ``LiveFigure.stalled``).
    """

    def __init__(self, max_points: int = 1000, height: int = 1000, stall_timeout: float = 6.0,
                 max_rebuilds: int = 3) -> None:
        self.max_points = max_points
        self.stall_timeout = stall_timeout
        self.max_rebuilds = max_rebuilds
        self.rebuilds = 0
        self.lock = LiveFigure._state_lock
        fig = base_figure(height)
        for name, (axis, text, _) in NOTES.items():
            fig.add_annotation(text=text, name=name, xref=f"{axis} domain", yref=f"{axis.replace('x', 'y')} domain",
                               x=0.5, y=0.5, showarrow=False, font={"size": 14, "color": "#777777"})
        self.figure = LiveFigure(fig)
        # A VBox stretches its child to the full width, so plotly sizes the figure to the page when it renders.
        self.box = widgets.VBox([self.figure], layout=widgets.Layout(width="100%"))
        self._runs: dict[str, _RunTraces] = {}
        self._notes_visible = dict.fromkeys(NOTES, True)
        self.draws = 0

    @property
    def widget(self) -> widgets.Widget:
        """The charts as one widget (a box holding the figure, so a stalled figure can be swapped)."""
        return self.box

    def __contains__(self, run_id: str) -> bool:
        return run_id in self._runs

    def add(self, series: RunSeries, colour: str, label: str, visible: bool = True,
            groups: list[str] | None = None) -> None:
        """Create the run's traces and draw what it has.

        ``groups`` names the layer groups of the norm chart before any record exists (so that the traces,
        plotly's slowest step, are made before the run starts rather than on its clock); groups that turn up
        in the records later are added then. Default: the groups of the records so far.
        """
        with self.lock:
            if series.run.id in self._runs:
                return
            entry = _RunTraces(series, colour, label, visible=visible)
            self._runs[series.run.id] = entry
            self._add_traces(entry, run_traces(series, colour, label, groups))
        self.update(series, force=True)

    def _add_traces(self, entry: _RunTraces, specs: list[TraceSpec]) -> None:
        fig = self.figure
        start = len(fig.data)
        for spec in specs:
            spec.trace.visible = entry.visible
        fig.add_traces([spec.trace for spec in specs], rows=[GRID[spec.slot][0] for spec in specs],
                       cols=[GRID[spec.slot][1] for spec in specs])
        entry.index.update({spec.role: start + i for i, spec in enumerate(specs)})

    def update(self, series: RunSeries, force: bool = False) -> bool:
        """Re-send the run's arrays (after ``series.sync()``) in one message; False if skipped.

        Flow control: while the browser has not acknowledged the previous update (it is still drawing), a
        new one is skipped unless ``force`` is set (the last update of a run), so a slow browser is never
        flooded and the page (and its Stop button) stays responsive.
        """
        entry = self._runs.get(series.run.id)
        if entry is None:
            return False
        with self.lock:
            self._heal()
            if not force and self.figure.awaiting_view:
                return False
            known = [role[6:] for role in entry.index if role.startswith("group/")]
            new_groups = [g for g in series.groups if g not in known]
            if new_groups:  # the records name layer groups the traces were not made for
                self._add_traces(entry, group_traces(series, entry.colour, entry.label, new_groups,
                                                     start=len(known), total=len(known) + len(new_groups)))
            new_columns = [c for c in series.group_columns if c not in entry.index]
            if new_columns:  # eff_lr/<group>, rel_update/<group>: known once the first record is in
                self._add_traces(entry, column_traces(series, entry.colour, entry.label, new_columns))
            roles = [role for role in entry.index if force or series.has_scale_data
                     or not role.startswith(("rms/", "fmt_"))]
            xs, ys = [], []
            for role in roles:
                x, y = trace_values(series, role, self.max_points)
                xs.append(x)
                ys.append(y)
            # Restyling skips per-assignment validation (the arrays are ours and well-formed).
            layout = dict(PINNED_AXES)
            loss_axis = loss_range(e.series for e in self._runs.values() if e.visible)
            if loss_axis is not None:
                layout["yaxis.range"] = loss_axis
            self.figure.restyle({"x": xs, "y": ys}, [entry.index[r] for r in roles], layout)
            self._update_note()
            self.draws += 1
        return True

    def _heal(self) -> None:
        if self.rebuilds < self.max_rebuilds and self.figure.stalled(self.stall_timeout):
            self.rebuilds += 1
            old = self.figure
            self.figure = LiveFigure(go.Figure(old))
            self.box.children = (self.figure,)
            old.close()

    def _update_note(self) -> None:
        """Say so in the scale and format charts when the latest shown run has nothing for them."""
        shown = [e for e in self._runs.values() if e.visible]
        for name, (_, _, has) in NOTES.items():
            note = not shown or not has(shown[-1].series)
            if note != self._notes_visible[name]:
                self.figure.update_annotations(selector={"name": name}, visible=note)
                self._notes_visible[name] = note

    def set_visible(self, run_id: str, visible: bool) -> None:
        """Show or hide every trace of one run."""
        with self.lock:
            entry = self._runs.get(run_id)
            if entry is None or entry.visible == visible:
                return
            entry.visible = visible
            self.figure.plotly_restyle({"visible": visible}, trace_indexes=list(entry.index.values()))
            self._update_note()

    def clear(self) -> None:
        """Remove every run's traces (the legend of line styles stays)."""
        with self.lock:
            fig = self.figure
            fig.data = [t for t in fig.data if t.legendgroup in KEY_GROUPS]
            self._runs.clear()
            self._update_note()

    def trace(self, run_id: str, role: str) -> Any:
        """The live trace of one run's role (``train``, ``val``, ``global``, ``rss``, ``mem_params``...)."""
        return self.figure.data[self._runs[run_id].index[role]]


def static_figure(entries: Iterable[tuple[RunSeries, str, str]], max_points: int = 2000,
                  title: str = "Unit Scaling Lab") -> go.Figure:
    """One standalone figure of the given runs (``(series, colour, label)``), laid out like the live panel.

    Each run has one legend entry; clicking it hides or shows that run in every subplot.
    """
    fig = base_figure(height=1100)
    entries = list(entries)
    for series, colour, label in entries:
        for spec in run_traces(series, colour, label):
            spec.trace.x, spec.trace.y = trace_values(series, spec.role, max_points)
            if spec.legend:
                spec.trace.update(showlegend=True, name=label)
            row, col = GRID[spec.slot]
            fig.add_trace(spec.trace, row=row, col=col)
    for axis, text, has in NOTES.values():
        if not any(has(series) for series, _, _ in entries):
            fig.add_annotation(text=text, xref=f"{axis} domain", yref=f"{axis.replace('x', 'y')} domain", x=0.5,
                               y=0.5, showarrow=False, font={"size": 14, "color": "#777777"})
    loss_axis = loss_range(series for series, _, _ in entries)
    if loss_axis is not None:
        fig.update_yaxes(range=loss_axis, row=1, col=1)
    fig.update_layout(title={"text": title, "x": 0.01}, margin={"t": 80})
    return fig
