"""When a run has diverged, and when it has not learned: the engine's rule, shared by the CLI, sweeps and the panel.

A run **diverged** when its loss is NaN or infinite, or when its smoothed training loss rose well above where it
started and stayed there:

    smoothed_t = EMA of train_loss with weight ``1 / window`` (starting at the first step's loss)
    diverged when smoothed_t > start + margin for ``patience`` records in a row

``start`` is the larger of the first step's loss and the uniform guess ``ln(vocab)`` (a model that outputs
equal probabilities for every token scores exactly that), so an unusual initial loss moves the line only up.
The defaults (``margin`` 1.5 nats, ``window`` 10, ``patience`` 10) were chosen from measured runs (see
``docs/divergence.md``): a standard Transformer at lr 0.5 passes start + 1.5 nats within about 20 steps on its way
to loss 12, while the five scaling methods at their default LRs stay below start + 0.2 nats at every step and LR
sweeps that only plateau never rise above the start at all.

A run that **did not learn** ended no better than the uniform guess (its final smoothed loss is above
``ln(vocab) - min_gain``, judged for runs of 50 steps or more): typically a learning rate far too small
(lr 2⁻²⁰). That is not a divergence (the loss never rose; raising the LR is the fix, not lowering it), so it is a
separate flag,
``run.info["did_not_learn"]``, and the run's status stays ``finished``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class DivergenceRule:
    """Thresholds of the rule above (nats and records). Valid for any vocabulary: the margin is in nats."""

    margin: float = 1.5
    window: int = 10
    patience: int = 10
    min_gain: float = 0.05

    def __post_init__(self) -> None:
        if not (self.margin > 0 and self.window >= 1 and self.patience >= 1 and self.min_gain >= 0):
            raise ValueError(f"invalid divergence rule {self}: margin > 0, window >= 1, patience >= 1, min_gain >= 0")


class DivergenceDetector:
    """Feed it every training loss (:meth:`update`); it returns the reason once the run has diverged."""

    def __init__(self, vocab_size: int, rule: DivergenceRule | None = None) -> None:
        self.rule = rule or DivergenceRule()
        self.uniform = math.log(vocab_size)
        self.start: float | None = None
        self.smoothed: float | None = None
        self.above = 0
        self.steps = 0

    @property
    def limit(self) -> float | None:
        """The smoothed loss above which a run counts as diverging (None before the first loss)."""
        return None if self.start is None else self.start + self.rule.margin

    def update(self, step: int, loss: float) -> str | None:
        """Take one step's training loss; return why the run diverged, or None while it has not."""
        if not math.isfinite(loss):
            return f"loss became {loss} at step {step}"
        self.steps += 1
        if self.start is None:
            self.start = max(loss, self.uniform)
            self.smoothed = loss
        else:
            self.smoothed += (loss - self.smoothed) / self.rule.window
        self.above = self.above + 1 if self.smoothed > self.limit else 0
        if self.above >= self.rule.patience:
            return (f"smoothed training loss {self.smoothed:.2f} stayed above {self.limit:.2f} (start "
                    f"{self.start:.2f} + {self.rule.margin:g} nats) for {self.rule.patience} steps, at step {step}")
        return None

    def did_not_learn(self) -> str | None:
        """Why the run learned nothing (its smoothed loss ended no better than a uniform guess), or None.

        Runs shorter than five smoothing windows are not judged (a smoke run of 10 steps has barely started).
        """
        if (self.smoothed is None or self.steps < 5 * self.rule.window
                or self.smoothed < self.uniform - self.rule.min_gain):
            return None
        return (f"smoothed training loss ended at {self.smoothed:.2f}, no better than a uniform guess over "
                f"the vocabulary (ln {round(math.exp(self.uniform))} = {self.uniform:.2f}): raise the learning rate")


def headroom(losses: list[float], vocab_size: int, rule: DivergenceRule | None = None) -> dict[str, float]:
    """How close a loss curve came to the divergence line: the largest ``smoothed - start`` (nats), the first
    step at which the rule fires (NaN if never) and the final smoothed loss minus ``ln(vocab)``."""
    rule = rule or DivergenceRule()
    detector = DivergenceDetector(vocab_size, rule)
    worst, fired = -math.inf, math.nan
    for step, loss in enumerate(losses, start=1):
        reason = detector.update(step, loss)
        if detector.smoothed is not None and math.isfinite(loss):
            worst = max(worst, detector.smoothed - detector.start)
        if reason is not None and math.isnan(fired):
            fired = step
        if not math.isfinite(loss):
            break
    final = (detector.smoothed - detector.uniform) if detector.smoothed is not None else math.nan
    return {"max_rise": worst, "fires_at": fired, "final_vs_uniform": final}
