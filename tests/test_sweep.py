"""Sweeps: grids, the three executors (same losses), failures, killed workers, resume, CLI and analysis."""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from labkit.cli import main
from labkit.config import ConfigError, RunConfig
from labkit.runs import RunStatus, RunStore
from labkit.sweep import (
    DaskExecutor,
    LocalExecutor,
    Sweep,
    SweepFigure,
    WorkerLost,
    best_lr,
    config_key,
    doubling,
    grid,
    list_sweeps,
    load_sweep,
    lr_shift,
    lr_transfer_figure,
    paper_table,
    parse_values,
)
from labkit.sweep.executors import Executor, SequentialExecutor

# A tiny run (~0.1 s once warm); device "auto" so the same grid runs on CUDA where there is one.
BASE = RunConfig(width=32, depth=1, heads=2, seq_len=32, batch_size=8, steps=8, eval_every=4, eval_batches=2,
                 device="auto")
WIDTHS, LRS = [32, 64], [2**-8, 2**-6, 2**-4]
LOSSES = ["final_train_loss", "final_val_loss"]


def small_grid() -> list[RunConfig]:
    """2 widths × 3 learning rates."""
    return grid(BASE, width=WIDTHS, lr=LRS)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> pd.DataFrame:
    """The small grid run in this process: the losses every other executor must reproduce."""
    root = tmp_path_factory.mktemp("reference")
    return Sweep(small_grid(), "grid", root=root).run("sequential", progress=False).set_index("key")


# --- grids, keys and ranges ---------------------------------------------------------------------------------


def test_grid_order_keys_and_ranges():
    configs = grid(BASE, scaling=["standard", "seed-l2-once"], width=[32, 64], lr=doubling(2**-3, 1))
    assert len(configs) == 2 * 2 * 4
    assert [(c.scaling.value, c.width) for c in configs[:5:4]] == [("standard", 32), ("standard", 64)]
    assert config_key(configs[0]) == config_key(RunConfig.from_dict(configs[0].to_dict()))  # stable
    assert len({config_key(c) for c in configs}) == len(configs)
    assert doubling(2**-10, 2**0) == [2.0**k for k in range(-10, 1)]
    from labkit.cli import parse_number

    assert parse_values("2**-3..2**-1,1", parse_number) == [0.125, 0.25, 0.5, 1.0]
    assert parse_values("32..128", int) == [32, 64, 128]
    with pytest.raises(ConfigError, match="unknown config field"):
        grid(BASE, widht=[32])
    with pytest.raises(ConfigError, match="heads must"):
        grid(BASE, width=[33])
    assert len(Sweep([BASE, BASE.replace()], root="unused")) == 1  # a config listed twice runs once


# --- the three executors ------------------------------------------------------------------------------------


def test_sequential_sweep_saves_every_status_and_never_stops(tmp_path, reference):
    configs = [*small_grid()[:2],
               BASE.replace(optimizer="sgd", lr=1e4, steps=30),  # diverges
               BASE.replace(corpus=str(tmp_path / "missing.txt"))]  # fails: no such corpus
    sweep = Sweep(configs, "statuses", root=tmp_path)
    table = sweep.run("sequential", progress=False)
    assert table["status"].tolist() == ["finished", "finished", "diverged", "failed"]
    assert "missing.txt" in table.loc[3, "error"] and "lower the learning rate" in table.loc[2, "error"]
    # every run, failed ones included, is a normal run record in the store ...
    store = RunStore(tmp_path)
    assert sorted(store.ids()) == sorted(table["run_id"])
    assert store.load(table.loc[3, "run_id"]).status is RunStatus.FAILED
    # ... listed by one call after a restart, and by any SQLite reader
    pd.testing.assert_frame_equal(load_sweep("statuses", tmp_path), table)
    raw = pd.read_sql("SELECT * FROM sweep_runs", sqlite3.connect(tmp_path / "sweeps.sqlite"))
    assert len(raw) == 4 and set(raw["status"]) == {"finished", "diverged", "failed"}
    assert list_sweeps(tmp_path).loc[0, "runs"] == 4
    with pytest.raises(KeyError, match="saved sweeps: \\['statuses'\\]"):
        load_sweep("typo", tmp_path)
    # device "auto": CPU here, CUDA (with its own peak memory per run) where there is a GPU
    import torch

    finished = table[table["status"] == "finished"]
    if torch.cuda.is_available():
        assert (finished["device_used"].str.startswith("cuda")).all() and (finished["peak_cuda_mem"] > 0).all()
    else:
        assert (finished["device_used"] == "cpu").all() and finished["peak_cuda_mem"].isna().all()
    assert len(sweep.metrics()) > 0


