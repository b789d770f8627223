"""Run records and the on-disk store that keeps them across kernel restarts.

A run on disk is a folder ``<root>/<run id>/`` with ``run.json`` (id, config, status, summary, error)
and ``metrics.csv`` (one row per record), plus ``scales.csv`` when per-layer scales were recorded and
``checkpoint.pt`` (see :mod:`labkit.checkpoint`). Every file is written to a temporary name and renamed
into place, so a crash mid-write leaves the previous version intact, never a truncated file.

Reading never trusts the folder: a ``run.json`` that is empty, truncated or not a labkit run is skipped
with one :class:`RunStoreWarning` naming the file, and the other runs are listed. A ``running`` run records
the process training it (host, pid, process start time) and a heartbeat (the time of its last save); when
that process is gone, the run is read as ``interrupted`` (derived at read time, never written).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import socket
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import pandas as pd
import psutil

from labkit.config import ConfigError, RunConfig

RUNS_DIR_ENV = "LABKIT_RUNS_DIR"


class RunStatus(StrEnum):
    RUNNING = "running"
    FINISHED = "finished"  # ran every step
    STOPPED = "stopped"  # stopped on request (Stop button, Ctrl-C); steps before the stop are kept
    DIVERGED = "diverged"  # loss became NaN or infinite; the run ends at that step
    FAILED = "failed"  # an error ended the run; ``error`` says which
    INTERRUPTED = "interrupted"  # saved as running, but its process is gone (killed): derived when read


class RunStoreWarning(UserWarning):
    """A file in the runs folder cannot be read; the run is skipped or listed without it."""


#: Seconds between heartbeats of a run that saves less often (see :meth:`RunStore.beat`).
HEARTBEAT_INTERVAL = 30.0


def new_run_id() -> str:
    """Sortable, unique: ``20261129-142800-1a2b3c``."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


@dataclass
class Run:
    """One training run: its config, status and every metrics record it emitted."""

    config: RunConfig
    id: str = field(default_factory=new_run_id)
    status: RunStatus = RunStatus.RUNNING
    records: list[dict[str, float]] = field(default_factory=list)
    scales: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    info: dict[str, Any] = field(default_factory=dict)  # facts known at start: parameter count, FLOPs, ...
    created: float = field(default_factory=time.time)

    @property
    def metrics(self) -> pd.DataFrame:
        """One row per record; columns ``step``, ``train_loss``, ``val_loss``, ``lr``, norms, memory, ..."""
        return pd.DataFrame.from_records(self.records)

    @property
    def scales_table(self) -> pd.DataFrame:
        """Per-layer scales: columns ``step``, ``layer``, ``kind``, ``rms`` (and format counters)."""
        return pd.DataFrame.from_records(self.scales)

    @property
    def last_step(self) -> int:
        return int(self.records[-1]["step"]) if self.records else 0

    def summary(self) -> dict[str, Any]:
        """The headline numbers of the run (what ``labkit train --json`` prints)."""
        df = self.metrics
        out: dict[str, Any] = {"run_id": self.id, "status": self.status.value, "steps": self.last_step,
                               "steps_planned": self.config.steps, "error": self.error}
        out["final_train_loss"] = _last_valid(df, "train_loss")
        out["final_val_loss"] = _last_valid(df, "val_loss")
        out["best_val_loss"] = float(df["val_loss"].min()) if "val_loss" in df and df["val_loss"].notna().any() \
            else None
        out["tokens_per_s"] = float(df["tokens_per_s"].median()) if "tokens_per_s" in df and len(df) else None
        out["peak_mem_total"] = int(df["mem_total"].max()) if "mem_total" in df and len(df) else None
        out["peak_rss"] = int(df["rss"].max()) if "rss" in df and len(df) else None
        out.update({k: v for k, v in self.info.items() if k in ("parameters", "flops_per_step", "peak_lr")})
        return out

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "config": self.config.to_dict(), "status": self.status.value, "error": self.error,
                "info": self.info, "created": self.created, "summary": self.summary()}


