"""Measure how close healthy, sweeping and exploding runs come to the divergence rule (``labkit.divergence``).

    LABKIT_SMOKE=0 .venv/bin/python docs/measure_divergence.py   # ~5 minutes on one thread; prints a table

Runs are trained with detection switched off (so each curve is whole), then scored by ``headroom``.
"""

import math
import sys

import pandas as pd

import labkit.train  # noqa: F401  (the module; the package exports a function of the same name)
from labkit.config import RunConfig
from labkit.divergence import DivergenceDetector, DivergenceRule, headroom
from labkit.train import Trainer

CASES = [
    *[(f"{arch} {m} default lr", RunConfig(arch=arch, scaling=m)) for arch in ("transformer", "lstm")
      for m in ("standard", "seed-l2-once", "seed-l2-always", "unit", "u-mup")],
    *[(f"transformer standard lr 2^{e}", RunConfig(lr=2.0**e)) for e in (-20, -14, -10, -4, -3, -2, -1)],
    *[(f"transformer u-mup lr 2^{e}", RunConfig(scaling="u-mup", lr=2.0**e)) for e in (-20, -8, 1, 3)],
    *[(f"lstm standard lr 2^{e}", RunConfig(arch="lstm", lr=2.0**e)) for e in (-20, -1)],
]


def main() -> None:
    rule = DivergenceRule()
    sys.modules["labkit.train"].DivergenceDetector = lambda vocab: DivergenceDetector(vocab, DivergenceRule(margin=1e9))
    rows = []
    for name, config in CASES:
        run = Trainer(config).train()
        losses = [r["train_loss"] for r in run.records]
        vocab = run.info["vocab_size"]
        score = headroom(losses, vocab, rule)
        rows.append({"run": name, "start": losses[0], "ln V": math.log(vocab), "max loss": max(losses),
                     "final": losses[-1], **score, "status": run.status.value})
        print(name, score, flush=True)
    print(pd.DataFrame(rows).round(3).to_string(index=False))


if __name__ == "__main__":
    main()
