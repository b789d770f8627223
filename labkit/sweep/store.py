"""The sweep index: which runs belong to which sweep, and how each ended, in one SQLite file.

Runs themselves stay in the ordinary :class:`labkit.runs.RunStore` format (a folder per run with
``run.json`` and ``metrics.csv``). Next to them, ``<runs dir>/sweeps.sqlite`` holds one row per
(sweep, config): the config's stable key, its status (``pending`` until a result arrives), attempts,
the run id in the store, the error if any, and the run's summary numbers. Every write is one SQLite
transaction, so an interrupted sweep leaves either the old row or the new one, never half of one.
Only the processes driving a sweep write; workers (possibly on other machines) never touch the disk.

Several drivers may run the same sweep at once (on one runs folder): each *claims* the configs it trains
(:meth:`SweepIndex.claim`, one ``BEGIN IMMEDIATE`` transaction, so two drivers never claim the same row). A
claim names its ``owner`` and holds until ``lease_until``; the driver renews its leases while it runs, so a
driver that dies loses its claims within one lease and another driver takes them over.

Any tool reads it: ``pandas.read_sql("select * from sweep_runs", sqlite3.connect("runs/sweeps.sqlite"))``
or ``sqlite3 runs/sweeps.sqlite``; :func:`load_sweep` returns the tidy DataFrame.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from labkit.config import RunConfig
from labkit.runs import Run, RunStore, default_runs_dir
from labkit.sweep.grid import config_key

INDEX_FILE = "sweeps.sqlite"
PENDING = "pending"
DONE_STATUSES = ("finished", "diverged")  # a resumed sweep skips these; failed and stopped runs run again

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sweep_runs (
    sweep     TEXT NOT NULL,
    key       TEXT NOT NULL,     -- sha256 of the config's JSON (labkit.sweep.config_key)
    position  INTEGER NOT NULL,  -- order in the grid
    status    TEXT NOT NULL,     -- pending, finished, diverged, failed, stopped
    attempts  INTEGER NOT NULL,
    run_id    TEXT,              -- folder in the run store
    error     TEXT,
    config    TEXT NOT NULL,     -- RunConfig.to_json()
    summary   TEXT,              -- JSON: final losses, throughput, memory, worker, seconds, ...
    updated   REAL NOT NULL,
    owner     TEXT,              -- the driver training it now (host:pid:token), NULL when unclaimed
    lease_until REAL,            -- the claim lapses at this time unless its owner renews it
    PRIMARY KEY (sweep, key)
)"""
_CLAIM_COLUMNS = {"owner": "TEXT", "lease_until": "REAL"}  # added to index files written before claims

# Summary columns of the sweep table, in display order (present even before any run has finished).
SUMMARY_COLUMNS = ["final_train_loss", "final_val_loss", "best_val_loss", "steps_done", "peak_lr", "tokens_per_s",
                   "peak_mem_total", "peak_rss", "peak_cuda_mem", "parameters", "flops_per_step",
                   "device_used", "worker", "seconds"]
INDEX_COLUMNS = ["sweep", "position", "key", "status", "attempts", "run_id", "error", "owner"]


def summarize(run: Run) -> dict[str, Any]:
    """The numbers of a run that go into its sweep row (non-finite floats become None: valid JSON)."""
    summary = run.summary()
    out: dict[str, Any] = {k: summary.get(k) for k in SUMMARY_COLUMNS if k in summary}
    out["steps_done"] = summary.get("steps")
    for name in ("peak_lr", "worker", "seconds"):
        out[name] = run.info.get(name)
    out["device_used"] = run.info.get("device")  # what device="auto" resolved to
    metrics = run.metrics
    if "mem_cuda_peak" in metrics and metrics["mem_cuda_peak"].notna().any():
        out["peak_cuda_mem"] = int(metrics["mem_cuda_peak"].max())
    return {k: _finite_or_none(v) for k, v in out.items()}