def process_identity() -> dict[str, Any]:
    """This process as a run records it: host, pid and start time (a reused pid has another start time)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": psutil.Process().create_time()}


def process_alive(identity: dict[str, Any] | None) -> bool | None:
    """Whether the process ``identity`` names still runs: None when it cannot be known (another host, an
    old record without one)."""
    if not identity or identity.get("host") != socket.gethostname():
        return None
    try:
        process = psutil.Process(int(identity["pid"]))
        same = abs(process.create_time() - float(identity["started"])) < 1.0
        return same and process.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied, KeyError, TypeError, ValueError):
        return False


def live_status(meta: dict[str, Any], heartbeat: float) -> tuple[RunStatus, str]:
    """The status of a saved run as of now, and whether its process is alive (``yes``, ``no``, ``unknown``,
    or ``-`` for a run that ended): a ``running`` run whose process is gone is ``interrupted``."""
    status = RunStatus(meta["status"])
    if status is not RunStatus.RUNNING:
        return status, "-"
    alive = process_alive(meta.get("process"))
    if alive is None:
        return status, "unknown"
    return (status, "yes") if alive else (RunStatus.INTERRUPTED, "no")


def _last_valid(df: pd.DataFrame, column: str) -> float | None:
    if column not in df:
        return None
    values = df[column].dropna()
    return float(values.iloc[-1]) if len(values) else None


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def default_runs_dir() -> Path:
    """``$LABKIT_RUNS_DIR`` if set, else ``runs/`` in the current directory."""
    return Path(os.environ.get(RUNS_DIR_ENV, "runs"))


class RunStore:
    """A folder of saved runs. ``save`` is atomic per file; ``table`` lists all runs as one DataFrame."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root is not None else default_runs_dir()

    def save(self, run: Run) -> Path:
        """Write the run's files; a running run also records this process and a heartbeat (now)."""
        folder = self.root / run.id
        folder.mkdir(parents=True, exist_ok=True)
        _atomic_write(folder / "metrics.csv", run.metrics.to_csv(index=False))
        if run.scales:
            _atomic_write(folder / "scales.csv", run.scales_table.to_csv(index=False))
        meta = run.to_json()
        meta["heartbeat"] = time.time()
        if run.status is RunStatus.RUNNING:
            meta["process"] = process_identity()
        # run.json last: a run is listed only once its metrics are on disk.
        _atomic_write(folder / "run.json", json.dumps(meta, indent=1, default=_json_default))
        return folder

    def beat(self, run: Run) -> None:
        """Mark ``run`` alive now without rewriting it (its ``run.json``'s modification time is the
        heartbeat between saves): cheap enough for any step."""
        with contextlib.suppress(OSError):
            os.utime(self.root / run.id / "run.json")

    def read_meta(self, run_id: str) -> dict[str, Any] | None:
        """The checked ``run.json`` of ``run_id`` with ``status`` (interrupted when its process is gone),
        ``alive``, ``heartbeat`` and ``heartbeat_age`` filled in; None, with a warning naming the file, when
        the file is empty, truncated or not a labkit run."""
        path = self.root / run_id / "run.json"
        try:
            meta = _parse_meta(path)
        except RunStoreError as exc:
            warnings.warn(f"skipping {path}: {exc}", RunStoreWarning, stacklevel=3)
            return None
        return meta

    def load(self, run_id: str) -> Run:
        """The saved run ``run_id``; raises ``FileNotFoundError`` or ``RunStoreError`` (unreadable run.json)."""
        folder = self.root / run_id
        path = folder / "run.json"
        if not path.exists():
            raise FileNotFoundError(f"no saved run {run_id!r} in {self.root}; `python -m labkit runs` lists them")
        meta = _parse_meta(path)
        run = Run(config=meta["config"], id=meta["id"], status=meta["status"], error=meta.get("error"),
                  info=meta.get("info", {}), created=meta.get("created", 0.0))
        run.records = _read_records(folder / "metrics.csv", required=True)
        run.scales = _read_records(folder / "scales.csv")
        return run

    def ids(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(p.parent.name for p in self.root.glob("*/run.json"))

    def load_all(self) -> list[Run]:
        """Every readable saved run (unreadable ones are skipped with a warning naming the file)."""
        runs = []
        for run_id in self.ids():
            try:
                runs.append(self.load(run_id))
            except RunStoreError as exc:
                warnings.warn(f"skipping {self.root / run_id / 'run.json'}: {exc}", RunStoreWarning, stacklevel=2)
        return runs

    def table(self) -> pd.DataFrame:
        """One row per saved run: ``run_id``, ``status`` (``interrupted`` for a run whose process is gone),
        ``alive``, ``steps_done``, the summary numbers, ``heartbeat`` (time of the last save) and its age in
        seconds, then every config field (``steps`` is the planned number of steps)."""
        rows = []
        for run_id in self.ids():
            meta = self.read_meta(run_id)
            if meta is None:
                continue
            if not (self.root / run_id / "metrics.csv").exists():
                warnings.warn(f"run {run_id} has no metrics.csv ({self.root / run_id}): listed without metrics",
                              RunStoreWarning, stacklevel=2)
            summary = {k: v for k, v in meta.get("summary", {}).items()
                       if k not in ("run_id", "status", "steps", "steps_planned")}
            rows.append({"run_id": meta["id"], "status": meta["status"].value, "alive": meta["alive"],
                         "steps_done": meta.get("summary", {}).get("steps", 0), **summary,
                         "heartbeat": meta["heartbeat"], "heartbeat_age": time.time() - meta["heartbeat"],
                         **meta["config"].to_dict()})
        return pd.DataFrame(rows)

    def metrics(self) -> pd.DataFrame:
        """Every saved run's metrics in one long table with a ``run_id`` column."""
        frames = [run.metrics.assign(run_id=run.id) for run in self.load_all() if run.records]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


class RunStoreError(ValueError):
    """A saved run's ``run.json`` cannot be used; the message says what is wrong with it."""


_REQUIRED_KEYS = ("id", "config", "status")


def _parse_meta(path: Path) -> dict[str, Any]:
    """``run.json`` parsed and checked: ``config`` as a RunConfig, ``status`` as of now (see live_status)."""
    try:
        text = path.read_text(encoding="utf-8")
        heartbeat = path.stat().st_mtime
    except (OSError, UnicodeDecodeError) as exc:
        raise RunStoreError(f"cannot read it ({exc})") from None
    if not text.strip():
        raise RunStoreError("the file is empty")
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RunStoreError(f"not valid JSON, perhaps truncated ({exc})") from None
    if not isinstance(meta, dict) or any(key not in meta for key in _REQUIRED_KEYS):
        raise RunStoreError(f"not a labkit run record (needs the keys {', '.join(_REQUIRED_KEYS)})")
    try:
        meta["config"] = _saved_config(meta["config"])
        heartbeat = max(heartbeat, float(meta.get("heartbeat") or 0.0))
        meta["status"], meta["alive"] = live_status(meta, heartbeat)
    except (ConfigError, ValueError, TypeError, AttributeError) as exc:
        raise RunStoreError(f"not a valid labkit run record ({exc})") from None
    meta["heartbeat"] = heartbeat
    return meta


def _saved_config(data: Any) -> RunConfig:
    """The RunConfig of a saved run. ``threads`` is capped at this machine's cores: a run saved on a bigger
    machine is still readable (and resumable) here."""
    if not isinstance(data, dict):
        raise ConfigError(f"config is {type(data).__name__}, not an object")
    data = dict(data)
    if isinstance(data.get("threads"), int):
        data["threads"] = max(1, min(data["threads"], os.cpu_count() or 1))
    return RunConfig.from_dict(data)


def _read_records(path: Path, required: bool = False) -> list[dict[str, Any]]:
    """The rows of a CSV file; a missing (when ``required``) or unreadable one warns and gives no rows."""
    if not path.exists():
        if required:
            warnings.warn(f"{path} is missing: the run is listed without metrics", RunStoreWarning, stacklevel=3)
        return []
    if path.stat().st_size == 0:
        return []
    try:
        df = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return []
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        warnings.warn(f"{path} cannot be read ({exc}): the run is listed without it", RunStoreWarning, stacklevel=3)
        return []
    return df.to_dict("records")


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):
        return value.item()
    return str(value)
