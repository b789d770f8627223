"""The run store tells the truth: bad files, dead runs, steps done, pre-start errors, Ctrl-C; checkpoints,
resume and using a saved model (issue 11)."""

from __future__ import annotations

import importlib
import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from labkit import lm
from labkit.build import ResourceError
from labkit.checkpoint import CHECKPOINT_FILE, load_model
from labkit.cli import main
from labkit.config import ConfigError
from labkit.runs import RunStatus, RunStore, RunStoreWarning, process_alive, process_identity
from labkit.train import Trainer, resume, train

FAST = dict(width=32, depth=1, heads=2, seq_len=32, batch_size=8, eval_batches=2)


def _cli_train(runs_dir: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "labkit", "train", *args, "--quiet", "--runs-dir", str(runs_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_run(store: RunStore, min_step: int = 0, timeout: float = 120) -> str:
    """The id of the first run saved in ``store`` with at least ``min_step`` steps on disk."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for run_id in store.ids():
            meta = json.loads((store.root / run_id / "run.json").read_text())
            if meta["summary"]["steps"] >= min_step:
                return run_id
        time.sleep(0.2)
    raise TimeoutError("no run appeared")


# --- bad files ----------------------------------------------------------------------------------------------

BAD_RUN_JSON = {"empty": "", "truncated": '{"id": "x", "config": {"wid', "foreign list": "[1, 2, 3]",
                "foreign object": '{"name": "not a labkit run"}',
                "bad config": '{"id": "y", "status": "finished", "config": {"widht": 3}}'}


@pytest.mark.parametrize("kind", list(BAD_RUN_JSON))
def test_one_bad_run_json_is_skipped_with_a_warning_and_the_rest_listed(make_config, store, kind, capsys):
    good = [train(make_config(steps=2, seed=s), store=store).id for s in (1, 2)]
    bad = store.root / "20990101-000000-badbad"
    bad.mkdir()
    (bad / "run.json").write_text(BAD_RUN_JSON[kind])
    fresh = RunStore(store.root)
    with pytest.warns(RunStoreWarning, match="skipping .*20990101-000000-badbad/run.json") as caught:
        table = fresh.table()
    assert len([w for w in caught if "badbad" in str(w.message)]) == 1
    assert sorted(table["run_id"]) == sorted(good)
    with pytest.warns(RunStoreWarning, match="badbad"):
        assert sorted(r.id for r in fresh.load_all()) == sorted(good)
    with pytest.warns(RunStoreWarning, match="badbad"):
        assert set(fresh.metrics()["run_id"]) == set(good)
    assert main(["runs", "--runs-dir", str(store.root)]) == 0
    out, err = capsys.readouterr()
    assert all(run_id in out for run_id in good)
    assert "warning: skipping" in err and "badbad" in err


def test_run_without_metrics_is_listed_with_a_warning(make_config, store):
    run = train(make_config(steps=2), store=store)
    (store.root / run.id / "metrics.csv").unlink()
    with pytest.warns(RunStoreWarning, match="no metrics.csv"):
        table = RunStore(store.root).table()
    assert table["run_id"].tolist() == [run.id]
    with pytest.warns(RunStoreWarning, match="metrics.csv is missing"):
        assert store.load(run.id).records == []


# --- status, steps, heartbeat -------------------------------------------------------------------------------


def test_steps_column_shows_steps_done_and_planned(make_config, store, capsys):
    run = Trainer(make_config(lr=1e4, optimizer="sgd", steps=30), store=store).train()
    assert run.status is RunStatus.DIVERGED and run.last_step < 30
    row = RunStore(store.root).table().iloc[0]
    assert row["steps_done"] == run.last_step and row["steps"] == 30
    main(["runs", "--runs-dir", str(store.root)])
    out = capsys.readouterr().out
    assert f"{run.last_step}/30" in out and "default" not in out


def test_process_identity_tells_dead_reused_and_foreign_processes():
    me = process_identity()
    assert process_alive(me) is True
    assert process_alive({**me, "started": me["started"] - 1000}) is False  # same pid, other process: reused
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert process_alive({**me, "pid": child.pid}) is False
    assert process_alive({**me, "host": socket.gethostname() + "-elsewhere"}) is None
    assert process_alive(None) is None


def test_killed_run_shows_interrupted_and_resumes(tmp_path, capsys):
    """kill -9 a CLI run: it is listed as interrupted (not running), and --resume continues it exactly."""
    store = RunStore(tmp_path)
    args = ["--schedule", "constant", "--eval-every", "10", *sum(([f"--{k.replace('_', '-')}", str(v)]
                                                                   for k, v in FAST.items()), [])]
    process = _cli_train(tmp_path, *args, "--steps", "100000")
    try:
        run_id = _wait_for_run(store, min_step=20)
        assert store.table().iloc[0]["status"] == "running" and store.table().iloc[0]["alive"] == "yes"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    row = RunStore(tmp_path).table().iloc[0]
    assert row["status"] == "interrupted" and row["alive"] == "no"
    assert RunStore(tmp_path).load(run_id).status is RunStatus.INTERRUPTED
    main(["runs", "--runs-dir", str(tmp_path)])
    assert "interrupted" in capsys.readouterr().out

    # A loaded machine may get well past step 20 before the kill lands: resume 20 steps past what was saved.
    total = int(RunStore(tmp_path).load(run_id).metrics["step"].max()) + 20
    assert main(["train", "--resume", run_id, "--steps", str(total), "--quiet", "--runs-dir", str(tmp_path)]) == 0
    resumed = store.load(run_id)
    straight = train(RunStore(tmp_path).load(run_id).config.replace(steps=total))
    assert resumed.status is RunStatus.FINISHED and resumed.metrics["step"].tolist() == list(range(1, total + 1))
    assert resumed.metrics["train_loss"].tolist() == straight.metrics["train_loss"].tolist()


def test_heartbeat_advances_between_saves(make_config, store, monkeypatch):
    monkeypatch.setattr(importlib.import_module("labkit.train"), "HEARTBEAT_INTERVAL", 0.0)
    beats = []

    def look(run, record):
        if record["step"] in (2, 19):
            beats.append(RunStore(store.root).table().iloc[0]["heartbeat"])
            time.sleep(0.05)

    train(make_config(steps=20, eval_every=1000), store=store, callbacks=[look])
    assert beats[1] > beats[0]  # no save between step 1 and 20 (no evaluation), yet the heartbeat moved


# --- errors before training, Ctrl-C -------------------------------------------------------------------------


@pytest.mark.parametrize(("changes", "error"), [
    ({"corpus": "/no/such/file.txt"}, "corpus file not found"),
    ({"width": 65536, "depth": 48, "heads": 1}, "reduce width"),
    ({"arch": "lstm", "depth": 100_000, "width": 16}, "s per step"),
])
def test_errors_before_training_leave_no_run(make_config, store, changes, error):
    with pytest.raises((ResourceError, ValueError), match=error):
        Trainer(make_config(**changes), store=store).train()
    assert store.ids() == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_no_cuda_leaves_no_run(make_config, store):
    with pytest.raises(ResourceError, match="no CUDA"):
        Trainer(make_config(device="cuda"), store=store).train()
    assert store.ids() == []


def test_ctrl_c_exits_130_and_keeps_the_run(tmp_path):
    store = RunStore(tmp_path)
    process = _cli_train(tmp_path, "--steps", "100000", "--eval-every", "5", "--width", "32", "--heads", "2",
                         "--depth", "1", "--seq-len", "32")
    try:
        run_id = _wait_for_run(store, min_step=5)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert store.load(run_id).status is RunStatus.STOPPED


# --- checkpoints, resume, a usable model --------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_twenty_plus_twenty_resumed_equals_forty_straight(make_config, store, schedule):
    """cosine: a 40-step run stopped at 20 and resumed; constant: a finished 20-step run extended to 40."""
    config = make_config(steps=40, eval_every=10, schedule=schedule, warmup_steps=5)
    straight = train(config)
    if schedule == "cosine":
        trainer = Trainer(config, store=store)
        trainer.callbacks.append(lambda run, record: trainer.stop() if record["step"] == 20 else None)
        first = trainer.train()
        assert first.status is RunStatus.STOPPED
    else:
        first = train(config.replace(steps=20), store=store)
    assert first.last_step == 20 and first.info["checkpoint_step"] == 20
    resumed = resume(first.id, 40, store=store)
    assert resumed.id == first.id and resumed.status is RunStatus.FINISHED
    for column in ("train_loss", "val_loss", "lr", "grad_norm"):
        assert resumed.metrics[column].tolist() == pytest.approx(straight.metrics[column].tolist(), nan_ok=True,
                                                                 rel=0, abs=0), column
    saved = store.load(first.id)
    assert saved.last_step == 40 and saved.info["resumed"][0]["from_step"] == 20


def test_resume_refuses_what_it_cannot_do(make_config, store):
    run = train(make_config(steps=10, eval_every=5), store=store)
    with pytest.raises(ConfigError, match="steps larger than"):
        resume(run.id, 10, store=store)
    diverged = train(make_config(lr=1e4, optimizer="sgd", steps=30), store=store)
    with pytest.raises(ConfigError, match="diverged"):
        resume(diverged.id, 40, store=store)
    no_store_run = train(make_config(steps=2))
    RunStore(store.root).save(no_store_run)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        resume(no_store_run.id, 40, store=store)


def test_checkpoint_loads_with_weights_only(make_config, store):
    run = train(make_config(steps=10, eval_every=5, format="fp8-e4m3", rounding="stochastic",
                            loss_scaling="dynamic"), store=store)
    checkpoint = torch.load(store.root / run.id / CHECKPOINT_FILE, weights_only=True)
    assert checkpoint["step"] == 10 and checkpoint["scaler"]["mode"] == "dynamic"
    assert set(checkpoint["rng"]) == {"torch", "batches", "rounding"}
    assert not [p for p in (store.root / run.id).iterdir() if p.name.endswith(".tmp")]


def test_saved_model_samples_and_scores_like_the_trained_one(make_config, store, capsys):
    run = train(make_config(steps=30, eval_every=15), store=store)
    model, tokenizer, loaded = load_model(run.id, store)
    assert loaded.id == run.id
    trainer = Trainer(run.config)
    from labkit.build import load_corpus

    corpus = load_corpus(run.config.corpus, run.config.tokenizer.value, run.config.val_fraction)
    assert trainer.validation_loss(model, corpus, torch.device("cpu")) == pytest.approx(
        run.summary()["final_val_loss"], rel=1e-6)
    table = lm.sentence_probability(model, tokenizer, "To be, or not to be")
    assert len(table) == 19 and (table["p"] > 0).all()
    assert main(["sample", "--run", run.id, "--prompt", "ROMEO:", "--length", "40",
                 "--runs-dir", str(store.root)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ROMEO:") and len(out.rstrip("\n")) >= 40
    assert lm.load_model is load_model


def test_train_summary_prints_formatted_values(tmp_path, capsys):
    assert main(["train", "--steps", "4", "--eval-every", "2", "--quiet", "--runs-dir", str(tmp_path),
                 *sum(([f"--{k.replace('_', '-')}", str(v)] for k, v in FAST.items()), [])]) == 0
    lines = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines())
    lines = {key.strip(): value for key, value in lines.items()}
    assert "error" not in lines and "None" not in lines.values()
    assert re.fullmatch(r"\d\.\d{4}", lines["final_train_loss"])  # not 2.4580860137939453
    assert lines["steps"] == "4 of 4" and lines["peak_lr"] == "2^-7 (0.0078)"
    assert re.fullmatch(r"[\d.]+ MiB", lines["peak_rss"])


# --- one command line ---------------------------------------------------------------------------------------


def test_top_level_help_lists_every_command_and_module_commands_plug_in(capsys, tmp_path, monkeypatch):
    from labkit import cli

    (tmp_path / "hello_command.py").write_text("def main(argv):\n    print('hello', argv)\n    return 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.MODULE_COMMANDS, "hello", ("hello_command", "say hello"))
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("train", "runs", "scales", "sweep", "sample", "hello"):
        assert re.search(rf"^\s+{command}\s+\w", out, re.MULTILINE), command
    assert "``" not in out and "::" not in out
    assert main(["hello", "--width", "3"]) == 3
    assert "hello ['--width', '3']" in capsys.readouterr().out


def test_runs_listing_has_no_raw_values(make_config, store, capsys):
    train(make_config(steps=4, eval_every=2), store=store)
    train(make_config(steps=4, eval_every=2, lr=2**-6), store=store)
    assert main(["runs", "--runs-dir", str(store.root)]) == 0
    out = capsys.readouterr().out
    assert "None" not in out and "nan" not in out.lower()
    assert "default 2^-7 (0.0078)" in out and "2^-6 (0.016)" in out and "4/4" in out
    assert not re.search(r"\d\.\d{6,}", out)  # no 2.4580860137939453
