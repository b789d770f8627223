"""The live panel on a static page: its final figure, and a note saying so.

A static HTML page has no kernel, so the lab's widgets (controls, buttons, a live ``FigureWidget``) cannot run
there. The gallery build sets :data:`STATIC_PANEL_ENV`; then displaying a ``Lab`` shows a short note and the
panel's static figure (``Lab.figure()``) under a display id, and every run that ends replaces that figure with
the current one (:func:`update`), so the executed notebook holds the panel's final state where the panel stood.
"""

from __future__ import annotations

import os
import weakref
from typing import Any

#: Set to 1 by the gallery build (``python -m labkit.gallery``): ``Lab`` displays a static figure, not widgets.
STATIC_PANEL_ENV = "LABKIT_STATIC_PANEL"

NOTE = ("**The live panel, as a static figure.** In JupyterLab or Voilà this cell shows the lab's panel: controls, "
        "Train / Stop buttons and charts that grow while a model trains. A static page cannot run it, so here is "
        "the panel's final figure: every run trained with it in this notebook, drawn when the last one ended. "
        "Hover, zoom and click the legend as in the panel.")

_handles: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def requested() -> bool:
    """True when the environment asks for the static panel (``LABKIT_STATIC_PANEL=1``)."""
    return os.environ.get(STATIC_PANEL_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def show(lab: Any) -> None:
    """Display the note and ``lab``'s current static figure; later runs update that figure in place."""
    from IPython.display import Markdown, display

    display(Markdown(NOTE))
    _handles[lab] = display(_bundle(lab), raw=True, display_id=True)


def update(lab: Any) -> None:
    """Redraw ``lab``'s static figure, if :func:`show` displayed one (a no-op otherwise)."""
    handle = _handles.get(lab)
    if handle is not None:
        handle.update(_bundle(lab), raw=True)


def _bundle(lab: Any) -> dict[str, Any]:
    # The figure's mime bundle from plotly's default renderer. Not display(fig): a plotly figure displays
    # itself (``_ipython_display_``) and would drop the display id, so updates would add figures.
    return lab.figure()._repr_mimebundle_()
