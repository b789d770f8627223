"""The live lab panel: controls → ``Trainer`` in a background thread → live charts and a table of runs.

    from labkit.ui import Lab
    lab = Lab(RunConfig(arch="lstm", steps=300))
    lab                                  # the panel: press Train, watch, press Stop, change a control, Train again
    lab.train(scaling="seed-l2-once")    # the same from code (blocks; for scripts and nbval)
    lab.figure()                         # a static go.Figure of every shown run; lab.to_html("runs.html")

Training runs in a ``threading.Thread`` so the kernel stays free for the Stop button. A run a notebook cell
trains (``lab.train()``) blocks the kernel instead, so cells run in order; Stop then interrupts the kernel through
its control channel and the run stops after its current step (``labkit.ui.stop``). Measured on a busy
2-core machine with a real kernel: a request sent while a run trains is answered in 40 ms (median; worst
0.3 s) with a thread, 83 ms (worst 2.4 s) with an asyncio task that yields after every step, and the
engine's loop is synchronous anyway; the browser tests show Stop working in JupyterLab and Voilà alike.

Drawing happens inside the engine's per-record callback, at most every ``refresh_interval`` seconds and no
more often than keeps it under ``max_ui_fraction`` of the run's time, so its cost is measured exactly
(``Lab.ui_overhead``, also printed in the status line) and bounded by construction. A run's traces are made
before its clock starts, and while the browser is still drawing the previous update the next is skipped.
"""

from __future__ import annotations

import html
import os
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from IPython.display import display

from labkit.config import ConfigError, RunConfig
from labkit.gallery import panel as static_panel
from labkit.palette import run_colour
from labkit.runs import Run, RunStatus, RunStore
from labkit.ui.charts import MIB, ChartSet, RunSeries, run_label, static_figure
from labkit.ui.controls import Controls, describe_lr
from labkit.ui.stop import StopButton, stop_on_interrupt

#: With no config given, per-layer scales are sampled every this many steps (they feed the fourth chart).
DEFAULT_SCALES_EVERY = 25

_STATUS_COLOURS = {"info": "#333333", "running": "#1f5fa8", "ok": "#1b7a34", "warn": "#a05a00",
                   "error": "#b00020"}


@dataclass
class RunEntry:
    """A run shown in the lab, with its colour, its chart data and what drawing it cost."""

    run: Run
    index: int
    colour: str
    series: RunSeries
    visible: bool = True
    ui_seconds: float = 0.0
    draws: int = 0
    started: float = field(default_factory=time.perf_counter)
    ended: float | None = None
    ui_error: str | None = None
    toggle: widgets.Checkbox | None = None
    stop_requested: float | None = None  # perf_counter() of the Stop click that ended it

    @property
    def label(self) -> str:
        return run_label(self.index, self.run)