def _assert_same_losses(table: pd.DataFrame, reference: pd.DataFrame) -> None:
    table = table.set_index("key").loc[reference.index]
    assert (table["status"] == "finished").all(), table["error"].tolist()
    np.testing.assert_allclose(table[LOSSES].to_numpy(float), reference[LOSSES].to_numpy(float), rtol=1e-6)


@pytest.fixture(scope="module")
def local_pool():
    """Two local worker processes, kept warm across the tests that use them (as a notebook would)."""
    with LocalExecutor(workers=2) as pool:
        yield pool


def test_local_processes_give_the_same_losses(tmp_path, reference, local_pool):
    table = Sweep(small_grid(), "grid", root=tmp_path).run(local_pool, progress=False)
    _assert_same_losses(table, reference)
    pids = {w.split(":")[1] for w in table["worker"]}
    assert len(pids) == 2 and str(os.getpid()) not in pids


@pytest.fixture
def dask_client():
    """A real Dask cluster of 2 worker processes on 127.0.0.1, shut down after the test."""
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                       dashboard_address=None, silence_logs=logging.ERROR)
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()
    assert cluster.status.name == "closed"


def test_dask_cluster_gives_the_same_losses(tmp_path, reference, dask_client):
    worker_pids = set(dask_client.run(os.getpid).values())
    assert len(worker_pids) == 2 and os.getpid() not in worker_pids
    assert all(addr.startswith("tcp://127.0.0.1:") for addr in dask_client.nthreads())
    table = Sweep(small_grid(), "grid", root=tmp_path).run(dask_client, progress=False)
    _assert_same_losses(table, reference)
    assert {int(w.split(":")[1]) for w in table["worker"]} <= worker_pids


def test_dask_missing_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if dask[distributed] were not installed
    with pytest.raises(ImportError, match=r"pip install 'labkit\[distributed\]'"):
        DaskExecutor().start()
    with pytest.raises(ImportError, match="distributed"):
        Sweep(small_grid(), "no-dask", root=tmp_path).run("dask", progress=False)
    assert not (tmp_path / "sweeps.sqlite").exists()  # refused before the sweep was registered


# --- failures, killed workers, resume -----------------------------------------------------------------------


def test_killed_worker_run_is_retried_and_none_is_lost(tmp_path, local_pool):
    """SIGKILL the worker training the long run mid-run: it is retried on a fresh worker, nothing is lost."""
    long_run = BASE.replace(steps=300, eval_every=300)
    configs = [long_run, *small_grid()[:3]]
    killed = []

    def kill_long_run(row):
        if not killed:
            pid = next(pid for pid, key in local_pool.running().items() if key == config_key(long_run))
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    table = Sweep(configs, "killed", root=tmp_path).run(local_pool, progress=False, on_result=kill_long_run)
    assert killed
    assert (table["status"] == "finished").all() and len(table) == 4
    assert table.loc[0, "attempts"] == 2 and (table.loc[1:, "attempts"] == 1).all()
    assert str(killed[0]) not in table.loc[0, "worker"]


class _DyingExecutor(SequentialExecutor):
    """Every worker dies: each task comes back as WorkerLost."""

    def next_result(self):
        task = self._queue.popleft()
        return task, WorkerLost(f"worker died running {task.key}")


def test_run_whose_worker_keeps_dying_is_saved_as_failed(tmp_path):
    table = Sweep(small_grid()[:2], "dying", root=tmp_path).run(_DyingExecutor(), retries=2, progress=False)
    assert (table["status"] == "failed").all() and (table["attempts"] == 3).all()
    assert table["error"].str.contains("WorkerLost: worker died").all()
    assert RunStore(tmp_path).load(table.loc[0, "run_id"]).status is RunStatus.FAILED


def test_resume_after_interruption_redoes_nothing_finished(tmp_path, monkeypatch):
    """Ctrl-C inside the third run: the sweep stops; a new Sweep (as after a restart) trains only the rest."""
    from labkit.train import Trainer

    calls = {"n": 0}
    original = Trainer.validation_loss

    def interrupt_third_run(self, *args):
        calls["n"] += 1
        if calls["n"] == 5:  # two evaluations per run: the first evaluation of the third run
            raise KeyboardInterrupt
        return original(self, *args)

    monkeypatch.setattr(Trainer, "validation_loss", interrupt_third_run)
    with pytest.raises(KeyboardInterrupt):
        Sweep(small_grid(), "resume", root=tmp_path).run("sequential", progress=False)
    first = load_sweep("resume", tmp_path)
    assert first["status"].tolist() == ["finished", "finished", "stopped", "pending", "pending", "pending"]

    monkeypatch.setattr(Trainer, "validation_loss", original)
    trained = []
    sweep = Sweep(small_grid(), "resume", root=tmp_path)
    assert len(sweep.todo()) == 4
    table = sweep.run("sequential", progress=False, on_result=lambda row: trained.append(row["key"]))
    assert trained == first["key"].tolist()[2:]
    assert (table["status"] == "finished").all()
    assert table["run_id"].tolist()[:2] == first["run_id"].tolist()[:2]  # untouched
    assert sweep.run("sequential", progress=False)["run_id"].tolist() == table["run_id"].tolist()  # nothing left


