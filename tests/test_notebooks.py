"""Notebook-level checks of the workshop series (``notebooks/*.ipynb``), without running a kernel.

Running the notebooks is nbval's job (``LABKIT_SMOKE=1 pytest --nbval-lax notebooks/``); these tests check
what nbval cannot: that logic lives in ``labkit`` (no long functions or classes defined in a notebook), that
what git commits is clean (outputs only in ``# NBVAL_CHECK_OUTPUT`` cells, no widget state, small), and
that every notebook follows the series' shape (goal and time first, "What you saw" last, threads set).

Git commits a notebook through the ``nbstripout`` clean filter (``make`` installs it; ``.gitattributes``), so
these tests read each notebook as that filter leaves it, not the working copy: exploring in JupyterLab, which
autosaves outputs and widget state into the file, leaves them green.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from labkit import workshop as ws

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
EXPECTED = {"00-tour", "01-language-models", "02-seed-unit-scaling", "03-unit-scaling", "04-low-precision",
            "05-umup-lr-transfer", "06-exercises", "06-solutions"}
MAX_DEFINITION_LINES = 5
MAX_BYTES = 300_000


def _clean_filter() -> str:
    """The command git runs on a notebook it commits: the configured nbstripout filter, else nbstripout itself.

    Git runs it at the top of the working tree (the Makefile configures a path relative to it), and so do we.
    """
    configured = subprocess.run(["git", "config", "filter.nbstripout.clean"], cwd=NOTEBOOKS_DIR, text=True,
                                capture_output=True).stdout.strip()
    return configured or f'"{sys.executable}" -m nbstripout --keep-id'


def committed_text(path: Path) -> str:
    """The notebook as git would commit it (the working copy through the clean filter)."""
    return _filtered(path.read_bytes())


@functools.lru_cache(maxsize=64)
def _filtered(notebook: bytes) -> str:  # one filter run per notebook's bytes (a process start costs 1-3 s)
    result = subprocess.run(_clean_filter(), shell=True, cwd=REPO, input=notebook, capture_output=True, check=True)
    return result.stdout.decode("utf-8")


def _load(path: Path) -> dict:
    return json.loads(committed_text(path))


def _text(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def test_the_series_is_complete():
    assert {p.stem for p in NOTEBOOKS} >= EXPECTED, f"missing: {sorted(EXPECTED - {p.stem for p in NOTEBOOKS})}"


@pytest.fixture(params=NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def notebook(request) -> tuple[Path, dict]:
    return request.param, _load(request.param)


def test_no_long_definitions_in_notebooks(notebook):
    """Logic belongs in labkit (with docstrings and tests): a notebook may define nothing longer than a few lines."""
    path, nb = notebook
    problems = ws.long_definitions(nb, max_lines=MAX_DEFINITION_LINES)
    assert not problems, f"{path.name}: move these into labkit: {problems}"


def test_committed_without_outputs_except_checked_cells(notebook):
    path, nb = notebook
    assert "widgets" not in nb.get("metadata", {}), f"{path.name}: widget state committed (strip it)"
    for index, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        if ws.is_checked(cell):
            assert cell.get("outputs"), f"{path.name} cell {index}: a checked cell must keep its outputs"
        else:
            assert not cell.get("outputs"), f"{path.name} cell {index}: outputs committed (strip them)"
    size = len(committed_text(path).encode())
    assert size < MAX_BYTES, f"{path.name} would be committed as {size:,} bytes"


def test_checked_cells_are_marked_keep_output(notebook):
    """nbstripout keeps a cell's outputs only with ``keep_output`` in its metadata: every checked cell has it."""
    path, nb = notebook
    for index, cell in enumerate(nb["cells"]):
        if ws.is_checked(cell):
            assert cell["metadata"].get("keep_output") is True, f"{path.name} cell {index}: add keep_output"


def test_a_notebook_saved_with_outputs_and_widget_state_is_committed_clean(tmp_path):
    """What JupyterLab's autosave does to a notebook (outputs everywhere, widget state, 700 kB) never reaches git."""
    source = NOTEBOOKS_DIR / "00-tour.ipynb"
    nb = json.loads(source.read_text(encoding="utf-8"))
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            cell["execution_count"] = i
            cell["outputs"] = [{"output_type": "display_data", "metadata": {},
                                "data": {"application/vnd.jupyter.widget-view+json": {"model_id": "x" * 32},
                                         "text/plain": ["x" * 50_000]}}]
    nb["metadata"]["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {"m": "y" * 500_000}}}
    explored = tmp_path / "00-tour.ipynb"
    explored.write_text(json.dumps(nb, indent=1), encoding="utf-8")
    assert explored.stat().st_size > MAX_BYTES
    clean = json.loads(committed_text(explored))
    assert "widgets" not in clean["metadata"]
    assert all(not c.get("outputs") for c in clean["cells"] if c["cell_type"] == "code" and not ws.is_checked(c))
    assert len(committed_text(explored).encode()) < MAX_BYTES
    assert [c["source"] for c in clean["cells"]] == [c["source"] for c in _load(source)["cells"]]


def test_opens_with_goal_and_time(notebook):
    path, nb = notebook
    first = nb["cells"][0]
    assert first["cell_type"] == "markdown" and _text(first).startswith("# ")
    assert "**Goal.**" in _text(first) and "**Time.**" in _text(first), f"{path.name}: state the goal and time"


def test_ends_with_what_you_saw(notebook):
    path, nb = notebook
    markdown = [_text(c) for c in nb["cells"] if c["cell_type"] == "markdown"]
    assert any(("## What you saw" in t) or ("## What you did" in t) for t in markdown[-2:]), \
        f"{path.name}: end with a 'What you saw' section"


def test_sets_threads_and_mode_first(notebook):
    """The first code cell calls ``ws.setup()`` (thread count, smoke mode) before anything trains."""
    path, nb = notebook
    first_code = next(_text(c) for c in nb["cells"] if c["cell_type"] == "code")
    assert "ws.setup(" in first_code, f"{path.name}: call ws.setup() in the first code cell"


def test_checked_cells_do_not_print_timings(notebook):
    """Stored outputs are compared verbatim: nothing time-dependent may appear in them."""
    path, nb = notebook
    for index, cell in enumerate(nb["cells"]):
        if ws.is_checked(cell):
            for word in ("step_times", "perf_counter", "time.time", "tokens_per_s", "ws.train_model"):
                assert word not in _text(cell), f"{path.name} cell {index}: {word} in a checked cell"


def test_a_fresh_checkout_is_what_git_commits(notebook):
    """The committed notebook passes through the clean filter unchanged (cell ids kept: ``--keep-id``), so a fresh
    clone shows no changes and these checks see the notebook as committed."""
    path, _ = notebook
    head = subprocess.run(["git", "show", f"HEAD:notebooks/{path.name}"], cwd=REPO, capture_output=True)
    if head.returncode != 0:
        pytest.skip(f"not in git's HEAD: {head.stderr.decode().strip()}")
    # The filter's output for these bytes (on a fresh checkout, the working copy's: the other checks ran it already).
    assert _filtered(head.stdout) == head.stdout.decode(), \
        f"{path.name}: git's filter changes the committed notebook (run `make git-filter`, then `git add` it)"
