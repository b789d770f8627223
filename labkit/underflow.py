"""How much of a model's backward pass a gradient format flushes to zero, by width and format variant.

"A standard model fails in FP8" is a claim with conditions. A standard model's gradients are tiny (their
RMS falls as width^-1/2) and sit near the smallest subnormal of E5M2, so the share flushed to zero depends
on exactly where the format's range ends: OCP E5M2 (``fp8-e5m2``, torch's and current GPUs') stops at
2^-16, Graphcore's bias-16 variant (``fp8-e5m2-bias16``) at 2^-17. :func:`gradient_underflow` measures it
on the first training step, where every variant sees the same model and batch.

    gradient_underflow(RunConfig(scaling="standard"), widths=[64, 256, 1024])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from labkit.config import NumberFormat, RunConfig

OCP_AND_BIAS16 = (NumberFormat.FP8_E5M2, NumberFormat.FP8_E5M2_BIAS16)


def gradient_underflow(base: RunConfig, widths: Sequence[int],
                       grad_formats: Sequence[NumberFormat | str] = OCP_AND_BIAS16,
                       forward_format: NumberFormat | str = NumberFormat.FP8_E4M3) -> pd.DataFrame:
    """Share of the backward pass's rounded values (gradients at every matmul) flushed to zero, and the
    share overflowed, on step 1 of ``base`` at each width and gradient format. One row per (width, format):
    ``width``, ``grad_format``, ``smallest subnormal`` (log2), ``underflow``, ``overflow`` (fractions)."""
    from labkit.formats import spec
    from labkit.train import Trainer

    rows = []
    for width in widths:
        for fmt in grad_formats:
            config = base.replace(width=int(width), format=forward_format, grad_format=fmt, steps=1,
                                  log_every=1, eval_every=1, eval_batches=1)
            record = Trainer(config).train().records[-1]
            total = record["fmt_values_bwd"]
            rows.append({"width": int(width), "grad_format": NumberFormat(fmt).value,
                         "smallest subnormal": f"2^{math.log2(spec(fmt).min_subnormal):g}",
                         "underflow": record["fmt_underflow_bwd"] / total,
                         "overflow": record["fmt_overflow_bwd"] / total})
    return pd.DataFrame(rows)