# --- command line -------------------------------------------------------------------------------------------


def test_cli_sweep_json_and_resume(tmp_path, capsys):
    args = ["sweep", "--width", "32,64", "--heads", "2", "--depth", "1", "--seq-len", "32", "--batch-size", "8",
            "--lr", "2**-8..2**-6", "--steps", "6", "--eval-every", "3", "--eval-batches", "2",
            "--executor", "sequential", "--name", "cli", "--runs-dir", str(tmp_path)]
    code = main([*args, "--json"])  # in-process (the two-driver test below runs `python -m labkit sweep`)
    out, err = capsys.readouterr()
    assert code == 0, err
    rows = json.loads(out)
    assert [(r["width"], r["lr"]) for r in rows] == [(w, 2.0**e) for w in (32, 64) for e in (-8, -7, -6)]
    assert all(r["status"] == "finished" and r["final_val_loss"] > 0 for r in rows)
    assert "6/6" in err  # the progress bar
    # the same command again trains nothing and prints the best-LR table
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "0 to train" in err and "width=32" in out and "2^-" in out
    assert len(RunStore(tmp_path).ids()) == 6


def test_cli_bad_range_is_a_clear_error(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "--lr", "2**-3..x", "--runs-dir", str(tmp_path)])
    assert exit_info.value.code == 2 and "--lr" in capsys.readouterr().err


# --- analysis -----------------------------------------------------------------------------------------------


def _synthetic_table() -> pd.DataFrame:
    """Two methods × two widths × LRs 2^-8..2^-4; "standard"'s best LR halves with width, "fixed" stays."""
    rows = []
    for method in ("standard", "fixed"):
        for width in (64, 128):
            best = -6 - (width == 128) if method == "standard" else -6
            for e in range(-8, -3):
                status = "diverged" if e == -4 and method == "standard" else "finished"
                loss = 2.0 + 0.1 * (e - best) ** 2 if status == "finished" else None
                rows.append(dict(scaling=method, width=width, lr=2.0**e, status=status, final_val_loss=loss))
    return pd.DataFrame(rows)


def test_best_lr_shift_and_paper_table():
    table = _synthetic_table()
    best = best_lr(table).set_index(["scaling", "width"])
    assert best.loc[("standard", 64), "log2_lr"] == -6 and best.loc[("standard", 128), "log2_lr"] == -7
    assert best.loc[("standard", 64), "diverged"] == 1 and not best["at_edge"].any()
    shift = lr_shift(table).set_index("scaling")["shift"]
    assert shift["standard"] == 1 and shift["fixed"] == 0
    cells = paper_table(table)
    assert cells.loc["standard", "width=128"] == "2^-7 (2.000)"


def test_lr_transfer_figure_and_live_view_fill_in():
    import plotly.graph_objects as go

    table = _synthetic_table()
    partial = table.assign(status=["pending"] * 10 + table["status"].tolist()[10:])
    figure = lr_transfer_figure(table)
    assert [a.text for a in figure.layout.annotations] == ["standard", "fixed"]  # one panel per method
    assert {t.name for t in figure.data if t.name} == {"width=64", "width=128"}  # one line per width
    assert sum(t.marker.symbol == "x" for t in figure.data) == 2  # diverged runs are shown
    view = SweepFigure(partial, widget=go.Figure())  # any plotly figure; a FigureWidget in Jupyter
    lines_before = sum(t.mode == "lines+markers" for t in view.widget.data)
    view.update(table)
    assert lines_before == 2 and sum(t.mode == "lines+markers" for t in view.widget.data) == 4
    assert len(view.widget.layout.annotations) == 2  # the panels stay put as the figure fills in


def test_executor_interface_is_the_same_for_all():
    for executor in (SequentialExecutor(), LocalExecutor(1), DaskExecutor(workers=1)):
        assert isinstance(executor, Executor) and executor.workers == 1 and executor.pending == 0


