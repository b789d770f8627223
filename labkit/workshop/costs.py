"""Measuring what a method costs (FLOPs, bytes, step time) and judging the seed article's claims by it."""

from __future__ import annotations

import statistics
from collections.abc import Mapping

import numpy as np
import pandas as pd

from labkit.config import RunConfig


def measure_costs(configs: Mapping[str, RunConfig], steps: int = 3) -> pd.DataFrame:
    """Compute and memory of each config, measured by the lab's engine over a few steps.

    Columns: ``parameters``, ``FLOPs/step`` (forward + backward, counted by PyTorch's FlopCounterMode: matrix
    multiplications, not elementwise work) and bytes of ``parameters``, ``gradients``, ``optimizer state``,
    ``activations`` (saved for backward) and ``total``, from the last step's record.
    """
    from labkit.train import train

    rows = []
    for label, config in configs.items():
        run = train(config.replace(steps=steps, eval_every=steps, eval_batches=1))
        last = run.records[-1]
        rows.append({"run": label, "parameters": run.info["parameters"], "FLOPs/step": run.info["flops_per_step"],
                     "param bytes": int(last["mem_params"]), "grad bytes": int(last["mem_grads"]),
                     "optimizer bytes": int(last["mem_optimizer"]),
                     "activation bytes": int(last["mem_activations"]), "total bytes": int(last["mem_total"])})
    return pd.DataFrame(rows).set_index("run")


def step_times(configs: Mapping[str, RunConfig], steps: int = 30, warmup: int = 3) -> pd.DataFrame:
    """Median time of one bare training step of each config, and its ratio to the first config.

    The configs take turns step by step (``labkit.bench.interleaved_step_times``), so a busy spell of a
    shared machine slows all of them alike; ``warmup`` turns are not counted.
    """
    from labkit.bench import interleaved_step_times

    times = interleaved_step_times(dict(configs), steps, warmup)
    medians = pd.Series({label: 1e3 * statistics.median(t) for label, t in times.items()})
    return pd.DataFrame({"step time (ms)": medians.round(1),
                         "vs first": (medians / medians.iloc[0]).round(2)}).rename_axis("run")


def seed_verdicts(costs: pd.DataFrame, times: pd.DataFrame, best: pd.Series, reference: str = "standard",
                  tolerance: float = 0.02, time_tolerance: float = 0.10) -> pd.DataFrame:
    """Judge the seed article's claims from a notebook's own measurements, one row per claim and method.

    ``costs``: :func:`measure_costs`; ``times``: :func:`step_times`; ``best``: best validation loss per method
    (:func:`best_loss`); all indexed by the same method labels, ``reference`` among them. A reduction of
    FLOPs or bytes counts when it exceeds ``tolerance`` (relative), of step time when it exceeds
    ``time_tolerance`` (timings are noisy); "does not affect quality" holds when the method's best loss is
    within ``tolerance`` (relative) of the reference's.
    """
    rows = []
    ref = costs.loc[reference]
    ref_time = times.loc[reference, "step time (ms)"]

    def add(claim: str, measured: str, holds: bool | None) -> None:
        rows.append({"claim": claim, "measured": measured,
                     "verdict": {True: "holds", False: "does not hold", None: "undecided"}[holds]})

    for label in costs.index.drop(reference):
        row = costs.loc[label]
        flops = row["FLOPs/step"] / ref["FLOPs/step"]
        add(f"{label} reduces compute (FLOPs)", f"FLOPs/step × {flops:.3f}", flops < 1 - tolerance)
        if label in times.index:
            ratio = times.loc[label, "step time (ms)"] / ref_time
            add(f"{label} reduces compute (time)", f"step time × {ratio:.2f}", ratio < 1 - time_tolerance)
        memory = row["total bytes"] / ref["total bytes"]
        params = row["param bytes"] / ref["param bytes"]
        add(f"{label} reduces memory", f"bytes × {memory:.3f} (parameters × {params:.3f})", memory < 1 - tolerance)
        if label in best.index and reference in best.index and np.isfinite(best[label]) \
                and np.isfinite(best[reference]):
            change = best[label] / best[reference] - 1
            add(f"{label} does not affect quality", f"best val loss {best[label]:.3f} vs {best[reference]:.3f} "
                f"({change:+.1%})", bool(abs(change) <= tolerance))
        else:
            add(f"{label} does not affect quality", "no finished run to compare", None)
    return pd.DataFrame(rows)
