"""Shared test set-up: one torch thread (steady timings on 2 cores) and small, fast run configs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from labkit.config import RunConfig

torch.set_num_threads(1)
# Notebooks run under nbval in their smoke mode (seconds, same code path) unless a caller asks otherwise;
# their kernels inherit this environment.
os.environ.setdefault("LABKIT_SMOKE", "1")


def small_config(**overrides) -> RunConfig:
    """A run that takes about a second: tiny model, short sequences, few steps."""
    base = dict(width=32, depth=1, heads=2, seq_len=32, batch_size=8, steps=20, eval_every=10, eval_batches=2)
    base.update(overrides)
    return RunConfig(**base)


@pytest.fixture
def make_config():
    """``make_config(**overrides)``: a small, fast RunConfig."""
    return small_config


@pytest.fixture
def store(tmp_path):
    from labkit.runs import RunStore

    return RunStore(tmp_path / "runs")


# --- the gallery's smoke build, in the background ------------------------------------------------------------
# When ``tests/test_gallery.py`` is selected, its smoke-mode site is built from the start of the session, niced,
# in the background: it runs on the CPU time the tests leave idle, and the test waits for it (``gallery_build``).
# Without xdist this process starts it when collection ends; with xdist (``-n``) the controller does, once, when a
# worker's collection shows the test, and tells the workers where the site goes. Run alone, the test builds the
# site itself. The build's exit status lands in ``EXIT_FILE`` next to the site.
GALLERY_DIR_KEY = "labkit_gallery_dir"
EXIT_FILE = "exit_status"


def _gallery_dir(config) -> Path:
    if getattr(config, "labkit_gallery_dir", None) is None:
        config.labkit_gallery_dir = Path(tempfile.mkdtemp(prefix="labkit-gallery-test-"))
    return config.labkit_gallery_dir


def _start_gallery_build(config) -> None:
    if getattr(config, "gallery_build", None) is not None:
        return
    folder = _gallery_dir(config)
    cmd = [sys.executable, "-m", "labkit.gallery", "--mode", "smoke", "--jobs", "1", "--out", str(folder / "site")]
    if shutil.which("nice"):
        cmd = ["nice", "-n", "10", *cmd]
    # sh records the exit status, so that a worker process (which holds no handle on this one) sees the end.
    exit_file = folder / EXIT_FILE
    wrapped = ["sh", "-c", f'"$@"; echo $? > "{exit_file}.part" && mv "{exit_file}.part" "{exit_file}"', "sh", *cmd]
    with (folder / "build.log").open("w") as log:
        config.gallery_build = subprocess.Popen(wrapped, stdout=log, stderr=subprocess.STDOUT,
                                                cwd=Path(__file__).resolve().parents[1], start_new_session=True)


def _selects_gallery(names) -> bool:
    return any(Path(name.split("::", 1)[0]).name == "test_gallery.py" for name in names)


def pytest_collection_finish(session):
    if not hasattr(session.config, "workerinput") and _selects_gallery(item.nodeid for item in session.items):
        _start_gallery_build(session.config)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """xdist controller: each worker learns where the background build puts the site."""
    node.workerinput[GALLERY_DIR_KEY] = str(_gallery_dir(node.config))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
    """xdist controller: start the build once, as soon as a worker's collection shows the gallery test."""
    if _selects_gallery(ids):
        _start_gallery_build(node.config)


@pytest.fixture(scope="session")
def gallery_build(request) -> Path | None:
    """The folder of the background build once it has ended (its site in ``site/``), or None if none started."""
    config = request.config
    folder = Path(config.workerinput[GALLERY_DIR_KEY]) if hasattr(config, "workerinput") else (
        _gallery_dir(config) if getattr(config, "gallery_build", None) is not None else None)
    # Under xdist the build started (and wrote its log) before any test ran: the controller schedules tests only
    # after every worker's collection.
    if folder is None or not (folder / "build.log").exists():
        return None
    deadline = time.monotonic() + 1800
    while not (folder / EXIT_FILE).exists():
        assert time.monotonic() < deadline, "the background gallery build took over 30 minutes"
        time.sleep(0.5)
    return folder


def pytest_sessionfinish(session):
    proc = getattr(session.config, "gallery_build", None)
    if proc is not None and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)  # sh and the build under it
        proc.wait()
    folder = getattr(session.config, "labkit_gallery_dir", None)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
