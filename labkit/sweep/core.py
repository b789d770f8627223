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

Drivers share work: ``run()`` claims configs in the sweep index a few at a time (as many as it has workers),
under a lease it renews from a background thread while it runs. Start the same sweep in two terminals, or
on two machines sharing the runs folder, and each config is trained once; if one driver dies, its claims
lapse after ``lease`` seconds and the others take them over (they wait for live claims before returning).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
import threading
import time
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
            progress: bool = True, live: Any = False, on_result: ResultCallback | None = None,
            lease: float = 60.0) -> pd.DataFrame:
        """Train every config not done yet and return the sweep table (:meth:`table`).

        ``executor``: ``"sequential"``, ``"local"`` (worker processes, one per core), ``"dask"`` (a local Dask
        cluster), a Dask scheduler address such as ``"tcp://10.0.0.5:8786"``, a ``distributed.Client`` or an
        :class:`~labkit.sweep.executors.Executor`. ``workers``: processes for ``local``/``dask``.
        ``retries``: extra attempts for a run whose worker died. ``progress``: a progress bar over runs.
        ``live``: True to show the LR-transfer figure filling in (in Jupyter), or a ``FigureWidget`` /
        :class:`~labkit.sweep.live.SweepFigure` to draw into. ``on_result(row)`` is called with each ended
        run's table row. Ctrl-C stops the workers; what finished is kept and the next ``run()`` resumes.
        ``lease``: seconds a claim on a config lasts unless renewed (renewed every third of it while this
        driver lives; see the module docstring).

        An executor made here is closed at the end. An :class:`~labkit.sweep.executors.Executor` you pass is
        left running for your next sweep (its workers stay warm; close it when done), except after an error
        or Ctrl-C, when it is closed.
        """
        if retries < 0:
            raise ConfigError(f"retries must be >= 0, got {retries}")
        if not (isinstance(lease, int | float) and 1.0 <= lease <= 86400):
            raise ConfigError(f"lease must be between 1 and 86400 seconds, got {lease!r}")
        pool = make_executor(executor, workers)  # a bad executor is refused before the sweep is registered
        since = time.time()
        self.index.add(self.name, self.configs)
        states = self.index.states(self.name)
        todo = [k for k in self.keys if states[k][0] not in DONE_STATUSES]
        monitor = SweepMonitor(self.name, len(self), len(self) - len(todo), self.table(), progress, live)
        claims = _Claims(self.index, self.name, self.keys, lease, since)
        try:
            if todo:
                self._drive(pool, claims, retries, monitor, on_result)
        except BaseException:
            pool.close(cancel=True)  # tasks left running must not deliver results into a later sweep
            raise
        else:
            if pool is not executor:
                pool.close()
        finally:
            claims.close()
            monitor.close()
        return self.table()

    def _drive(self, pool: Executor, claims: _Claims, retries: int, monitor: SweepMonitor,
               on_result: ResultCallback | None) -> None:
        configs = dict(zip(self.keys, self.configs, strict=True))
        attempts: dict[str, int] = {}

        def submit_claimed(limit: int) -> None:
            for key, done_attempts in claims.claim(limit):
                attempts[key] = done_attempts
                pool.submit(Task(key, run_config, configs[key].to_dict()))

        pool.start()
        submit_claimed(pool.workers)
        while pool.pending or claims.others_working():
            if not pool.pending:  # other drivers hold the rest: wait for them to finish, or for their leases
                time.sleep(claims.poll_seconds)
                submit_claimed(pool.workers)
                continue
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
            submit_claimed(max(0, pool.workers - pool.pending))

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


class _Claims:
    """This driver's claims on the configs of one sweep: its owner name, and a thread renewing its leases."""

    def __init__(self, index: SweepIndex, sweep: str, keys: list[str], lease: float, since: float) -> None:
        self.index, self.sweep, self.keys, self.lease, self.since = index, sweep, keys, lease, since
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.poll_seconds = min(2.0, lease / 3)
        self._closed = threading.Event()
        self._renewer = threading.Thread(target=self._renew, name="labkit-sweep-lease", daemon=True)
        self._renewer.start()

    def claim(self, limit: int) -> list[tuple[str, int]]:
        return self.index.claim(self.sweep, self.owner, self.keys, limit, self.lease, self.since) if limit else []

    def others_working(self) -> bool:
        return self.index.claimed_by_others(self.sweep, self.owner, self.keys) > 0

    def _renew(self) -> None:
        while not self._closed.wait(self.lease / 3):
            self.index.renew(self.sweep, self.owner, self.lease)

    def close(self) -> None:
        """Stop renewing and release what is still claimed (a Ctrl-C'd driver's configs go to the others)."""
        self._closed.set()
        self._renewer.join()
        self.index.release(self.sweep, self.owner)


def _failed_run(task: Task, error: BaseException) -> Run:
    """The record of a run that never returned one (its worker died, or the executor failed)."""
    config = RunConfig.from_dict(task.arg)
    return Run(config, status=RunStatus.FAILED, error=f"{type(error).__name__}: {error}",
               info={"attempts": task.attempt})


def run_sweep(configs: Iterable[RunConfig | Mapping[str, Any]], name: str | None = None, *,
              root: str | os.PathLike | None = None, **run_options: Any) -> pd.DataFrame:
    """``Sweep(configs, name, root=root).run(**run_options)`` in one call."""
    return Sweep(configs, name, root=root).run(**run_options)
