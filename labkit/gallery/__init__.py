"""The executed gallery: every workshop notebook run and rendered as a static, offline HTML site.

    python -m labkit.gallery                     # full mode into build/gallery (what ``make gallery`` runs)
    LABKIT_SMOKE=1 python -m labkit.gallery      # smoke mode: tiny runs, seconds per notebook (the tests)

The site opens from the file system (``build/gallery/index.html``) with no network: one copy of plotly.js and
of MathJax beside the pages, referenced by relative paths. Notebooks are executed with nbclient and exported
with nbconvert's ``lab`` template (see :mod:`labkit.gallery.build`). The live panel (``labkit.ui.Lab``) needs a
running kernel, so under the gallery build it shows its final static figure instead (:mod:`labkit.gallery.panel`).

This package imports nothing heavy at import time: ``labkit.ui`` imports :mod:`labkit.gallery.panel`.
"""
