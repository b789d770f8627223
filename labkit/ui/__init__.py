"""The live lab panel (ipywidgets + plotly): ``Lab`` shows controls, live charts and a table of runs.

    from labkit.ui import Lab
    Lab()                      # in a notebook: the panel; press Train
    Lab().train(steps=100)     # from code: the same run, blocking, charts drawn as it goes
"""

from labkit.ui.charts import ChartSet, RunSeries, static_figure
from labkit.ui.controls import Controls
from labkit.ui.lab import Lab, RunEntry

__all__ = ["ChartSet", "Controls", "Lab", "RunEntry", "RunSeries", "static_figure"]
