"""Checkpoints: everything needed to continue a run exactly, or to use its model afterwards.

A checkpoint is ``<runs dir>/<run id>/checkpoint.pt``, written with ``torch.save`` to a temporary name and
renamed into place (a crash leaves the previous checkpoint), and always read with ``weights_only=True``
(plain tensors, numbers, strings and containers; nothing is unpickled that could run code). It holds:

* ``step``: the last optimizer step it includes;
* ``model`` and ``optimizer``: their ``state_dict()``; ``scaler``: the loss scaler's state (or None);
* ``rng``: the states of the run's generators (training batches, stochastic rounding) and of torch's
  global generator, so the continued run draws the same batches and roundings as an uninterrupted one;
* ``vocab``: the characters of a char tokenizer (None for bytes), so the model can be used without
  re-reading its corpus.

The Trainer writes one at every evaluation (and when a run stops), replacing the previous one, which is
already a slow step. Its cost is recorded on the run (``info["checkpoint_seconds"]``, ``["checkpoint_bytes"]``):
about a quarter of one training step (20 ms for the default 0.4M-parameter Transformer, 5 MiB), 0.5 % of
training time at the default ``eval_every=50``.

    model, tokenizer, run = load_model("20261201-101500-1a2b3c")
    sample(model, tokenizer, "ROMEO:")
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from labkit.data import ByteTokenizer, CharTokenizer
from labkit.formats import LossScaler
from labkit.runs import Run, RunStore

CHECKPOINT_FILE = "checkpoint.pt"
FORMAT_VERSION = 1


class CheckpointError(FileNotFoundError):
    """A run has no usable checkpoint; the message says why and what to do."""


def checkpoint_path(store: RunStore, run_id: str) -> Path:
    return store.root / run_id / CHECKPOINT_FILE


@dataclass
class TrainingState:
    """The live objects of a training run that a checkpoint saves and restores."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: LossScaler | None
    generators: dict[str, torch.Generator]
    tokenizer: CharTokenizer | ByteTokenizer

    def state_dict(self, step: int) -> dict[str, Any]:
        return {"format": FORMAT_VERSION, "step": step, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "rng": {"torch": torch.get_rng_state(),
                        **{name: g.get_state() for name, g in self.generators.items()}},
                "vocab": list(self.tokenizer.chars) if isinstance(self.tokenizer, CharTokenizer) else None}

    def save(self, path: Path, step: int) -> int:
        """Write the checkpoint of ``step`` atomically; returns its size in bytes."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(self.state_dict(step), f)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path.stat().st_size

    def restore(self, checkpoint: dict[str, Any]) -> int:
        """Load a checkpoint into the live objects; returns the step it was taken after."""
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        if self.scaler is not None and checkpoint["scaler"] is not None:
            self.scaler.load_state_dict(checkpoint["scaler"])
        rng = checkpoint["rng"]
        torch.set_rng_state(rng["torch"])
        for name, generator in self.generators.items():
            generator.set_state(rng[name])
        return int(checkpoint["step"])


def load_checkpoint(store: RunStore, run_id: str) -> dict[str, Any]:
    """The checkpoint of a saved run (on the CPU), read with ``weights_only=True``."""
    path = checkpoint_path(store, run_id)
    if not path.exists():
        raise CheckpointError(
            f"run {run_id} has no checkpoint ({path}): it was saved before checkpoints existed, trained without "
            "a store (a sweep worker), or stopped before its first evaluation. Train it again")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_model(run_id: str, store: RunStore | None = None) -> tuple[nn.Module, CharTokenizer | ByteTokenizer, Run]:
    """The model of a saved run (its last checkpoint, in eval mode on the CPU), its tokenizer and the run."""
    from labkit.build import build_for_run

    store = store or RunStore()
    run = store.load(run_id)
    checkpoint = load_checkpoint(store, run_id)
    vocab = checkpoint["vocab"]
    tokenizer = CharTokenizer("".join(vocab)) if vocab is not None else ByteTokenizer()
    model, _, _ = build_for_run(run.config, tokenizer.vocab_size)
    model.load_state_dict(checkpoint["model"])
    model.eval()
    return model, tokenizer, run
