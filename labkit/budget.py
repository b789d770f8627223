"""How long a run will take, estimated from its shape before anything is built, so an absurd shape
(``--depth 100000``) is refused with the estimate instead of hanging.

The estimate is deliberately rough: matmul FLOPs (forward + backward = 3 × forward) at a sustained rate,
plus a fixed cost per op launched (what dominates deep, narrow models: an LSTM runs ``depth × seq_len``
recurrent steps one after another). It only has to tell "minutes" from "days".
"""

from __future__ import annotations

from labkit.build import ResourceError
from labkit.config import Arch, RunConfig
from labkit.models.mlp import CONTEXT

#: Sustained FLOP/s and seconds per op launched, per device type (CPU: one 2-core laptop-class machine).
RATES = {"cpu": (2e10, 2e-5), "cuda": (5e12, 1e-5), "mps": (1e12, 2e-5)}
MAX_STEP_SECONDS = 60.0  # a step slower than this shows nothing in the lab for minutes
MAX_RUN_HOURS = 48.0


def forward_flops_and_ops(config: RunConfig, vocab_size: int) -> tuple[float, float]:
    """Matmul FLOPs of one forward pass over a batch, and the number of ops it launches one after another."""
    d, depth, t, b = config.width, config.depth, config.seq_len, config.batch_size
    tokens = b * t
    readout = 2 * tokens * d * vocab_size
    if config.arch is Arch.TRANSFORMER:
        flops = depth * (2 * tokens * 12 * d * d + 4 * b * t * t * d) + readout
        ops = depth * 20 + 10
    elif config.arch is Arch.LSTM:
        flops = depth * 2 * tokens * 8 * d * d + readout
        ops = depth * t * 4 + 10  # the recurrence: one small step per layer and time step
    else:
        flops = 2 * tokens * (CONTEXT * d * d + (depth - 1) * d * d) + readout
        ops = depth * 2 + 10
    return float(flops), float(ops)


def estimate_step_seconds(config: RunConfig, vocab_size: int, device: str = "cpu") -> float:
    """Rough seconds per training step (forward, backward, optimizer) of ``config`` on ``device``."""
    rate, per_op = RATES.get(device, RATES["cpu"])
    flops, ops = forward_flops_and_ops(config, vocab_size)
    return 3 * flops / rate + 3 * ops * per_op


def check_time(config: RunConfig, vocab_size: int, device: str = "cpu") -> float:
    """Raise :class:`ResourceError` when one step or the whole run would take absurdly long; else return the
    estimated seconds per step."""
    step = estimate_step_seconds(config, vocab_size, device)
    total_hours = step * config.steps / 3600
    if step > MAX_STEP_SECONDS or total_hours > MAX_RUN_HOURS:
        raise ResourceError(
            f"{config.arch.value} with width={config.width}, depth={config.depth}, batch_size={config.batch_size} "
            f"× seq_len={config.seq_len} would take about {step:,.0f} s per step ({total_hours:,.1f} h for "
            f"{config.steps:,} steps) on {device}; the limit is {MAX_STEP_SECONDS:.0f} s per step and "
            f"{MAX_RUN_HOURS:.0f} h per run; reduce width, depth, seq_len, batch size or steps")
    return step