def _finite_or_none(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    return None if isinstance(value, float) and not math.isfinite(value) else value


class SweepIndex:
    """The ``sweeps.sqlite`` file of a runs folder (created on first write)."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root is not None else default_runs_dir()
        self.path = self.root / INDEX_FILE

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self.root.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=60)
        try:
            with connection:  # commits on success, rolls back on any error
                connection.execute(_SCHEMA)
                columns = {row[1] for row in connection.execute("PRAGMA table_info(sweep_runs)")}
                for name, kind in _CLAIM_COLUMNS.items():
                    if name not in columns:
                        connection.execute(f"ALTER TABLE sweep_runs ADD COLUMN {name} {kind}")
                yield connection
        finally:
            connection.close()

    def add(self, sweep: str, configs: Iterable[RunConfig]) -> None:
        """Register configs as members of ``sweep`` (status ``pending``); rows already there are kept."""
        now = time.time()
        rows = [(sweep, config_key(c), i, PENDING, 0, c.to_json(), now) for i, c in enumerate(configs)]
        with self._transaction() as db:
            db.executemany("INSERT OR IGNORE INTO sweep_runs (sweep, key, position, status, attempts, config, "
                           "updated) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)

    def states(self, sweep: str) -> dict[str, tuple[str, int]]:
        """``{key: (status, attempts)}`` of every member of ``sweep``."""
        with self._transaction() as db:
            rows = db.execute("SELECT key, status, attempts FROM sweep_runs WHERE sweep = ?", (sweep,)).fetchall()
        return {key: (status, attempts) for key, status, attempts in rows}

    def record(self, sweep: str, key: str, run: Run, attempts: int) -> None:
        """Store how the run of ``key`` ended and release its claim (call after the run itself is saved in
        the run store)."""
        summary = json.dumps(summarize(run))
        with self._transaction() as db:
            db.execute("UPDATE sweep_runs SET status = ?, attempts = ?, run_id = ?, error = ?, summary = ?, "
                       "updated = ?, owner = NULL, lease_until = NULL WHERE sweep = ? AND key = ?",
                       (run.status.value, attempts, run.id, run.error, summary, time.time(), sweep, key))

    def claim(self, sweep: str, owner: str, keys: Iterable[str], limit: int, lease: float,
              since: float) -> list[tuple[str, int]]:
        """Claim up to ``limit`` of ``keys`` for ``owner`` until ``lease`` seconds from now, in grid order;
        returns ``[(key, attempts)]``. Claimable: not finished or diverged, not claimed by a live lease, and
        either pending or last updated before ``since`` (the caller's start: a run that failed or stopped in
        an earlier session is tried again, one that another driver just failed is not)."""
        wanted = set(keys)
        now = time.time()
        with self._transaction() as db:
            db.execute("BEGIN IMMEDIATE")  # one writer from here to the commit: no two drivers claim one row
            rows = db.execute(
                "SELECT key, attempts FROM sweep_runs WHERE sweep = ? AND status NOT IN (?, ?) "
                "AND (owner IS NULL OR lease_until < ?) AND (status = ? OR updated < ?) "
                "ORDER BY position", (sweep, *DONE_STATUSES, now, PENDING, since)).fetchall()
            claimed = [(key, attempts) for key, attempts in rows if key in wanted][:limit]
            db.executemany("UPDATE sweep_runs SET owner = ?, lease_until = ? WHERE sweep = ? AND key = ?",
                           [(owner, now + lease, sweep, key) for key, _ in claimed])
        return claimed

    def renew(self, sweep: str, owner: str, lease: float) -> None:
        """Extend every claim of ``owner`` to ``lease`` seconds from now."""
        with self._transaction() as db:
            db.execute("UPDATE sweep_runs SET lease_until = ? WHERE sweep = ? AND owner = ?",
                       (time.time() + lease, sweep, owner))

    def release(self, sweep: str, owner: str) -> None:
        """Give up every claim of ``owner`` (a driver that stops early), so other drivers take them at once."""
        with self._transaction() as db:
            db.execute("UPDATE sweep_runs SET owner = NULL, lease_until = NULL WHERE sweep = ? AND owner = ?",
                       (sweep, owner))

    def claimed_by_others(self, sweep: str, owner: str, keys: Iterable[str]) -> int:
        """How many of ``keys`` another driver holds under a live lease (and has not finished)."""
        wanted = set(keys)
        with self._transaction() as db:
            rows = db.execute("SELECT key FROM sweep_runs WHERE sweep = ? AND owner IS NOT NULL AND owner != ? "
                              "AND lease_until >= ?", (sweep, owner, time.time())).fetchall()
        return sum(key in wanted for (key,) in rows)

    def names(self) -> list[str]:
        """Every sweep recorded in this folder, oldest first."""
        if not self.path.exists():
            return []
        with self._transaction() as db:
            rows = db.execute("SELECT sweep FROM sweep_runs GROUP BY sweep ORDER BY MIN(updated)").fetchall()
        return [name for (name,) in rows]

    def table(self, sweep: str | None = None) -> pd.DataFrame:
        """One row per member run (all sweeps when ``sweep`` is None): index columns, every config field,
        then the summary numbers; pending runs have NaN summaries."""
        if not self.path.exists():
            return pd.DataFrame(columns=INDEX_COLUMNS + list(RunConfig().to_dict()) + SUMMARY_COLUMNS)
        query = "SELECT * FROM sweep_runs" + (" WHERE sweep = ?" if sweep is not None else "")
        with self._transaction() as db:
            db.row_factory = sqlite3.Row
            params = (sweep,) if sweep is not None else ()
            rows = [dict(r) for r in db.execute(query + " ORDER BY sweep, position", params)]
        records = []
        for row in rows:
            summary = json.loads(row.pop("summary") or "{}")
            config = json.loads(row.pop("config"))
            records.append({**{k: row[k] for k in INDEX_COLUMNS}, **config,
                            **{k: summary.get(k) for k in SUMMARY_COLUMNS}})
        columns = INDEX_COLUMNS + list(RunConfig().to_dict()) + SUMMARY_COLUMNS
        return pd.DataFrame.from_records(records, columns=columns)


def load_sweep(name: str, root: str | os.PathLike | None = None) -> pd.DataFrame:
    """Every run of sweep ``name`` saved under ``root`` (default: ``$LABKIT_RUNS_DIR`` or ``runs/``).

    The columns are those of ``Sweep.table()``; raises ``KeyError`` naming the saved sweeps if there is none
    called ``name``.
    """
    index = SweepIndex(root)
    table = index.table(name)
    if table.empty:
        raise KeyError(f"no sweep {name!r} in {index.root}; saved sweeps: {index.names() or 'none'}")
    return table


def list_sweeps(root: str | os.PathLike | None = None) -> pd.DataFrame:
    """One row per sweep saved under ``root``: its name and how many runs are in each status."""
    table = SweepIndex(root).table()
    if table.empty:
        return pd.DataFrame(columns=["sweep", "runs"])
    counts = table.pivot_table(index="sweep", columns="status", values="key", aggfunc="count", fill_value=0)
    counts.insert(0, "runs", counts.sum(axis=1))
    return counts.reset_index().rename_axis(columns=None)


def sweep_metrics(table: pd.DataFrame, root: str | os.PathLike | None = None) -> pd.DataFrame:
    """The metrics of every run listed in ``table`` (a sweep table) in one long DataFrame with ``run_id``
    and ``key`` columns, loaded from the run store."""
    store = RunStore(root)
    frames = []
    for run_id, key in zip(table["run_id"], table["key"], strict=True):
        if isinstance(run_id, str) and (store.root / run_id / "run.json").exists():
            frames.append(store.load(run_id).metrics.assign(run_id=run_id, key=key))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
