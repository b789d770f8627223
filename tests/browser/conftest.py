"""Fixtures for the real-browser tests: Debian's Chromium driven by Playwright, and servers on 127.0.0.1.

Nothing is downloaded: Playwright drives the system ``chromium`` (``tests/browser/ensure_chromium.py``
installs it with apt where allowed). Without Chromium or Playwright the tests are skipped with the reason.
Every server is started in a temporary folder holding a copy of ``panel.ipynb`` (so autosave never touches
the repository) and is stopped at the end, whatever happens.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
                 "--disable-component-update", "--disable-sync", "--disable-quic", "--disable-dev-shm-usage"]


def find_chromium() -> str | None:
    """Path of the system Chromium, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A JupyterLab or Voilà process serving ``root`` on 127.0.0.1 with a random token."""

    def __init__(self, kind: str, root: Path, notebook: str = "panel.ipynb", state: Path | None = None) -> None:
        """Serve ``notebook`` (relative to ``root``); the log, runs, settings and checkpoints go to ``state``
        (default ``root``), so a server on the repository itself leaves nothing in it."""
        self.kind, self.root, self.notebook = kind, root, notebook
        self.port, self.token = free_port(), secrets.token_hex(16)
        state = state or root
        self.log_path = state / f"{kind}.log"
        env = {**os.environ, "LABKIT_RUNS_DIR": str(state / "runs"), "JUPYTER_CONFIG_DIR": str(state / ".jupyter"),
               "JUPYTER_RUNTIME_DIR": str(state / ".runtime"),
               "JUPYTERLAB_WORKSPACES_DIR": str(state / ".workspaces"),
               "JUPYTERLAB_SETTINGS_DIR": str(state / ".settings"), "PYTHONUNBUFFERED": "1"}
        if kind == "lab":
            cmd = [sys.executable, "-m", "jupyter", "lab", "--allow-root", "--no-browser", "--ip=127.0.0.1",
                   f"--port={self.port}", f"--ServerApp.token={self.token}", "--ServerApp.password=",
                   f"--ServerApp.root_dir={root}", "--LabApp.news_url=None",
                   "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                   "--LabApp.expose_app_in_browser=True", f"--FileCheckpoints.checkpoint_dir={state / '.checkpoints'}"]
        else:  # Voilà as `make app` runs it (labkit.ui.app): the app's template and extensions
            from labkit.ui.app import voila_command, voila_env

            cmd = [*voila_command(root / notebook, self.port), f"--token={self.token}"]
            env = voila_env(env)
        self.log = open(self.log_path, "w")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    @property
    def url(self) -> str:
        if self.kind == "lab":
            return f"http://127.0.0.1:{self.port}/lab/tree/{self.notebook}?token={self.token}"
        return f"http://127.0.0.1:{self.port}/?token={self.token}"

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=2):
                    return
            except urllib.error.HTTPError:
                return  # it answers (a 403 or 404 from the server still means it is up)
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"{self.kind} not ready after {timeout} s:\n{self.log_text()}")

    def log_text(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)  # the server and the kernels it started
                self.proc.wait(10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


@pytest.fixture(scope="session")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        pytest.skip("no Chromium on PATH: `apt-get install -y chromium` (tests/browser/ensure_chromium.py tries it)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("the playwright Python package is not installed (pip install -e '.[dev]')")
    return path


@pytest.fixture
def browser_page(chromium: str) -> Iterator:
    """A fresh Chromium page (1500×2000 viewport, so the whole panel fits in a screenshot)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 2000})
            yield page
        finally:
            browser.close()


def _server(kind: str, tmp_path: Path, notebook: str = "panel.ipynb", source: Path = HERE) -> Iterator[Server]:
    if kind == "lab" and shutil.which("jupyter", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("jupyterlab is not installed next to this Python (pip install -e '.[lab]')")
    shutil.copy(source / notebook, tmp_path / notebook)
    server = Server(kind, tmp_path, notebook)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture
def lab_server(tmp_path: Path) -> Iterator[Server]:
    yield from _server("lab", tmp_path)


@pytest.fixture
def cell_lab_server(tmp_path: Path) -> Iterator[Server]:
    """JupyterLab on ``cell_run.ipynb``: a notebook whose cells train with ``lab.train()``."""
    yield from _server("lab", tmp_path, "cell_run.ipynb")


@pytest.fixture
def app_server(tmp_path: Path) -> Iterator[Server]:
    """Voilà on the app's notebook (``make app``)."""
    from labkit.ui.app import NOTEBOOK

    yield from _server("voila", tmp_path, NOTEBOOK.name, source=NOTEBOOK.parent)


@pytest.fixture
def voila_server(tmp_path: Path) -> Iterator[Server]:
    try:
        import voila  # noqa: F401
    except ImportError:
        pytest.skip("voila is not installed (pip install -e '.[lab]')")
    yield from _server("voila", tmp_path)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
