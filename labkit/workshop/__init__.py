"""Support for the workshop notebooks (``notebooks/``): run modes, small experiments, tables and figures.

Every notebook starts the same way::

    from labkit import workshop as ws
    ws.setup()                    # one torch thread; says whether smoke mode is on
    STEPS = ws.full_or_smoke(300, 20)   # full mode: 300 steps; smoke mode (LABKIT_SMOKE=1): 20

Smoke mode runs the *same* cells with tiny step counts and grids, so that ``make test`` can execute every
notebook under nbval in seconds. Anything a notebook computes lives here or elsewhere in ``labkit`` (with
tests); the notebooks only call it, show it and say what it means.

Notebooks are committed through ``nbstripout``, a git clean filter that ``make`` installs: outputs are removed
except in cells marked ``keep_output`` (the ``# NBVAL_CHECK_OUTPUT`` cells, whose outputs nbval compares) and
widget state is dropped, whatever JupyterLab saved. ``python -m labkit.workshop check FILE...`` lists definitions
too long for a notebook.

Modules, one capability each (the names below are re-exported here, for ``ws.<name>``):

* :mod:`~labkit.workshop.notebook`: smoke mode, ``setup``, ``show_source``;
* :mod:`~labkit.workshop.models`: train or seed one model, its norms and learning-rate factors;
* :mod:`~labkit.workshop.language`: P(S), per-token tables, length and perplexity (notebook 1);
* :mod:`~labkit.workshop.costs`: FLOPs, bytes and step times, and the seed article's claims judged by them;
* :mod:`~labkit.workshop.runs`: several runs side by side (table, loss curves, pairs compared);
* :mod:`~labkit.workshop.sweeps`: sweeps for notebooks, thin calls into :class:`labkit.sweep.Sweep`;
* :mod:`~labkit.workshop.precision`: number formats, gradient histograms, what low-precision runs lost;
* :mod:`~labkit.workshop.layer_scales`: per-layer RMS across widths, in a run, and through single ops;
* :mod:`~labkit.workshop.exercises`: checks of exercise attempts (notebook 6);
* :mod:`~labkit.workshop.notebook_checks`: checked cells and long definitions (``python -m labkit.workshop check``).

Reading a sweep table (best LR, LR transfer) lives in :mod:`labkit.sweep.analysis`; its notebook-facing
functions are re-exported here too.
"""

from labkit.sweep.analysis import best_loss, best_lr_figure, sweep_summary, transfer_table
from labkit.workshop.costs import measure_costs, seed_verdicts, step_times
from labkit.workshop.exercises import Check, check_lr_factor, check_perplexity, check_trains_like, check_underflow_width
from labkit.workshop.language import (
    compare_texts,
    length_figure,
    length_table,
    probability_figure,
    probability_table,
    visible,
)
from labkit.workshop.layer_scales import (
    FORMAT_LINES,
    latest_scales,
    op_scale_table,
    scale_spread,
    scales_across_widths,
    scales_figure,
)
from labkit.workshop.models import Trained, lr_rules_table, norm_table, seeded_model, train_model
from labkit.workshop.notebook import SMOKE_ENV, full_or_smoke, setup, show_source, smoke_mode
from labkit.workshop.notebook_checks import CHECK_MARK, is_checked, long_definitions, main
from labkit.workshop.precision import (
    events_figure,
    format_events,
    format_table,
    gradient_histogram,
    histogram_figure,
    histogram_summary,
    rounding_table,
    underflow_by_width,
)
from labkit.workshop.runs import compare_losses, loss_curves_figure, run_table
from labkit.workshop.sweeps import SweepResult, lr_sweep, run_configs, runs_folder, sweep_figure, sweep_runs

__all__ = ["best_loss", "best_lr_figure", "Check", "check_lr_factor", "CHECK_MARK", "check_perplexity",
           "check_trains_like", "check_underflow_width", "compare_losses", "compare_texts",
           "events_figure", "format_events", "FORMAT_LINES", "format_table", "full_or_smoke",
           "gradient_histogram", "histogram_figure", "histogram_summary", "is_checked", "latest_scales",
           "length_figure", "length_table", "long_definitions", "loss_curves_figure", "lr_rules_table",
           "lr_sweep", "main", "measure_costs", "norm_table", "op_scale_table", "probability_figure",
           "probability_table", "rounding_table", "run_configs", "run_table", "runs_folder", "scale_spread",
           "scales_across_widths", "scales_figure", "seed_verdicts", "seeded_model", "setup",
           "show_source", "SMOKE_ENV", "smoke_mode", "step_times", "sweep_figure", "sweep_runs",
           "sweep_summary", "SweepResult", "train_model", "Trained", "transfer_table", "underflow_by_width",
           "visible"]
