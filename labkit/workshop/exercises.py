"""Notebook 6: checks of exercise attempts, each a :class:`Check` (solved or not, and the measurement)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from labkit.config import RunConfig
from labkit.runs import Run
from labkit.workshop.models import Trained, lr_rules_table
from labkit.workshop.precision import underflow_by_width


@dataclass
class Check:
    """The verdict on an exercise attempt: solved or not, and the measurement behind it."""

    solved: bool
    message: str

    def __str__(self) -> str:
        return ("✓ solved: " if self.solved else "✗ not yet: ") + self.message

    __repr__ = __str__

    def _repr_markdown_(self) -> str:
        return ("**✓ solved:** " if self.solved else "**✗ not yet:** ") + self.message


def check_perplexity(trained: Trained, text: str, reference: str, min_chars: int = 20) -> Check:
    """Exercise: a text of at least ``min_chars`` characters with a lower perplexity than ``reference``."""
    from labkit.lm import perplexity, sentence_probability

    if len(text) < min_chars:
        return Check(False, f"your text has {len(text)} characters; write at least {min_chars}")
    try:
        mine = perplexity(sentence_probability(trained.model, trained.tokenizer, text))
    except ValueError as exc:  # a character the corpus never uses
        return Check(False, str(exc))
    ref = perplexity(sentence_probability(trained.model, trained.tokenizer, reference))
    verdict = "lower" if mine < ref else "not lower"
    return Check(mine < ref, f"perplexity {mine:.2f} vs {ref:.2f} for {reference!r}: {verdict}")


def check_trains_like(run: Run, reference: Run, tolerance: float = 0.03, **required: Any) -> Check:
    """Exercise: ``run`` finished within ``tolerance`` (relative) of ``reference``'s final validation loss,
    with the config fields in ``required`` (e.g. ``format="fp8-e4m3"``, ``scaling="standard"``)."""
    config = run.config.to_dict()
    wrong = {k: (config[k], v) for k, v in required.items() if config[k] != v}
    if wrong:
        return Check(False, "; ".join(f"{k} must be {v!r} (yours: {mine!r})" for k, (mine, v) in wrong.items()))
    mine, ref = run.summary()["final_val_loss"], reference.summary()["final_val_loss"]
    if run.status.value != "finished" or mine is None or not math.isfinite(mine):
        return Check(False, f"the run ended {run.status.value}: {run.error or 'no validation loss'}")
    change = mine / ref - 1
    return Check(abs(change) <= tolerance, f"final validation loss {mine:.3f} vs {ref:.3f} in the reference "
                 f"({change:+.1%}; within ±{tolerance:.0%} counts)")


def check_underflow_width(answer: int, threshold: float = 0.5, scaling: str = "standard",
                          fmt: str = "fp8-e4m3") -> Check:
    """Exercise: the smallest power-of-two width at which more than ``threshold`` of the gradient values
    underflow in ``fmt`` (measured now at ``answer`` and ``answer // 2``)."""
    if answer < 2 or answer & (answer - 1):
        return Check(False, f"give a power of two (got {answer})")
    table = underflow_by_width([answer // 2, answer], scaling=scaling, fmt=fmt, steps=1)
    below, at = table["gradient underflow"].loc[answer // 2], table["gradient underflow"].loc[answer]
    ok = at > threshold >= below
    return Check(ok, f"gradient underflow {below:.1%} at width {answer // 2} and {at:.1%} at width {answer} "
                 f"(the threshold {threshold:.0%} must lie between them)")


def check_lr_factor(answer: float, config: RunConfig, parameter: str, rtol: float = 0.01) -> Check:
    """Exercise: the learning-rate factor the scaling method of ``config`` gives ``parameter``."""
    table = lr_rules_table(config)
    if parameter not in table.index:
        return Check(False, f"no parameter {parameter!r}; choose one of {', '.join(table.index[:4])}, ...")
    true = float(table.loc[parameter, "lr factor"])
    ok = math.isclose(answer, true, rel_tol=rtol)
    return Check(ok, f"{parameter} at width {config.width}: factor {true:.4g} ({table.loc[parameter, 'rule']})"
                 if ok else f"{answer:.4g} is not the factor; look at the rule for a weight of this shape")
