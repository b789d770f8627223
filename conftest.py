"""Root pytest set-up shared by ``tests/`` and the notebooks that nbval runs (``testpaths`` in pyproject.toml)."""

from __future__ import annotations


def pytest_collection_modifyitems(items) -> None:
    """Let nbval check the outputs of cells committed through git's clean filter.

    nbstripout (the filter) keeps the outputs of ``keep_output`` cells but drops every execution count, and nbval
    refuses a cell that has outputs and no count ("Unrun reference cell has outputs"). The count carries nothing
    nbval compares, so each checked cell gets one here, in memory; the files are not touched.
    """
    for item in items:
        cell = getattr(item, "cell", None)  # nbval's IPyNbCell
        if cell is not None and cell.get("outputs") and cell.get("execution_count") is None:
            cell["execution_count"] = 1
