"""Exploring must not break ``make test``: open the repository's own ``notebooks/00-tour.ipynb`` in JupyterLab in
Chromium, Run All, save, and check that what git would commit is unchanged and that ``tests/test_notebooks.py``'s
checks still pass on the saved file. The original bytes are always put back, so the working tree stays as it was.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_browser import _wait_for
from test_controls_browser import wait_for_kernel

from conftest import REPO, Server

pytestmark = pytest.mark.browser

NOTEBOOK = "notebooks/00-tour.ipynb"


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)


def _what_git_commits() -> str:
    """The id of the blob ``git add`` would store for the notebook: the working copy through the clean filter."""
    return _git("hash-object", f"--path={NOTEBOOK}", NOTEBOOK).stdout.strip()


def _untracked() -> str:
    return _git("ls-files", "--others", "--exclude-standard").stdout


def _notebook_checks():
    """``tests/test_notebooks.py``'s per-notebook checks (each takes ``(path, committed notebook)``), and its loader."""
    spec = importlib.util.spec_from_file_location("notebook_checks", REPO / "tests" / "test_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    checks = {name: f for name, f in vars(module).items()
              if name.startswith("test_") and list(inspect.signature(f).parameters) == ["notebook"]}
    return checks, module._load


@pytest.fixture
def repo_notebook_lab(tmp_path: Path, chromium: str) -> Iterator[Server]:
    """JupyterLab serving the repository itself (state in ``tmp_path``); the notebook's bytes are restored after."""
    if shutil.which("git") is None or _git("rev-parse", "--is-inside-work-tree").returncode != 0:
        pytest.skip("needs a git checkout of the repository")
    if "nbstripout" not in _git("config", "filter.nbstripout.clean").stdout:
        pytest.skip("git's nbstripout filter is not configured: run `make git-filter`")
    path = REPO / NOTEBOOK
    original = path.read_bytes()
    try:
        server = Server("lab", REPO, NOTEBOOK, state=tmp_path)
        try:
            server.wait_ready()
            yield server
        finally:
            server.stop()  # first, so no autosave lands after the restore
    finally:  # in one step (make test runs other tests beside this one, and they read the notebooks)
        restore = path.with_name(f".{path.name}.restore")
        restore.write_bytes(original)
        os.replace(restore, path)
    assert path.read_bytes() == original


def test_run_all_and_save_leaves_what_git_commits_unchanged(repo_notebook_lab, browser_page, artifacts):
    page, path = browser_page, REPO / NOTEBOOK
    original = path.read_bytes()
    committed_before, diff_before = _what_git_commits(), _git("diff", "--quiet", "--", NOTEBOOK).returncode
    untracked_before = _untracked()
    page.goto(repo_notebook_lab.url, wait_until="domcontentloaded", timeout=60_000)
    try:
        wait_for_kernel(page)
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")  # settles after the last
        _wait_for(page, "() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status === 'idle'",
                  60, "the kernel to finish")
        page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
        _wait_for(page, "() => !window.jupyterapp.shell.currentWidget.context.model.dirty", 30, "the save")
    finally:
        page.screenshot(path=str(artifacts / "jupyterlab-00-tour-saved.png"))
    saved = json.loads(path.read_bytes())
    with_outputs = [c for c in saved["cells"] if c["cell_type"] == "code" and c.get("outputs")]
    assert path.read_bytes() != original and len(with_outputs) >= 5, "the saved notebook should carry its outputs"
    assert "Traceback" not in page.inner_text(".jp-Notebook")
    # The blob `git add` would store (the file through the nbstripout filter) is the committed one. (`git status`
    # may still list the file: git calls a file whose size changed modified without running the filter.)
    assert _what_git_commits() == committed_before, "git would commit the outputs"
    assert _git("diff", "--quiet", "--", NOTEBOOK).returncode == diff_before  # 0: no change, as before
    assert _untracked() == untracked_before, "the server or the kernel left files in the repository"
    checks, load = _notebook_checks()
    assert len(checks) >= 5, sorted(checks)
    committed = load(path)
    for check in checks.values():
        check((path, committed))
