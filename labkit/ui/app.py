"""The lab as a Voilà app (``make app``): the panel alone, no code, nothing fetched from the network.

    python -m labkit.ui.app [--port 8866] [--no-browser]

Voilà runs ``app/lab.ipynb`` (two cells: set-up and ``Lab()``, so the panel shows as soon as the kernel has
imported labkit) with the ``labkit`` template from ``app/share/jupyter/voila/templates``: Voilà's lab template less
its two Font Awesome stylesheets from a CDN (Voilà's own bundle carries Font Awesome already).
Not solved yet: about 13 "Unsatisfied version" console warnings (extensions built against JupyterLab 4.6 meet
Voilà 0.5's bundled 4.2); restricting Voilà to the panel's three extensions (``allowlist=True``) left the widgets
unrendered in a first try.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

APP_DIR = Path(__file__).resolve().parents[2] / "app"
NOTEBOOK = APP_DIR / "lab.ipynb"
TEMPLATE = "labkit"
EXTENSIONS = ("@jupyter-widgets/jupyterlab-manager", "anywidget", "jupyterlab-plotly")


def voila_command(notebook: Path = NOTEBOOK, port: int | None = None, browser: bool = False,
                  allowlist: bool = False) -> list[str]:
    """The ``voila`` command line that serves ``notebook`` as the lab's app."""
    allow = "[" + ",".join(f"'{name}'" for name in EXTENSIONS) + "]"
    cmd = [sys.executable, "-m", "voila", str(notebook), f"--template={TEMPLATE}", "--Voila.ip=127.0.0.1"]
    if allowlist:
        cmd.append(f"--VoilaConfiguration.extension_allowlist={allow}")
    if port is not None:
        cmd.append(f"--port={port}")
    if not browser:
        cmd.append("--no-browser")
    return cmd


def voila_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) with the app's template folder on ``JUPYTER_PATH``."""
    env = dict(os.environ if env is None else env)
    env["JUPYTER_PATH"] = os.pathsep.join(p for p in (str(APP_DIR / "share" / "jupyter"), env.get("JUPYTER_PATH"))
                                          if p)
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labkit.ui.app", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8866)
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    args = parser.parse_args(argv)
    return subprocess.call(voila_command(port=args.port, browser=not args.no_browser), env=voila_env())


if __name__ == "__main__":
    raise SystemExit(main())
