import json
import os

import pandas as pd
import pytest

from labkit.runs import RunStatus, RunStore
from labkit.train import Trainer, train


def test_saved_runs_reload_identically(make_config, store):
    run = train(make_config(steps=12, eval_every=4), store=store)
    loaded = store.load(run.id)
    assert loaded.config == run.config
    assert loaded.status is RunStatus.FINISHED
    pd.testing.assert_frame_equal(loaded.metrics, run.metrics, check_dtype=False)
    assert loaded.summary() == run.summary()


def test_table_lists_every_run_after_a_restart(make_config, store):
    """A new RunStore object (as after a kernel restart) sees every run with its config and summary."""
    ids = [train(make_config(seed=s, steps=4), store=store).id for s in (1, 2)]
    table = RunStore(store.root).table()
    assert sorted(table["run_id"]) == sorted(ids)
    assert set(table["seed"]) == {1, 2}
    assert table["final_train_loss"].notna().all()
    long = RunStore(store.root).metrics()
    assert len(long) == 8 and set(long["run_id"]) == set(ids)


def test_writes_are_atomic(make_config, store, monkeypatch):
    """A crash while writing leaves the previous file intact and no temporary file behind."""
    run = train(make_config(steps=4), store=store)
    before = (store.root / run.id / "metrics.csv").read_text()
    run.records.append({"step": 5, "train_loss": 1.0})

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        store.save(run)
    assert (store.root / run.id / "metrics.csv").read_text() == before
    assert not [p for p in (store.root / run.id).iterdir() if p.name.endswith(".tmp")]


def test_missing_run_names_the_fix(store):
    with pytest.raises(FileNotFoundError, match="labkit runs"):
        store.load("nope")


def test_run_json_is_valid_json_even_for_diverged_runs(make_config, store):
    run = Trainer(make_config(lr=1e4, optimizer="sgd", steps=30), store=store).train()
    assert run.status is RunStatus.DIVERGED
    meta = json.loads((store.root / run.id / "run.json").read_text(), parse_constant=_reject)
    assert meta["status"] == "diverged"


def _reject(name):
    raise ValueError(f"invalid JSON constant {name}")
