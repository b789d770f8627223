"""Notebook-level checks of the workshop series (``notebooks/*.ipynb``), without running a kernel.

Running the notebooks is nbval's job (``LABKIT_SMOKE=1 pytest --nbval-lax notebooks/``); these tests check
what nbval cannot: that logic lives in ``labkit`` (no long functions or classes defined in a notebook), that
the committed files are clean (outputs only in ``# NBVAL_CHECK_OUTPUT`` cells, no widget state, small), and
that every notebook follows the series' shape (goal and time first, "What you saw" last, threads set).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labkit import workshop as ws

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
EXPECTED = {"00-tour", "01-language-models", "02-seed-unit-scaling", "03-unit-scaling", "04-low-precision",
            "05-umup-lr-transfer", "06-exercises", "06-solutions"}
MAX_DEFINITION_LINES = 5
MAX_BYTES = 300_000


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


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
    assert path.stat().st_size < MAX_BYTES, f"{path.name} is {path.stat().st_size:,} bytes"


def test_stripping_changes_nothing(notebook):
    """The committed file is exactly what ``python -m labkit.workshop strip`` leaves."""
    path, nb = notebook
    before = json.dumps(nb, sort_keys=True)
    assert json.dumps(ws.strip_notebook(_load(path)), sort_keys=True) == before


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
