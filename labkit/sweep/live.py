"""What a running sweep shows: a progress bar over runs and a plotly figure that fills in as runs finish."""

from __future__ import annotations

import sys
from collections import Counter
from typing import Any

import pandas as pd

from labkit.sweep.analysis import METRIC, lr_transfer_figure


class SweepFigure:
    """A plotly ``FigureWidget`` of :func:`~labkit.sweep.analysis.lr_transfer_figure`, redrawn on each update.

    Pass ``widget`` to draw into a widget you already show (a lab panel); otherwise a new one is made and,
    inside IPython/Jupyter, displayed. ``figure_kwargs`` go to ``lr_transfer_figure`` (``metric``, ``facet``,
    ``color``, ``title``). (The lab panel's thread-safe widget is :class:`labkit.ui.charts.LiveFigure`.)
    """

    def __init__(self, table: pd.DataFrame, widget: Any = None, show: bool = True, **figure_kwargs: Any) -> None:
        import plotly.graph_objects as go

        self.figure_kwargs = {"metric": METRIC, **figure_kwargs}
        self.widget = widget if widget is not None else go.FigureWidget()
        self.update(table)
        if widget is None and show:
            _display(self.widget)

    def update(self, table: pd.DataFrame) -> None:
        """Redraw from the current sweep table."""
        figure = lr_transfer_figure(table, **self.figure_kwargs)
        with self.widget.batch_update():
            self.widget.data = ()
            self.widget.layout = figure.layout
            self.widget.add_traces(list(figure.data))


def _display(widget: Any) -> None:
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        return
    if get_ipython() is not None:
        display(widget)


class SweepMonitor:
    """Progress bar (runs done / total, with status counts and the latest loss) and optional live figure."""

    def __init__(self, name: str, total: int, done: int, table: pd.DataFrame, progress: bool = True,
                 live: bool | SweepFigure | Any = False) -> None:
        self.counts: Counter[str] = Counter()
        self.bar = None
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=done, unit="run", desc=name, file=sys.stderr, dynamic_ncols=True)
        if isinstance(live, SweepFigure):
            self.view: SweepFigure | None = live
            live.update(table)
        elif live is True:
            self.view = SweepFigure(table)
        elif live:  # a FigureWidget to draw into
            self.view = SweepFigure(table, widget=live)
        else:
            self.view = None

    def update(self, row: dict[str, Any], table: pd.DataFrame) -> None:
        """One more run ended: ``row`` is its sweep-table row, ``table`` the whole sweep table."""
        self.counts[row["status"]] += 1
        if self.bar is not None:
            postfix = {status: n for status, n in sorted(self.counts.items())}
            loss = row.get(METRIC)
            if isinstance(loss, float) and loss == loss:  # not NaN
                postfix["last loss"] = f"{loss:.3f}"
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(1)
        if self.view is not None:
            self.view.update(table)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
