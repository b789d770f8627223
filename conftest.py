"""Root pytest set-up shared by ``tests/`` and the notebooks that nbval runs (``testpaths`` in pyproject.toml)."""

from __future__ import annotations

import pytest


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


# --- two test processes (make test: pytest -n 2 --dist loadgroup) -------------------------------------------------
# pytest-xdist hands the tests to its workers one by one, except groups that go whole to one worker:
# - the browser tests in tests/browser/: each drives JupyterLab or Voila, a kernel that trains and Chromium, and
#   their timeouts assume no second one beside them;
# - the gallery's tests (tests/test_gallery.py): they share the site that tests/conftest.py builds in the background;
# - the notebook checks (tests/test_notebooks.py): they share one clean-filter run per notebook (a process each);
# - a notebook's cells: nbval runs them in order, in one kernel.
# The groups are given by path here: xdist's ``xdist_group`` marker works by renaming node ids, which pytest 9.2
# no longer allows (the marker is silently ignored), so ``--dist loadgroup`` uses this scheduler instead.
GROUPED_FILES = ("tests/test_gallery.py", "tests/test_notebooks.py")


def xdist_group(nodeid: str) -> str:
    """The unit of work a test belongs to: its notebook or grouped file, "tests/browser", or the test itself."""
    path = nodeid.split("::", 1)[0]
    if path.endswith(".ipynb") or path in GROUPED_FILES:
        return path
    if path.startswith("tests/browser/"):
        return "tests/browser"
    return nodeid


def _hand_out_rank(group: str) -> int:
    """Browser tests first (the longest unit, mostly waiting on the browser and kernel), then one test at a time,
    the gallery's when its background build is long done, and last the notebooks (short units that even out the
    two workers' ends)."""
    if group == "tests/browser":
        return 0
    if group == "tests/test_gallery.py":
        return 2
    return 3 if group.endswith(".ipynb") else 1


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        ordered = False

        def _split_scope(self, nodeid: str) -> str:
            return xdist_group(nodeid)

        def _assign_work_unit(self, node) -> None:
            if not self.ordered:  # the queue is complete when the first unit is handed out
                queue = sorted(self.workqueue.items(), key=lambda unit: _hand_out_rank(unit[0]))
                self.workqueue.clear()
                self.workqueue.update(queue)
                self.ordered = True
            super()._assign_work_unit(node)

    return GroupScheduling(config, log)
