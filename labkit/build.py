"""Building what a run needs from its config: the corpus, the device, the seeded and prepared model."""

from __future__ import annotations

import functools

import torch
from torch import nn

from labkit.config import NumberFormat, RunConfig
from labkit.data import Corpus
from labkit.formats import OverflowCounter, simulated_ops
from labkit.models import Ops, build_model
from labkit.scaling import ScalingMethod, get_method


class ResourceError(RuntimeError):
    """The run needs a device or more memory than the machine has; the message says what to change."""


@functools.lru_cache(maxsize=4)
def load_corpus(source: str, tokenizer: str, val_fraction: float) -> Corpus:
    """``Corpus.load``, cached: the lab trains many runs on the same text."""
    return Corpus.load(source, tokenizer=tokenizer, val_fraction=val_fraction)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then Apple's MPS, then the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ResourceError("device='cuda' but PyTorch sees no CUDA GPU; use device='cpu' or 'auto'")
    return torch.device(name)


def rounding_generator(config: RunConfig) -> torch.Generator:
    """The seeded generator of a run's stochastic rounding (a checkpoint saves its state)."""
    return torch.Generator().manual_seed(config.seed + 3)


def build_for_run(config: RunConfig, vocab_size: int, counter: OverflowCounter | None = None,
                  generator: torch.Generator | None = None) -> tuple[nn.Module, Ops, ScalingMethod]:
    """The seeded, prepared model of a run, the ops it computes with, and its scaling method.

    A narrow ``config.format`` wraps the scaling method's ops so that matmul inputs are rounded to it
    (and gradients to ``config.effective_grad_format``); ``counter`` then counts under/overflows, and
    ``generator`` (default: :func:`rounding_generator`) draws stochastic roundings.
    """
    method = get_method(config.scaling)
    ops = method.ops()
    fwd, bwd = config.format, config.effective_grad_format
    if fwd is not NumberFormat.FP32 or bwd is not NumberFormat.FP32:
        generator = generator if generator is not None else rounding_generator(config)
        ops = simulated_ops(ops, fwd, bwd, config.rounding, counter, generator)
    torch.manual_seed(config.seed)
    model = build_model(config.model_config(vocab_size), ops)
    method.prepare(model)
    return model, ops, method