def test_best_lr_of_concatenated_sweep_tables():
    """Tables of two sweeps joined with pd.concat repeat row labels; the analysis must not care."""
    import pandas as pd

    from labkit.sweep.analysis import best_lr

    def table(scaling, losses):
        return pd.DataFrame({"scaling": scaling, "width": 64, "lr": [0.25, 0.5, 1.0], "status": "finished",
                             "final_val_loss": losses})

    both = pd.concat([table("standard", [2.0, 1.5, 3.0]), table("u-mup", [2.5, 2.0, 1.0])])
    best = best_lr(both).set_index("scaling")["best_lr"]
    assert best.to_dict() == {"standard": 0.5, "u-mup": 1.0}


# --- drivers sharing a sweep --------------------------------------------------------------------------------

SHARED_SWEEP = ["sweep", "--width", "32", "--heads", "2", "--depth", "1", "--seq-len", "32", "--batch-size", "8",
                "--lr", "2**-10..2**-3", "--steps", "150", "--eval-every", "75", "--eval-batches", "2",
                "--name", "shared", "--quiet", "--json"]


def test_two_drivers_train_each_config_exactly_once(tmp_path):
    command = [sys.executable, "-m", "labkit", *SHARED_SWEEP, "--executor", "sequential", "--runs-dir", str(tmp_path)]
    drivers = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in "ab"]
    outputs = [d.communicate(timeout=600) for d in drivers]
    assert [d.returncode for d in drivers] == [0, 0], [err for _, err in outputs]
    store = RunStore(tmp_path)
    table = load_sweep("shared", tmp_path)
    assert len(table) == 8 and (table["status"] == "finished").all() and (table["attempts"] == 1).all()
    assert len(store.ids()) == 8 and sorted(store.ids()) == sorted(table["run_id"])  # 8 trainings, not 16
    assert table["worker"].nunique() == 2  # both drivers trained some
    for out, _ in outputs:  # each driver waited for the other and reports the whole grid
        assert all(row["status"] == "finished" for row in json.loads(out))


def test_claims_are_exclusive_and_a_dead_drivers_claims_lapse(tmp_path):
    from labkit.sweep.store import SweepIndex

    configs = small_grid()
    keys = [config_key(c) for c in configs]
    index = SweepIndex(tmp_path)
    index.add("s", configs)
    since = time.time() + 1
    a = index.claim("s", "driver-a", keys, 2, lease=1.0, since=since)
    b = index.claim("s", "driver-b", keys, 10, lease=60.0, since=since)
    assert [k for k, _ in a] == keys[:2] and [k for k, _ in b] == keys[2:]
    assert index.claim("s", "driver-c", keys, 10, lease=60.0, since=since) == []
    assert index.claimed_by_others("s", "driver-c", keys) == 6
    time.sleep(1.2)  # driver-a died: no renewal
    assert [k for k, _ in index.claim("s", "driver-c", keys, 10, lease=60.0, since=since)] == keys[:2]
    index.release("s", "driver-b")
    assert [k for k, _ in index.claim("s", "driver-c", keys, 10, lease=60.0, since=since)] == keys[2:]


def test_bad_executor_or_workers_register_nothing(tmp_path):
    for executor, workers in (("foo", None), ("local", 0), ("dask", 0)):
        with pytest.raises(ConfigError):
            Sweep(small_grid(), "phantom", root=tmp_path).run(executor, workers=workers, progress=False)
    assert not (tmp_path / "sweeps.sqlite").exists()


def test_killed_driver_stops_its_workers(tmp_path):
    import psutil

    command = [sys.executable, "-m", "labkit", *SHARED_SWEEP, "--steps", "100000", "--eval-every", "100000",
               "--executor", "local", "--workers", "1", "--runs-dir", str(tmp_path)]
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        parent = psutil.Process(driver.pid)
        deadline = time.monotonic() + 180
        workers: list[psutil.Process] = []
        while time.monotonic() < deadline and not workers:  # a worker is a child of the fork server
            time.sleep(0.5)
            workers = [p for child in parent.children() for p in child.children()]
        assert workers, "no worker started"
        owner = None
        while time.monotonic() < deadline and owner is None:  # the driver has claimed the run and sent it
            time.sleep(0.5)
            with sqlite3.connect(tmp_path / "sweeps.sqlite") as db:
                owner = db.execute("SELECT owner FROM sweep_runs WHERE owner IS NOT NULL").fetchone()
        time.sleep(2)  # the worker is training (100000 steps: minutes)
        descendants = parent.children(recursive=True)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    gone, alive = psutil.wait_procs(descendants, timeout=30)
    for process in alive:  # do not leave them behind if the test fails
        process.kill()
    assert not alive, f"{len(alive)} worker processes still running after their driver was killed"
