"""The GPU device check: ``python -m labkit.devicecheck`` (one CUDA GPU, under 6 minutes).

Prints three tables, each measured by the lab's own engine (:class:`labkit.train.Trainer`):

1. **Speed**: median step time, tokens/s and model FLOP utilisation (MFU, against the device's dense
   peak in the precision the matmuls run in: :data:`labkit.devices.PEAK_FLOPS`) of standard, unit and
   u-μP Transformers at width 1024, in FP32, BF16 (autocast) and real FP8 (``torch._scaled_mm``).
2. **Real vs simulated FP8**: the same seeded runs with ``fp8_backend='real'`` and ``'simulated'``; the
   largest difference of their training losses over the run, and the final losses. Standard runs real FP8
   with and without per-tensor amax scaling.
3. **LR transfer**: final training loss over a learning-rate grid at widths 256 to 2048, u-μP against
   standard (BF16); the best learning rate per width should stay put for u-μP and drift for standard.

Without a CUDA device it exits with status 2 and says so. ``--cpu-smoke`` runs the same code on the CPU
at tiny sizes in seconds (BF16 is then simulated, as everywhere on the CPU, and there is no MFU).
The corpus is CPython's documentation (``pydoc``) with a byte tokenizer (vocabulary 256, a multiple of
16 as FP8 matmuls on CUDA want), so nothing beyond PyTorch, NumPy, pandas and psutil is needed.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch

from labkit.config import RunConfig
from labkit.devices import PEAK_FLOPS, peak_flops
from labkit.fp8 import backend_agreement
from labkit.runs import Run, RunStatus
from labkit.train import Trainer

SCALINGS = ("standard", "unit", "u-mup")
#: LR grids (log2 of the AdamW peak LR) around each method's default (standard 2^-7, u-μP 2^-1).
LR_GRID = {"standard": (-11, -9, -7, -5), "u-mup": (-4, -2, 0, 2)}


@dataclass(frozen=True)
class Plan:
    """Sizes of one device check."""

    device: str
    width: int  # speed and agreement runs
    depth: int
    heads: int
    seq_len: int
    batch_size: int
    speed_steps: int  # the first quarter is warm-up, not timed
    agreement_steps: int
    lr_widths: tuple[int, ...]
    lr_steps: int
    lr_depth: int


FULL = Plan(device="cuda", width=1024, depth=4, heads=8, seq_len=256, batch_size=32, speed_steps=40,
            agreement_steps=60, lr_widths=(256, 512, 1024, 2048), lr_steps=150, lr_depth=2)
SMOKE = Plan(device="cpu", width=32, depth=1, heads=2, seq_len=32, batch_size=4, speed_steps=4,
             agreement_steps=6, lr_widths=(16, 32), lr_steps=4, lr_depth=1)

NO_CUDA = ("labkit.devicecheck needs a CUDA GPU and PyTorch sees none (torch {version}, "
           "torch.cuda.is_available() is False). Run it on a machine with an NVIDIA GPU, or run "
           "`python -m labkit.devicecheck --cpu-smoke` to exercise the same code on the CPU at tiny sizes.")


def _config(plan: Plan, **overrides: object) -> RunConfig:
    base = dict(width=plan.width, depth=plan.depth, heads=plan.heads, seq_len=plan.seq_len,
                batch_size=plan.batch_size, device=plan.device, corpus="pydoc", tokenizer="byte",
                eval_every=10**6, eval_batches=1, log_every=1, warmup_steps=0, schedule="constant", threads=1)
    base.update(overrides)
    return RunConfig(**base)


def _train(config: RunConfig) -> Run:
    """Train one run; a run that fails is reported and returned (status ``failed``), so the check goes on."""
    trainer = Trainer(config)
    try:
        trainer.train()
    except Exception as exc:  # recorded on trainer.run by the Trainer
        print(f"  a run failed ({config.scaling.value}, {config.format.value}, width {config.width}): "
              f"{type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
    return trainer.run


def _finished(run: Run) -> bool:
    return run.status is RunStatus.FINISHED and not run.metrics.empty


def speed_table(plan: Plan) -> pd.DataFrame:
    """Median step time, tokens/s and MFU per scaling method and precision.

    MFU counts every FLOP of the step (FlopCounterMode) against the peak of the precision the linear layers
    run in. In real FP8 only the linear layers use FP8; attention and the rest run in FP32 (simulated
    rounding), so an FP8 run's MFU understates what its FP8 matmuls reach.
    """
    rows = []
    for precision, fields in (("fp32", {}), ("bf16", {"format": "bf16"}),
                              ("fp8", {"format": "fp8-e4m3", "fp8_backend": "real"})):
        for scaling in SCALINGS:
            run = _train(_config(plan, scaling=scaling, steps=plan.speed_steps, **fields))
            if not _finished(run):
                rows.append({"scaling": scaling, "format": precision, "runs in": f"{run.status.value}: {run.error}"})
                continue
            m, info = run.metrics, run.info
            step = float(m["step_time"].iloc[len(m) // 4:].median())  # the first quarter is warm-up
            peak = info.get("peak_flops")
            rows.append({"scaling": scaling, "format": precision, "runs in": info.get("precision"),
                         "step ms": 1e3 * step, "tokens/s": plan.batch_size * plan.seq_len / step,
                         "TFLOP/s": info["flops_per_step"] / step / 1e12,
                         "MFU %": 100 * info["flops_per_step"] / step / peak if peak else math.nan,
                         "peak TFLOP/s": peak / 1e12 if peak else math.nan,
                         "_scaled_mm fallbacks": info.get("fp8", {}).get("fallback", 0),
                         "final loss": float(m["train_loss"].iloc[-1])})
    return pd.DataFrame(rows)


def agreement_table(plan: Plan) -> pd.DataFrame:
    """Real vs simulated FP8 per scaling method (scale 1), and standard with amax scaling vs FP32."""
    runs = {}
    for scaling in SCALINGS:
        fp8 = _config(plan, scaling=scaling, format="fp8-e4m3", steps=plan.agreement_steps)
        runs[f"{scaling} real"] = _train(fp8.replace(fp8_backend="real"))
        runs[f"{scaling} simulated"] = _train(fp8)
    runs["standard real amax"] = _train(fp8.replace(scaling="standard", fp8_backend="real", fp8_scaling="amax"))
    runs["standard fp32"] = _train(_config(plan, steps=plan.agreement_steps))
    pairs = [(f"{s} real", f"{s} simulated") for s in SCALINGS] + [("standard real amax", "standard fp32")]
    ok = [(a, b) for a, b in pairs if _finished(runs[a]) and _finished(runs[b])]
    table = backend_agreement(runs, ok)
    failed = [{"run": a, "reference": b, "failed": runs[a].error or runs[b].error}
              for a, b in pairs if (a, b) not in ok]
    return pd.concat([table, pd.DataFrame(failed)], ignore_index=True) if failed else table


def lr_transfer_table(plan: Plan) -> pd.DataFrame:
    """Final training loss (mean of the last 10 steps) per method, width and log2 learning rate, in BF16."""
    rows = []
    for scaling, grid in LR_GRID.items():
        for width in plan.lr_widths:
            for log2_lr in grid:
                heads = max(1, width // 128)
                run = _train(_config(plan, scaling=scaling, width=width, depth=plan.lr_depth, heads=heads,
                                     format="bf16", lr=2.0**log2_lr, steps=plan.lr_steps))
                if _finished(run):
                    loss = float(run.metrics["train_loss"].iloc[-10:].mean())
                else:  # diverged: worse than any run that finished; failed: unknown
                    loss = math.inf if run.status is RunStatus.DIVERGED else math.nan
                rows.append({"scaling": scaling, "width": width, "log2 lr": log2_lr, "loss": loss})
    return pd.DataFrame(rows)


def best_lrs(table: pd.DataFrame) -> pd.DataFrame:
    """The log2 learning rate with the lowest loss, per method (rows) and width (columns)."""
    table = table.dropna(subset=["loss"])
    best = table.loc[table.groupby(["scaling", "width"])["loss"].idxmin()]
    return best.pivot(index="scaling", columns="width", values="log2 lr")


def _print(title: str, table: pd.DataFrame) -> None:
    print(f"\n## {title}\n")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labkit.devicecheck", description=__doc__.split("\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="run the same code on the CPU at tiny sizes (seconds); measures nothing about GPUs")
    args = parser.parse_args(argv)
    if args.cpu_smoke:
        plan = SMOKE
    elif not torch.cuda.is_available():
        print(NO_CUDA.format(version=torch.__version__), file=sys.stderr)
        return 2
    else:
        plan = FULL
    start = time.perf_counter()
    device = torch.device(plan.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke mode: tiny sizes)"
    print(f"# labkit device check: {name}, torch {torch.__version__}"
          + (f", CUDA {torch.version.cuda}" if device.type == "cuda" else ""))
    if device.type == "cuda":
        known = {p: peak_flops(device, p) for p in ("fp32", "bf16", "fp8")}
        print("dense peak FLOP/s used for MFU (labkit.devices.PEAK_FLOPS, NVIDIA datasheets): "
              + ", ".join(f"{p} {v / 1e12:.0f}T" if v else f"{p} unknown" for p, v in known.items()))
        if not any(known.values()):
            print(f"  (no entry matches {name!r}; known: {', '.join(PEAK_FLOPS)})")
    _print(f"Speed at width {plan.width}, depth {plan.depth}, {plan.batch_size}×{plan.seq_len} tokens per step",
           speed_table(plan))
    print(f"({time.perf_counter() - start:.0f} s so far)")
    _print(f"Real vs simulated FP8 (E4M3 forward, E5M2 gradients), {plan.agreement_steps} steps",
           agreement_table(plan))
    print(f"({time.perf_counter() - start:.0f} s so far)")
    lr = lr_transfer_table(plan)
    _print(f"LR transfer (BF16, depth {plan.lr_depth}, {plan.lr_steps} steps): final loss", lr.pivot_table(
        index=["scaling", "log2 lr"], columns="width", values="loss").reset_index())
    _print("Best log2 learning rate per width", best_lrs(lr).reset_index())
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
