"""Sweeps: grids of runs trained in this process, in local worker processes or on a Dask cluster.

    from labkit import RunConfig
    from labkit.sweep import Sweep, doubling

    sweep = Sweep.from_grid(RunConfig(steps=200), name="lr-transfer", scaling=["standard", "seed-l2-once"],
                            width=[64, 128], lr=doubling(2**-10, 2**0))
    sweep.run(live=True)        # executor="local" | "sequential" | "dask" | "tcp://host:8786"
    sweep.best_lr(); sweep.figure(); sweep.paper_table()
    load_sweep("lr-transfer")   # after a restart: the same table, from runs/sweeps.sqlite

Modules: :mod:`~labkit.sweep.grid` (grids, config keys, ranges), :mod:`~labkit.sweep.core` (the driver),
:mod:`~labkit.sweep.executors`, :mod:`~labkit.sweep.store` (the SQLite index over the run store),
:mod:`~labkit.sweep.analysis` (best LR, LR-transfer figure, tables), :mod:`~labkit.sweep.live`;
``python -m labkit sweep`` is in :mod:`labkit.cli`.
"""

from labkit.cli import parse_values
from labkit.sweep.analysis import best_lr, lr_shift, lr_transfer_figure, paper_table
from labkit.sweep.core import Sweep, run_sweep
from labkit.sweep.executors import (
    DaskExecutor,
    Executor,
    LocalExecutor,
    SequentialExecutor,
    Task,
    WorkerLost,
    WorkerStartError,
    make_executor,
)
from labkit.sweep.grid import config_key, doubling, grid
from labkit.sweep.live import SweepFigure
from labkit.sweep.store import SweepIndex, list_sweeps, load_sweep

__all__ = ["DaskExecutor", "Executor", "LocalExecutor", "SequentialExecutor", "Sweep", "SweepFigure", "SweepIndex",
           "Task", "WorkerLost", "WorkerStartError", "best_lr", "config_key", "doubling", "grid",
           "list_sweeps", "load_sweep", "lr_shift", "lr_transfer_figure", "make_executor", "paper_table",
           "parse_values", "run_sweep"]
