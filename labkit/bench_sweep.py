"""Sweep executors compared on one machine: ``python -m labkit.bench_sweep [--steps N] [--workers N] [--json]``.

For each executor (in this process, local worker processes, a Dask ``LocalCluster`` on 127.0.0.1):

1. start-up: from nothing until every worker has answered a no-op task;
2. overhead per task: median round trip of one no-op task at a time (latency), and wall time per task of
   300 no-op tasks in flight at once (throughput cost);
3. the wall time of the same 12-run grid (2 scaling methods × 2 widths × 3 learning rates), on the already
   started executor, and its speed-up over running the grid sequentially; the final losses must agree.

This process first trains one tiny run so that the sequential contender does not pay the first run's
one-off imports; worker processes pay theirs inside their numbers, as they would for a user. One run of each:
on a shared machine the ratios move by tens of percent from run to run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from typing import Any

import numpy as np
import pandas as pd

from labkit.config import RunConfig
from labkit.sweep import DaskExecutor, Executor, LocalExecutor, SequentialExecutor, Sweep, Task, grid
from labkit.sweep.executors import noop
from labkit.train import Trainer

LOSSES = ["final_train_loss", "final_val_loss"]


def bench_grid(steps: int, scalings: list[str]) -> list[RunConfig]:
    """The 12-run grid: ``scalings`` × widths 32, 64 × learning rates 2^-8, 2^-6, 2^-4."""
    base = RunConfig(steps=steps, eval_every=max(1, steps // 2), eval_batches=2)
    return grid(base, scaling=scalings, width=[32, 64], lr=[2**-8, 2**-6, 2**-4])


def _round_trips(executor: Executor, count: int) -> list[float]:
    times = []
    for i in range(count):
        start = time.perf_counter()
        executor.submit(Task(f"noop-{i}", noop, i))
        executor.next_result()
        times.append(time.perf_counter() - start)
    return times


def _in_flight(executor: Executor, count: int) -> float:
    start = time.perf_counter()
    for i in range(count):
        executor.submit(Task(f"many-{i}", noop, i))
    for _ in range(count):
        executor.next_result()
    return time.perf_counter() - start


def measure(executor: Executor, configs: list[RunConfig]) -> tuple[dict[str, float], pd.DataFrame]:
    """Start-up, per-task overhead and grid wall time of one executor (closed at the end)."""
    start = time.perf_counter()
    executor.start()
    for i in range(executor.workers):
        executor.submit(Task(f"hello-{i}", noop, i))
    for _ in range(executor.workers):
        executor.next_result()
    startup = time.perf_counter() - start
    latency = statistics.median(_round_trips(executor, 30))
    throughput = _in_flight(executor, 300) / 300
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        table = Sweep(configs, "bench", root=root).run(executor, progress=False)
        wall = time.perf_counter() - start
    executor.close()
    numbers = {"startup_s": startup, "latency_ms": 1e3 * latency, "per_task_ms": 1e3 * throughput,
               "grid_s": wall, "run_s_median": float(table["seconds"].median())}
    return numbers, table.set_index("key")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m labkit.bench_sweep", description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60, help="training steps of each grid run")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="worker processes (default: cores)")
    parser.add_argument("--scaling", default="standard,u-mup", help="the grid's two (or more) scaling methods")
    parser.add_argument("--json", action="store_true", help="print the numbers as one JSON object")
    args = parser.parse_args(argv)
    configs = bench_grid(args.steps, args.scaling.split(","))
    Trainer(configs[0].replace(steps=2)).train()  # this process's one-off imports, outside the timings

    executors = {"sequential": SequentialExecutor(), "local": LocalExecutor(args.workers),
                 "dask": DaskExecutor(workers=args.workers)}
    results: dict[str, dict[str, float]] = {}
    tables: dict[str, pd.DataFrame] = {}
    for name, executor in executors.items():
        results[name], tables[name] = measure(executor, configs)
    reference = tables["sequential"]
    for name, table in tables.items():
        table = table.loc[reference.index]
        results[name]["speedup"] = results["sequential"]["grid_s"] / results[name]["grid_s"]
        results[name]["finished"] = int((table["status"] == "finished").sum())
        diff = np.abs(table[LOSSES].to_numpy(float) - reference[LOSSES].to_numpy(float))
        results[name]["max_loss_diff"] = float(np.nanmax(diff))
    summary = {"runs": len(configs), "steps": args.steps, "workers": args.workers, "cores": os.cpu_count(),
               "executors": results}
    if args.json:
        print(json.dumps(summary))
        return summary
    print(f"{len(configs)}-run grid ({args.scaling} × widths 32, 64 × lr 2^-8, 2^-6, 2^-4; {args.steps} steps), "
          f"{args.workers} workers on {os.cpu_count()} cores\n")
    print(f"{'executor':12}{'start-up':>10}{'latency':>11}{'per task':>11}{'grid':>9}{'speed-up':>10}"
          f"{'run (median)':>14}{'max |Δloss|':>13}")
    for name, r in results.items():
        print(f"{name:12}{r['startup_s']:9.2f}s{r['latency_ms']:9.2f}ms{r['per_task_ms']:9.2f}ms"
              f"{r['grid_s']:8.1f}s{r['speedup']:9.2f}×{r['run_s_median']:13.2f}s{r['max_loss_diff']:13.2g}")
    return summary


if __name__ == "__main__":
    main()
