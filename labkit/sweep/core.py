"""The sweep driver: run every config of a grid once, on any executor, saving each run as it ends.

    sweep = Sweep.from_grid(RunConfig(steps=200), name="lr-transfer",
                            scaling=["standard", "seed-l2-once"], width=[64, 128], lr=doubling(2**-10, 1))
    table = sweep.run()                      # local worker processes, progress bar
    table = sweep.run("dask")                # a Dask cluster on this machine
    table = sweep.run("tcp://10.0.0.5:8786") # a Dask cluster elsewhere
    sweep.figure(); sweep.best_lr()

A run is identified by a hash of its config (:func:`~labkit.sweep.grid.config_key`). ``run()`` skips the
configs whose run already finished or diverged in this sweep, so after a kernel restart, a Ctrl-C or a crash,
calling it again (same name, same runs folder) does only what is left. Failed runs are saved with their
error and never stop the sweep; a run whose worker died is retried ``retries`` times, then saved as failed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pandas as pd

from labkit.config import ConfigError, RunConfig
from labkit.runs import Run, RunStatus, RunStore
from labkit.sweep import analysis
from labkit.sweep.executors import Executor, Task, WorkerLost, make_executor, run_config
from labkit.sweep.grid import config_key, grid
from labkit.sweep.live import SweepMonitor
from labkit.sweep.store import DONE_STATUSES, SweepIndex, sweep_metrics

ResultCallback = Callable[[dict[str, Any]], None]


class Sweep:
    """A named list of run configs whose runs are saved, as they end, in a runs folder.

    ``configs``: RunConfig objects or their dicts (a config listed twice runs once). ``name``: how the sweep
    is found again; by default derived from the configs, so the same grid resumes under the same name.
    ``root``: the runs folder (default ``$LABKIT_RUNS_DIR`` or ``runs/``).
    """

    def __init__(self, configs: Iterable[RunConfig | Mapping[str, Any]], name: str | None = None, *,
                 root: str | os.PathLike | None = None) -> None:
        parsed = [c if isinstance(c, RunConfig) else RunConfig.from_dict(dict(c)) for c in configs]
        by_key = {config_key(c): c for c in parsed}  # a config listed twice runs once
        self.keys = list(by_key)
        self.configs = list(by_key.values())
        if not self.configs:
            raise ConfigError("a sweep needs at least one config")
        digest = hashlib.sha256("".join(sorted(self.keys)).encode()).hexdigest()[:8]
        self.name = name or f"sweep-{digest}"
        self.store = RunStore(root)
        self.index = SweepIndex(self.store.root)

    @classmethod
    def from_grid(cls, base: RunConfig | None = None, *, name: str | None = None,
                  root: str | os.PathLike | None = None, **axes: Iterable[Any]) -> Sweep:
        """``Sweep.from_grid(base, width=[64, 128], lr=[...])``: every combination (see :func:`grid`)."""
        return cls(grid(base, **axes), name, root=root)

    def __len__(self) -> int:
        return len(self.configs)

    def __repr__(self) -> str:
        return f"Sweep({self.name!r}, {len(self)} runs, root={str(self.store.root)!r})"

    def todo(self) -> list[RunConfig]:
        """Configs with no finished or diverged run in this sweep yet (what ``run()`` would train)."""
        states = self.index.states(self.name) if self.index.path.exists() else {}
        return [c for k, c in zip(self.keys, self.configs, strict=True)
                if states.get(k, ("pending", 0))[0] not in DONE_STATUSES]

    def run(self, executor: str | Executor | Any = "local", *, workers: int | None = None, retries: int = 1,
            progress: bool = True, live: Any = False, on_result: ResultCallback | None = None) -> pd.DataFrame:
        """Train every config not done yet and return the sweep table (:meth:`table`).

        ``executor``: ``"sequential"``, ``"local"`` (worker processes, one per core), ``"dask"`` (a local Dask
        cluster), a Dask scheduler address such as ``"tcp://10.0.0.5:8786"``, a ``distributed.Client`` or an
        :class:`~labkit.sweep.executors.Executor`. ``workers``: processes for ``local``/``dask``.
        ``retries``: extra attempts for a run whose worker died. ``progress``: a progress bar over runs.
        ``live``: True to show the LR-transfer figure filling in (in Jupyter), or a ``FigureWidget`` /
        :class:`~labkit.sweep.live.LiveFigure` to draw into. ``on_result(row)`` is called with each ended
        run's table row. Ctrl-C stops the workers; what finished is kept and the next ``run()`` resumes.

        An executor made here is closed at the end. An :class:`~labkit.sweep.executors.Executor` you pass is
        left running for your next sweep (its workers stay warm; close it when done), except after an error
        or Ctrl-C, when it is closed.
        """
        if retries < 0:
            raise ConfigError(f"retries must be >= 0, got {retries}")
        self.index.add(self.name, self.configs)
        states = self.index.states(self.name)
        todo = [(k, c) for k, c in zip(self.keys, self.configs, strict=True) if states[k][0] not in DONE_STATUSES]
        attempts = {k: states[k][1] for k, _ in todo}
        pool = make_executor(executor, workers)
        monitor = SweepMonitor(self.name, len(self), len(self) - len(todo), self.table(), progress, live)
        try:
            if todo:
                pool.start()
                self._drive(pool, todo, attempts, retries, monitor, on_result)
        except BaseException:
            pool.close(cancel=True)  # tasks left running must not deliver results into a later sweep
            raise
        else:
            if pool is not executor:
                pool.close()
        finally:
            monitor.close()
        return self.table()

    def _drive(self, pool: Executor, todo: list[tuple[str, RunConfig]], attempts: dict[str, int], retries: int,
               monitor: SweepMonitor, on_result: ResultCallback | None) -> None:
        for key, config in todo:
            pool.submit(Task(key, run_config, config.to_dict()))
        while pool.pending:
            task, outcome = pool.next_result()
            attempts[task.key] += 1
            if isinstance(outcome, WorkerLost) and task.attempt <= retries:
                pool.submit(task.retry())
                continue
            run = outcome if isinstance(outcome, Run) else _failed_run(task, outcome)
            self.store.save(run)  # the run's own folder first: the index row then points at a saved run
            self.index.record(self.name, task.key, run, attempts[task.key])
            table = self.table()
            row = table[table["key"] == task.key].iloc[0].to_dict()
            monitor.update(row, table)
            if on_result is not None:
                on_result(row)
            if run.status is RunStatus.STOPPED:  # Ctrl-C reached a run training in this process
                raise KeyboardInterrupt

    def table(self) -> pd.DataFrame:
        """One row per config of this sweep, in grid order: ``status`` (``pending`` until its run ends),
        ``attempts``, ``run_id``, ``error``, every config field, then the summary numbers (final losses,
        ``peak_lr``, throughput, memory including ``peak_cuda_mem`` on CUDA, ``device_used``, ``worker``,
        ``seconds``)."""
        table = self.index.table(self.name)
        return table[table["key"].isin(self.keys)].reset_index(drop=True)

    def metrics(self) -> pd.DataFrame:
        """Every step record of every saved run of the sweep, with ``run_id`` and ``key`` columns."""
        return sweep_metrics(self.table(), self.store.root)

    def best_lr(self, **kwargs: Any) -> pd.DataFrame:
        """:func:`labkit.sweep.analysis.best_lr` of this sweep."""
        return analysis.best_lr(self.table(), **kwargs)

    def figure(self, **kwargs: Any) -> Any:
        """:func:`labkit.sweep.analysis.lr_transfer_figure` of this sweep."""
        return analysis.lr_transfer_figure(self.table(), **kwargs)

    def paper_table(self, **kwargs: Any) -> pd.DataFrame:
        """:func:`labkit.sweep.analysis.paper_table` of this sweep."""
        return analysis.paper_table(self.table(), **kwargs)


def _failed_run(task: Task, error: BaseException) -> Run:
    """The record of a run that never returned one (its worker died, or the executor failed)."""
    config = RunConfig.from_dict(task.arg)
    return Run(config, status=RunStatus.FAILED, error=f"{type(error).__name__}: {error}",
               info={"attempts": task.attempt})


def run_sweep(configs: Iterable[RunConfig | Mapping[str, Any]], name: str | None = None, *,
              root: str | os.PathLike | None = None, **run_options: Any) -> pd.DataFrame:
    """``Sweep(configs, name, root=root).run(**run_options)`` in one call."""
    return Sweep(configs, name, root=root).run(**run_options)
