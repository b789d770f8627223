"""Run records and the on-disk store that keeps them across kernel restarts.

A run on disk is a folder ``<root>/<run id>/`` with ``run.json`` (id, config, status, summary, error)
and ``metrics.csv`` (one row per record), plus ``scales.csv`` when per-layer scales were recorded.
Every file is written to a temporary name and renamed into place, so a crash mid-write leaves the
previous version intact, never a truncated file.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import tempfile
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import pandas as pd

from labkit.config import RunConfig

RUNS_DIR_ENV = "LABKIT_RUNS_DIR"


class RunStatus(StrEnum):
    RUNNING = "running"
    FINISHED = "finished"  # ran every step
    STOPPED = "stopped"  # stopped on request (Stop button, Ctrl-C); steps before the stop are kept
    DIVERGED = "diverged"  # loss became NaN or infinite; the run ends at that step
    FAILED = "failed"  # an error ended the run; ``error`` says which


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
                               "error": self.error}
        out["final_train_loss"] = _last_valid(df, "train_loss")
        out["final_val_loss"] = _last_valid(df, "val_loss")
        out["best_val_loss"] = float(df["val_loss"].min()) if "val_loss" in df and df["val_loss"].notna().any() \
            else None
        out["tokens_per_s"] = float(df["tokens_per_s"].median()) if "tokens_per_s" in df and len(df) else None
        out["peak_mem_total"] = int(df["mem_total"].max()) if "mem_total" in df and len(df) else None
        out["peak_rss"] = int(df["rss"].max()) if "rss" in df and len(df) else None
        out.update({k: v for k, v in self.info.items() if k in ("parameters", "flops_per_step")})
        return out

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "config": self.config.to_dict(), "status": self.status.value, "error": self.error,
                "info": self.info, "created": self.created, "summary": self.summary()}


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
        folder = self.root / run.id
        folder.mkdir(parents=True, exist_ok=True)
        _atomic_write(folder / "metrics.csv", run.metrics.to_csv(index=False))
        if run.scales:
            _atomic_write(folder / "scales.csv", run.scales_table.to_csv(index=False))
        # run.json last: a run is listed only once its metrics are on disk.
        _atomic_write(folder / "run.json", json.dumps(run.to_json(), indent=1, default=_json_default))
        return folder

    def load(self, run_id: str) -> Run:
        folder = self.root / run_id
        if not (folder / "run.json").exists():
            raise FileNotFoundError(f"no saved run {run_id!r} in {self.root}; `python -m labkit runs` lists them")
        meta = json.loads((folder / "run.json").read_text(encoding="utf-8"))
        run = Run(config=RunConfig.from_dict(meta["config"]), id=meta["id"], status=RunStatus(meta["status"]),
                  error=meta.get("error"), info=meta.get("info", {}), created=meta.get("created", 0.0))
        run.records = _read_records(folder / "metrics.csv")
        run.scales = _read_records(folder / "scales.csv")
        return run

    def ids(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(p.parent.name for p in self.root.glob("*/run.json"))

    def load_all(self) -> list[Run]:
        return [self.load(run_id) for run_id in self.ids()]

    def table(self) -> pd.DataFrame:
        """One row per saved run: id, status, summary numbers and every config field."""
        rows = []
        for run_id in self.ids():
            meta = json.loads((self.root / run_id / "run.json").read_text(encoding="utf-8"))
            summary = {k: v for k, v in meta["summary"].items() if k != "run_id"}
            rows.append({"run_id": meta["id"], **summary, **meta["config"]})
        return pd.DataFrame(rows)

    def metrics(self) -> pd.DataFrame:
        """Every saved run's metrics in one long table with a ``run_id`` column."""
        frames = [run.metrics.assign(run_id=run.id) for run in self.load_all() if run.records]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _read_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists() or path.stat().st_size == 0:
        return []
    try:
        df = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return []
    return df.to_dict("records")


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):
        return value.item()
    return str(value)