class Lab:
    """The lab's panel: controls, Train/Stop/Reset, progress, status line, live charts and a run table.

    ``config`` is the starting point of the controls (and supplies the fields they do not show); by default
    ``RunConfig(scales_every=25)``, so the per-layer scale chart has data.
    Runs are saved to ``store`` (default: ``RunStore()``, i.e. ``runs/`` or ``$LABKIT_RUNS_DIR``) unless
    ``save=False``. Charts are redrawn at most every ``refresh_interval`` seconds and at most so often that
    drawing stays under ``max_ui_fraction`` of the elapsed time; each trace keeps at most ``max_points``.
    While a cell trains (``train()`` in the kernel's main thread) the browser's acknowledgements of each redraw
    wait for the cell to end, so the flow control of ``ChartSet.update`` is blind: redraws are then at most
    every ``cell_refresh_interval`` seconds, so that a slow browser cannot fall ever further behind.
    """

    def __init__(self, config: RunConfig | None = None, *, store: RunStore | None = None, save: bool = True,
                 refresh_interval: float = 0.2, max_ui_fraction: float = 0.03, max_points: int = 1000,
                 cell_refresh_interval: float = 0.5) -> None:
        self.store = store if store is not None else (RunStore() if save else None)
        self.refresh_interval = refresh_interval
        self.cell_refresh_interval = cell_refresh_interval
        self._interval = refresh_interval  # the one in force for the current run
        self.max_ui_fraction = max_ui_fraction
        self.controls = Controls(config if config is not None else RunConfig(scales_every=DEFAULT_SCALES_EVERY))
        self.charts = ChartSet(max_points=max_points)
        self.entries: list[RunEntry] = []
        self._colours_used = 0
        self._thread: threading.Thread | None = None
        self._trainer: Any = None
        self._active: RunEntry | None = None
        self._next_draw = 0.0
        self._lock = threading.RLock()
        self.status_text = ""
        self.status_kind = "info"

        self.train_button = widgets.Button(description="Train", button_style="primary", icon="play",
                                           tooltip="start a run with these settings (it is added to the charts)")
        self.stop_button = StopButton(disabled=True, tooltip="stop after the current step; the run is kept (also "
                                                            "a run that a notebook cell trains)")
        self.reset_button = widgets.Button(description="Reset", icon="trash",
                                           tooltip="remove every run from the charts and the table "
                                                   "(saved runs stay on disk)")
        self.train_button.on_click(self._on_train_click)
        self.stop_button.on_click(lambda _: self.stop())
        self.reset_button.on_click(lambda _: self.reset())
        self.progress = widgets.IntProgress(value=0, min=0, max=1, layout=widgets.Layout(width="260px"))
        self.progress_text = widgets.HTML()
        self.status = widgets.HTML(layout=widgets.Layout(width="100%"))
        self.toggles = widgets.HBox(layout=widgets.Layout(flex_flow="row wrap"))
        self.table_html = widgets.HTML()
        self.controls.on_change(self._controls_changed)
        self._set_status("Ready: choose settings and press Train.", "info")

    # -- display ---------------------------------------------------------------------------------------------
    @property
    def widget(self) -> widgets.Widget:
        """The whole panel as one ipywidget."""
        if not hasattr(self, "_widget"):
            buttons = widgets.HBox([self.train_button, self.stop_button, self.reset_button, self.progress,
                                    self.progress_text], layout=widgets.Layout(align_items="center",
                                                                               flex_flow="row wrap"))
            runs_header = widgets.HTML("<b>Runs</b> <small>(tick to show in the charts)</small>")
            self._widget = widgets.VBox([self.controls.widget, buttons, self.status, self.charts.widget,
                                         runs_header, self.toggles, self.table_html],
                                        layout=widgets.Layout(width="100%"))
            self._widget.add_class("labkit-lab")
        return self._widget

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any] | None:
        return self.widget._repr_mimebundle_(**kwargs)

    def _ipython_display_(self) -> None:
        if static_panel.requested():  # the gallery's static pages show the final figure instead (labkit.gallery)
            static_panel.show(self)
        else:
            display(self.widget)

    # -- state -----------------------------------------------------------------------------------------------
    @property
    def runs(self) -> list[Run]:
        """Every run in the lab, oldest first."""
        return [e.run for e in self.entries]

    @property
    def running(self) -> bool:
        """Whether a run is training in the background now."""
        return self._thread is not None and self._thread.is_alive()

    def config(self) -> RunConfig:
        """The RunConfig the controls describe now (``ConfigError`` if a value is invalid)."""
        return self.controls.config()

    def entry(self, run: Run | str | int) -> RunEntry:
        """The lab's entry for a run given as a Run, its id, or its number (1-based, as in the table)."""
        for i, e in enumerate(self.entries):
            if e.run is run or e.run.id == run or (isinstance(run, int) and i + 1 == run):
                return e
        raise KeyError(f"no run {run!r} in this lab")

    # -- starting and stopping -------------------------------------------------------------------------------
    def start(self, config: RunConfig | None = None, **overrides: Any) -> Run:
        """Start a run in a background thread and return it at once (what the Train button does).

        ``config`` (default: the controls' settings) with ``overrides`` applied is shown in the controls.
        A setting that cannot run raises (``ConfigError``, ``ResourceError``, ``NotImplementedError``) after
        stating the problem in the status line; nothing is started then.
        """
        entry, trainer = self._prepare(config, overrides)
        thread = threading.Thread(target=self._execute, args=(entry, trainer, False), name="labkit-train",
                                  daemon=True)
        self._thread = thread
        thread.start()
        return entry.run

    def train(self, config: RunConfig | None = None, **overrides: Any) -> Run:
        """Train one run to its end in the calling thread, drawing it live, and return it.

        The programmatic twin of the Train button, for scripts and notebooks run headless. Errors of the
        setting or of the run are shown in the status line and raised. In the kernel's main thread, Stop (and
        the notebook's interrupt ■) stops the run after its current step and the cell ends normally.
        """
        entry, trainer = self._prepare(config, overrides)
        with stop_on_interrupt(lambda: self._interrupted(entry, trainer), self.stop_button) as in_cell:
            self._interval = max(self.refresh_interval, self.cell_refresh_interval) if in_cell else \
                self.refresh_interval
            try:
                self._execute(entry, trainer, True)
            finally:
                self._interval = self.refresh_interval
        return entry.run

    @staticmethod
    def _interrupted(entry: RunEntry, trainer: Any) -> None:
        """SIGINT while a cell trains (a signal handler: set flags, nothing else)."""
        if entry.stop_requested is None:
            entry.stop_requested = time.perf_counter()
        trainer.stop()

    def wait(self, timeout: float | None = None) -> Run | None:
        """Wait for the background run to end (at most ``timeout`` seconds); return the latest run."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return self.entries[-1].run if self.entries else None

    def stop(self) -> None:
        """Ask the current run to stop after its current step (thread-safe). The run is kept."""
        trainer, entry = self._trainer, self._active
        if trainer is None or entry is None:
            self._set_status("Nothing is training.", "info")
            return
        entry.stop_requested = time.perf_counter()
        trainer.stop()
        self.stop_button.disabled = True
        self._set_status(f"Stopping run {entry.label} after the current step…", "running")

    def reset(self) -> None:
        """Stop any run, then remove every run from the charts and the table (saved runs stay on disk)."""
        if self.running:
            self.stop()
            self.wait(30)
        with self._lock:
            self.charts.clear()
            self.entries.clear()
            self._colours_used = 0
            self.toggles.children = ()
            self.table_html.value = ""
            self.progress.value = 0
            self.progress_text.value = ""
        where = f" (saved runs stay in {self.store.root})" if self.store is not None else ""
        self._set_status(f"Cleared{where}. Press Train to start again.", "info")

    def add_run(self, run: Run, visible: bool = True) -> RunEntry:
        """Show an existing run (e.g. ``RunStore().load(id)``) beside the lab's own runs."""
        entry = self._new_entry(run, visible)
        entry.series.sync()
        if entry.series.n:
            self.charts.add(entry.series, entry.colour, entry.label, visible=visible)
        entry.ended = entry.started
        self._refresh_table()
        return entry

    def _prepare(self, config: RunConfig | None, overrides: dict[str, Any]) -> tuple[RunEntry, Any]:
        from labkit.train import Trainer, check_memory, load_corpus, peak_learning_rate

        if self.running:
            message = "A run is still training: press Stop (or wait for it) before starting another."
            self._set_status(message, "warn")
            raise RuntimeError(message)
        try:
            if config is None:  # the controls' values, overridden (so an override can fix a bad control)
                config = self.controls.base.replace(**{**self.controls.values(), **overrides})
            elif overrides:
                config = config.replace(**overrides)
            if config is not self.controls.base:
                self.controls.set_config(config)
            peak_learning_rate(config)  # NotImplementedError for a scaling method that is not there yet
            corpus = load_corpus(config.corpus, config.tokenizer.value, config.val_fraction)
            check_memory(config, corpus.tokenizer.vocab_size)  # ResourceError: refused before anything starts
        except Exception as exc:
            self._set_status(f"Can't start: {_message(exc)}", "error")
            raise
        trainer = Trainer(config, store=self.store, corpus=corpus)
        entry = self._new_entry(trainer.run, True)
        trainer.callbacks.append(lambda run, record: self._on_record(entry, record))
        # Make the run's (empty) traces now, in this thread, before the run's clock starts.
        try:
            groups: list[str] | None = layer_groups(config, corpus.tokenizer.vocab_size)
        except Exception:  # the charts then take the groups from the first record
            groups = None
        self.charts.add(entry.series, entry.colour, entry.label, groups=groups)
        self._trainer, self._active = trainer, entry
        self._next_draw = 0.0
        self.progress.max, self.progress.value = config.steps, 0
        self.progress.bar_style = ""
        self.progress_text.value = f"step 0 / {config.steps:,}"
        self.train_button.disabled, self.stop_button.disabled = True, False
        lr = ("auto " if config.lr is None else "") + f"lr {describe_lr(peak_learning_rate(config))}"
        self._set_status(f"Training run {entry.label}: {_describe(config)}, {lr}…", "running")
        self._refresh_table()
        return entry, trainer

    def _new_entry(self, run: Run, visible: bool) -> RunEntry:
        with self._lock:
            entry = RunEntry(run=run, index=len(self.entries), colour=run_colour(self._colours_used),
                             series=RunSeries(run), visible=visible)
            self._colours_used += 1
            self.entries.append(entry)
            toggle = widgets.Checkbox(value=visible, indent=False, description=entry.label,
                                      layout=widgets.Layout(width="auto", margin="0 12px 0 0"))
            toggle.observe(lambda change, e=entry: self.set_visible(e.run, change["new"]), names="value")
            entry.toggle = toggle
            swatch = widgets.HTML(f"<span style='display:inline-block;width:14px;height:14px;margin-top:6px;"
                                  f"background:{entry.colour};border-radius:3px'></span>")
            self.toggles.children = (*self.toggles.children, widgets.HBox([swatch, toggle]))
        return entry

    def _execute(self, entry: RunEntry, trainer: Any, reraise: bool) -> None:
        """Run the trainer (in whichever thread calls this) and report how it ended; never loses an error."""
        entry.started = time.perf_counter()
        error: BaseException | None = None
        try:
            trainer.train()
        except BaseException as exc:  # the engine has recorded it on the run; make sure the user sees it
            error = exc
        finally:
            entry.ended = time.perf_counter()
            try:
                self._finish(entry, error)
            except Exception as exc:  # drawing failed: the status line must still say what happened
                self._set_status(f"Run {entry.label} ended ({entry.run.status.value}) but the panel could not be "
                                 f"updated: {_message(exc)}", "error", traceback.format_exc())
            self._trainer, self._active = None, None
            self.train_button.disabled, self.stop_button.disabled = False, True
        if error is not None and reraise:
            raise error

    # -- drawing ---------------------------------------------------------------------------------------------
    def _on_record(self, entry: RunEntry, record: dict[str, float]) -> None:
        """The engine's callback (training thread): redraw when due, and account for the time it takes."""
        start = time.perf_counter()
        if start < self._next_draw:
            entry.ui_seconds += time.perf_counter() - start
            return
        drawn = "failed"
        try:
            drawn = self._draw(entry)
        except Exception as exc:  # a drawing bug must not kill the run, nor vanish
            if entry.ui_error is None:
                entry.ui_error = _message(exc)
                self._set_status(f"Run {entry.label} is training, but the charts failed to update: "
                                 f"{entry.ui_error}", "warn", traceback.format_exc())
        end = time.perf_counter()
        cost = end - start
        entry.ui_seconds += cost
        # Space redraws so that drawing stays under max_ui_fraction of the time; creating a run's traces is a
        # one-off cost and does not hold back the next redraw.
        pause = cost / self.max_ui_fraction if drawn == "updated" else 0.0
        self._next_draw = end + max(self._interval, pause)

    def _draw(self, entry: RunEntry, final: bool = False) -> str:
        """Bring the run's charts and progress up to date: 'added', 'updated', 'skipped' (view busy) or 'empty'."""
        series = entry.series
        series.sync()
        if not series.n:
            return "empty"
        if entry.run.id not in self.charts:
            self.charts.add(series, entry.colour, entry.label, visible=entry.visible)
            drawn = "added"
        else:
            drawn = "updated" if self.charts.update(series, force=final) else "skipped"
        if drawn != "skipped":
            entry.draws += 1
        self._draw_progress(entry)
        return drawn

    def _draw_progress(self, entry: RunEntry) -> None:
        series, cfg = entry.series, entry.run.config
        step = int(series.column("step")[-1]) if series.n else 0
        self.progress.value = min(step, self.progress.max)
        rates = series.column("tokens_per_s")[-20:]
        rates = rates[np.isfinite(rates)]
        rate = f" · {np.median(rates):,.0f} tokens/s" if len(rates) else ""
        elapsed = time.perf_counter() - entry.started
        if entry.ended is None and step:
            eta = f" · ETA {_duration(elapsed / step * (cfg.steps - step))}"
        else:
            eta = f" · took {_duration((entry.ended or time.perf_counter()) - entry.started)}"
        self.progress_text.value = f"step {step:,} / {cfg.steps:,}{rate}{eta}"

    def _finish(self, entry: RunEntry, error: BaseException | None) -> None:
        run = entry.run
        start = time.perf_counter()
        self._draw(entry, final=True)
        entry.ui_seconds += time.perf_counter() - start
        if entry.run.id not in self.charts and entry.series.n:
            self.charts.add(entry.series, entry.colour, entry.label, visible=entry.visible)
        saved = f" Saved in {self.store.root / run.id}." if self.store is not None else ""
        cost = self.ui_overhead(entry.run)
        if run.status in (RunStatus.FINISHED, RunStatus.STOPPED) and cost["wall_seconds"] > 0:
            saved += f" Drawing took {cost['fraction']:.1%} of its time."
        status, step = run.status, run.last_step
        if status is RunStatus.FINISHED:
            summary = run.summary()
            val = summary.get("final_val_loss")
            val_text = f", validation loss {val:.3f}" if val is not None else ""
            rate = summary.get("tokens_per_s")
            rate_text = f", {rate:,.0f} tokens/s" if rate else ""
            self.progress.bar_style = "success"
            not_learned = run.info.get("did_not_learn")
            if not_learned:
                self._set_status(f"Run {entry.label} finished {step:,} steps but did not learn: {not_learned}."
                                 f"{saved}", "warn")
            else:
                self._set_status(f"Run {entry.label} finished: {step:,} steps{val_text}{rate_text}.{saved}", "ok")
        elif status is RunStatus.STOPPED:
            self.progress.bar_style = "warning"
            after = (f" {entry.ended - entry.stop_requested:.2f} s after Stop" if entry.stop_requested is not None
                     and entry.ended is not None else "")
            self._set_status(f"Run {entry.label} stopped at step {step:,} of {run.config.steps:,}{after}; "
                             f"its {len(run.records):,} records are kept.{saved}", "warn")
        elif status is RunStatus.DIVERGED:
            self.progress.bar_style = "danger"
            self._set_status(f"Run {entry.label} diverged: {run.error}.{saved}", "error")
        else:
            self.progress.bar_style = "danger"
            message = run.error or (_message(error) if error is not None else "unknown error")
            details = run.info.get("traceback") or (
                "".join(traceback.format_exception(error)) if error is not None else None)
            self._set_status(f"Run {entry.label} failed: {message}.{saved}", "error", details)
        self._refresh_table()
        static_panel.update(self)

    def set_visible(self, run: Run | str | int, visible: bool) -> None:
        """Show or hide one run's traces in every chart (what the run's checkbox does)."""
        entry = self.entry(run)
        entry.visible = visible
        if entry.toggle is not None and entry.toggle.value != visible:
            entry.toggle.value = visible
        self.charts.set_visible(entry.run.id, visible)
        self._refresh_table()

    # -- status, table, export ---------------------------------------------------------------------------------
    def _set_status(self, text: str, kind: str = "info", details: str | None = None) -> None:
        self.status_text, self.status_kind = text, kind
        body = (f"<div class='labkit-status labkit-status-{kind}' style='color:{_STATUS_COLOURS[kind]};"
                f"padding:4px 0'>{html.escape(text)}</div>")
        if details:
            body += f"<details><summary>details</summary><pre style='font-size:11px'>{html.escape(details)}</pre>" \
                    "</details>"
        self.status.value = body

    def _controls_changed(self) -> None:
        if self.running or self.status_kind in ("running",):
            return
        try:
            self.controls.config()
        except ConfigError as exc:
            self._set_status(f"Can't start: {_message(exc)}", "error")
            return
        if self.status_kind == "error" and self.status_text.startswith("Can't start"):
            self._set_status("Ready: press Train.", "info")

    def table(self) -> pd.DataFrame:
        """One row per run, indexed by its label: status, what differs from run #1, final losses (3 decimals),
        throughput (tokens/s), peak memory and RSS (MiB, 1 decimal), parameters and run id."""
        df = self._table_rows()
        if df.empty:
            return df
        df = df.drop(columns=["shown"]).set_index("run")
        df.index.name = None
        rounded = {"train loss": 3, "val loss": 3, "tokens/s": 0, "peak memory (MiB)": 1, "peak RSS (MiB)": 1}
        df = df.round(rounded)
        for column in ("tokens/s", "parameters"):
            df[column] = df[column].astype("Int64")
        return df

    def _table_rows(self) -> pd.DataFrame:
        rows = []
        reference = self.entries[0].run.config if self.entries else None
        for i, e in enumerate(self.entries):
            run = e.run
            summary = run.summary()
            diff = run.config.diff(reference) if reference is not None else {}
            changes = ", ".join(f"{k}={_short(a)}" for k, (a, _) in diff.items())
            rows.append({
                "run": e.label, "status": run.status.value, "shown": e.visible,
                "setup": _describe(run.config), "vs #1": changes or ("(reference)" if i == 0 else "(same)"),
                "steps": run.last_step, "train loss": summary.get("final_train_loss"),
                "val loss": summary.get("final_val_loss"), "tokens/s": summary.get("tokens_per_s"),
                "peak memory (MiB)": _mib(summary.get("peak_mem_total")),
                "peak RSS (MiB)": _mib(summary.get("peak_rss")), "parameters": run.info.get("parameters"),
                "run id": run.id,
            })
        return pd.DataFrame(rows)

    def _refresh_table(self) -> None:
        df = self._table_rows()
        if df.empty:
            self.table_html.value = ""
            return
        shown = df.drop(columns=["shown"])
        swatches = [f"<span style='color:{e.colour};font-size:16px'>■</span> {html.escape(e.label)}"
                    for e in self.entries]
        formats = {"train loss": ".4g", "val loss": ".4g", "tokens/s": ",.0f", "peak memory (MiB)": ",.1f",
                   "peak RSS (MiB)": ",.0f", "parameters": ",.0f"}
        shown = shown.assign(run=swatches, **{col: shown[col].map(_fmt(spec)) for col, spec in formats.items()})
        shown["status"] = [_status_html(e.run) for e in self.entries]
        shown = shown.rename(columns={"train loss": "train", "val loss": "val", "peak memory (MiB)": "mem MiB",
                                      "peak RSS (MiB)": "RSS MiB", "parameters": "params"})
        table = shown.to_html(index=False, escape=False, border=0, classes="labkit-runs")
        # Short one-line headers and a wrapping "setup" column: the table fits the panel without scrolling.
        style = ("<style>.labkit-runs{border-collapse:collapse;font-size:12px;width:100%;table-layout:auto}"
                 ".labkit-runs th,.labkit-runs td{padding:2px 6px;border-bottom:1px solid #ddd;text-align:left}"
                 ".labkit-runs th{white-space:nowrap}.labkit-runs td:nth-child(3),.labkit-runs td:nth-child(4)"
                 "{white-space:normal;min-width:160px}.labkit-runs td:last-child{font-size:10px;color:#777}</style>")
        self.table_html.value = style + table

    def ui_overhead(self, run: Run | str | int | None = None) -> dict[str, float]:
        """What drawing cost a run: seconds in the UI, the run's wall time, their ratio and the redraw count."""
        entry = self.entry(run) if run is not None else self.entries[-1]
        wall = (entry.ended or time.perf_counter()) - entry.started
        return {"ui_seconds": entry.ui_seconds, "wall_seconds": wall,
                "fraction": entry.ui_seconds / wall if wall > 0 else float("nan"), "draws": entry.draws}

    def figure(self, runs: list[Run | str | int] | None = None) -> go.Figure:
        """A static plotly figure of the shown runs (or of ``runs``): no kernel needed to view it."""
        entries = [self.entry(r) for r in runs] if runs is not None else [e for e in self.entries if e.visible]
        for e in entries:
            e.series.sync()
        return static_figure([(e.series, e.colour, e.label) for e in entries])

    def to_html(self, path: str | os.PathLike, include_plotlyjs: bool | str = True) -> Path:
        """Write the charts and the run table to one standalone HTML file (plotly.js inlined by default)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig = self.figure().to_html(full_html=False, include_plotlyjs=include_plotlyjs)
        self._refresh_table()
        page = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>Unit Scaling Lab runs</title></head>"
                f"<body style='font-family:sans-serif'>{fig}<h3>Runs</h3>{self.table_html.value}</body></html>")
        path.write_text(page, encoding="utf-8")
        return path

    def _on_train_click(self, _button: Any) -> None:
        try:
            self.start()
        except Exception as exc:  # already in the status line; a button handler has nowhere else to say it
            if self.status_kind != "error" and self.status_kind != "warn":
                self._set_status(f"Can't start: {_message(exc)}", "error", traceback.format_exc())


def layer_groups(config: RunConfig, vocab_size: int) -> list[str]:
    """The layer groups (``labkit.instrument.layer_of``) whose norms a run will record, from a model built on
    PyTorch's ``meta`` device (no memory, no initialisation): it lets the charts be made before the run."""
    import torch

    from labkit.instrument import clean_name, layer_of
    from labkit.models import build_model

    with torch.device("meta"):
        model = build_model(config.model_config(vocab_size))
    return list(dict.fromkeys(layer_of(clean_name(n)) for n, p in model.named_parameters() if p.requires_grad))


