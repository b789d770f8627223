"""Sweeps for notebooks: thin calls into :class:`labkit.sweep.Sweep` that train in a temporary folder (unless
told where) and keep the table and the runs in memory."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from labkit.config import RunConfig
from labkit.runs import Run


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


def sweep_in_memory(configs: Sequence[RunConfig], name: str, executor: str = "sequential",
                    root: str | os.PathLike | None = None) -> SweepResult:
    """Run ``configs`` as one :class:`labkit.sweep.Sweep` on ``executor`` in :func:`runs_folder` ``(root, name)``
    and load its table and every saved run into memory (the folder may be gone once this returns)."""
    from labkit.sweep import Sweep

    with runs_folder(root, name) as folder:
        sweep = Sweep(configs, name=name, root=folder)
        sweep.run(executor, progress=False)
        table = sweep.table()
        runs = {run_id: sweep.store.load(run_id) for run_id in table["run_id"].dropna()}
    return SweepResult(name, table, runs)


def lr_sweep(base: RunConfig, lrs: Sequence[float], name: str, root: str | os.PathLike | None = None,
             executor: str = "sequential", **axes: Sequence[Any]) -> SweepResult:
    """Train ``base`` at every learning rate in ``lrs`` for every combination of ``axes`` (e.g.
    ``scaling=[...]``, ``width=[...]``) with :mod:`labkit.sweep` on ``executor`` ("sequential", "local": one
    worker process per core, ...). Runs are saved under ``root`` if given, else in a temporary folder that is
    deleted once the results are loaded (see :func:`runs_folder`)."""
    from labkit.sweep import grid

    return sweep_in_memory(grid(base, lr=list(lrs), **axes), name, executor, root)


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


def run_configs(configs: Mapping[str, RunConfig], name: str, executor: str = "sequential",
                root: str | os.PathLike | None = None) -> dict[str, Run]:
    """Train several labelled configs as one :mod:`labkit.sweep` (any executor; saved under ``root`` if given,
    else in a temporary folder, see :func:`runs_folder`) and return their runs, with metrics, by label."""
    from labkit.sweep import config_key

    result = sweep_in_memory(list(configs.values()), name, executor, root)
    table = result.frame.set_index("key")
    return {label: result.runs.get(table.loc[config_key(config), "run_id"]) for label, config in configs.items()}


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
