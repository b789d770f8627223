"""Shared test set-up: one torch thread (steady timings on 2 cores) and small, fast run configs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
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


def pytest_collection_finish(session):
    """When ``tests/test_gallery.py`` is selected, start its smoke-mode gallery build now, niced, in the
    background: it runs on the core that the one-threaded tests before it leave idle, and the test waits for it
    (``request.config.gallery_build``). Run alone, the test builds the site itself."""
    if not any(item.path.name == "test_gallery.py" for item in session.items):
        return
    out = Path(tempfile.mkdtemp(prefix="labkit-gallery-test-")) / "site"
    log = (out.parent / "build.log").open("w")
    cmd = [sys.executable, "-m", "labkit.gallery", "--mode", "smoke", "--jobs", "1", "--out", str(out)]
    proc = subprocess.Popen(["nice", "-n", "10", *cmd] if shutil.which("nice") else cmd, stdout=log,
                            stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[1])
    session.config.gallery_build = (proc, out)


def pytest_sessionfinish(session):
    started = getattr(session.config, "gallery_build", None)
    if started is not None:
        proc, out = started
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(out.parent, ignore_errors=True)