_RUN_STATUS_COLOURS = {"diverged": "#b00020", "failed": "#b00020", "stopped": "#a05a00", "running": "#1f5fa8"}


def _status_html(run: Run) -> str:
    """A run's status for the table: diverged and failed in red, with the reason on hover; "did not learn" noted."""
    status = run.status.value
    colour = _RUN_STATUS_COLOURS.get(status, "#1b7a34")
    reason = run.error or run.info.get("did_not_learn") or ""
    note = " <small>(did not learn)</small>" if status == "finished" and run.info.get("did_not_learn") else ""
    return (f"<span class='labkit-run-{status}' style='color:{colour};font-weight:600' title='{html.escape(reason)}'>"
            f"{status}</span>{note}")


def _message(exc: BaseException) -> str:
    text = str(exc).strip()
    if isinstance(exc, ConfigError | NotImplementedError) or type(exc).__name__ == "ResourceError":
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _describe(cfg: RunConfig) -> str:
    return (f"{cfg.arch.value} {cfg.width}×{cfg.depth}, {cfg.scaling.value}, {cfg.optimizer.value}, "
            f"{cfg.format.value}, {cfg.steps:,} steps × {cfg.batch_size}×{cfg.seq_len} tokens")


def _short(value: Any) -> str:
    if value is None:
        return "auto"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _mib(value: Any) -> float | None:
    return value / MIB if value is not None else None


def _fmt(spec: str):
    def fmt(value: Any) -> str:
        if value is None or pd.isna(value):
            return "–"
        return format(value, spec)
    return fmt


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d} min" if minutes < 60 else f"{minutes // 60}:{minutes % 60:02d} h"


__all__ = ["Lab", "RunEntry", "layer_groups"]
