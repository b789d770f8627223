"""Real FP8 against FP32 and the simulation, on this machine: ``python -m labkit.bench_fp8 [--size N] [--steps N]``.

1. One ``N×N @ N×N`` product: ``torch._scaled_mm`` on E4M3 operands (scales 1, FP32 out) against ``torch.mm``
   in FP32; median of 5 after a warm-up, one thread.
2. Training steps of the default Transformer: FP32, simulated FP8, real FP8 and real FP8 with amax scaling;
   median step time after 5 warm-up steps, and the ratio to FP32 and to the simulation.

On a CPU this measures the *cost* of real FP8 (there is no FP8 arithmetic in its cores); on a GPU with FP8
tensor cores, ``python -m labkit.devicecheck`` is the measurement that matters. One run of each: on a shared
machine the ratios move by tens of percent.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from labkit.config import RunConfig
from labkit.train import train


def _median_seconds(fn: Callable[[], object], repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_rates(n: int) -> dict[str, float]:
    """GFLOP/s of one n×n×n product in FP32 (``torch.mm``) and in E4M3 (``torch._scaled_mm``)."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    qa, qb = a.to(torch.float8_e4m3fn), b.t().contiguous().to(torch.float8_e4m3fn).t()  # b column-major
    one = torch.ones(())
    flops = 2 * n**3
    return {"fp32": flops / _median_seconds(lambda: a @ b) / 1e9,
            "fp8 _scaled_mm": flops / _median_seconds(
                lambda: torch._scaled_mm(qa, qb, scale_a=one, scale_b=one, out_dtype=torch.float32)) / 1e9}


def step_times(steps: int) -> dict[str, float]:
    """Median step time (s) of the default Transformer per arithmetic."""
    base = RunConfig(steps=steps, eval_every=steps, eval_batches=1)
    cases = {"fp32": {}, "fp8 simulated": {"format": "fp8-e4m3"},
             "fp8 real": {"format": "fp8-e4m3", "fp8_backend": "real"},
             "fp8 real, amax": {"format": "fp8-e4m3", "fp8_backend": "real", "fp8_scaling": "amax"}}
    return {name: float(train(base.replace(**fields)).metrics["step_time"].iloc[5:].median())
            for name, fields in cases.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m labkit.bench_fp8", description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=1024, help="matrix size N of the product (default 1024)")
    parser.add_argument("--steps", type=int, default=30, help="training steps per run (default 30)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rates = matmul_rates(args.size)
    print(f"{args.size}³ product, 1 thread: " + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in rates.items())
          + f"; _scaled_mm / mm = {rates['fp8 _scaled_mm'] / rates['fp32']:.2f}")
    times = step_times(args.steps)
    print(f"default Transformer, median step time over {args.steps - 5} steps:")
    for name, seconds in times.items():
        print(f"  {name:15s} {1e3 * seconds:7.1f} ms  ×{seconds / times['fp32']:.2f} FP32"
              f"  ×{seconds / times['fp8 simulated']:.2f} simulated")


if __name__ == "__main__":
    main()
