"""Building what a run needs from its config: the corpus, the device, the seeded and prepared model."""

from __future__ import annotations

import functools

import torch
from torch import nn

from labkit.config import Fp8Backend, NumberFormat, RunConfig
from labkit.data import Corpus
from labkit.devices import autocast_dtype
from labkit.formats import OverflowCounter, simulated_ops
from labkit.fp8 import Fp8Matmul, real_fp8_ops
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
                  device: torch.device | None = None,
                  generator: torch.Generator | None = None) -> tuple[nn.Module, Ops, ScalingMethod]:
    """The seeded, prepared model of a run, the ops it computes with, and its scaling method.

    A narrow ``config.format`` wraps the scaling method's ops so that matmul inputs are rounded to it
    (and gradients to ``config.effective_grad_format``); ``counter`` then counts under/overflows, and
    ``generator`` (default: :func:`rounding_generator`) draws stochastic roundings. With
    ``fp8_backend='real'`` the linear layers run in real FP8 (:mod:`labkit.fp8`; the kernel, with its
    counts of ``_scaled_mm`` calls and fallbacks, is ``model.fp8_kernel``). Where the run's ``device``
    computes the format natively (BF16 on CUDA: :func:`labkit.devices.autocast_dtype`), nothing is
    simulated: the trainer runs the forward pass under autocast instead.
    """
    method = get_method(config.scaling)
    base = ops = method.ops()
    fwd, bwd = config.format, config.effective_grad_format
    kernel = None
    narrow = fwd is not NumberFormat.FP32 or bwd is not NumberFormat.FP32
    if narrow and (device is None or autocast_dtype(config, device) is None):
        generator = generator if generator is not None else rounding_generator(config)
        ops = simulated_ops(base, fwd, bwd, config.rounding, counter, generator)
        if config.fp8_backend is Fp8Backend.REAL:
            kernel = Fp8Matmul(fwd, bwd, config.fp8_scaling, counter)
            ops = real_fp8_ops(base, ops, kernel)
    torch.manual_seed(config.seed)
    model = build_model(config.model_config(vocab_size), ops)
    if kernel is not None:
        model.fp8_kernel = kernel
    method.prepare(model)
    return model, ops, method
