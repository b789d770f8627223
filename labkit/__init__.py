"""labkit: the helper package behind the Unit Scaling Lab notebooks."""

from labkit.build import ResourceError
from labkit.config import (
    Arch,
    ConfigError,
    LossScaling,
    NumberFormat,
    Optimizer,
    Rounding,
    RunConfig,
    Scaling,
    Schedule,
    TokenizerKind,
)
from labkit.coord import coord_check
from labkit.runs import Run, RunStatus, RunStore
from labkit.train import Trainer, resume, train

__all__ = ["Arch", "ConfigError", "LossScaling", "NumberFormat", "Optimizer", "ResourceError", "Rounding", "Run",
           "RunConfig", "RunStatus", "RunStore", "Scaling", "Schedule", "TokenizerKind", "Trainer", "coord_check",
           "resume", "train"]
