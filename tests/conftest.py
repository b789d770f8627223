"""Shared test set-up: one torch thread (steady timings on 2 cores) and small, fast run configs."""

from __future__ import annotations

import os

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
