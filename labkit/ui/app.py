"""The lab as a Voilà app (``make app``): the panel alone, no code, nothing fetched from the network.

    python -m labkit.ui.app [--port 8866] [--no-browser]

Voilà runs ``app/lab.ipynb`` (two cells: set-up and ``Lab()``, so the panel shows as soon as the kernel has
imported labkit) with the ``labkit`` template from ``app/share/jupyter/voila/templates``: Voilà's lab template less
its two Font Awesome stylesheets from a CDN (Voilà's own bundle carries Font Awesome already).
Not solved: 13 shared-module version warnings in the browser console ("Unsatisfied version 4.2.5 from
_JUPYTERLAB.CORE_OUTPUT of shared singleton module @jupyterlab/... (required ^4.6.2)"). Voilà 0.5.13 (the newest
release) bundles JupyterLab 4.2.5's packages as the shared modules; the widget extensions were built against newer
ones: @jupyter-widgets/jupyterlab-manager 5.0.16 (jupyterlab_widgets 3.0.17, for ipywidgets 8.1.9) asks for ^4.6.2
(9 warnings: console, logconsole, mainmenu, notebook, outputarea, rendermime, services ^7.6.2, settingregistry,
translation) and Voilà's own @voila-dashboards/widgets-manager8 0.5.13 asks for ^4.5.10 (4 warnings: rendermime,
services, statedb, coreutils). webpack then uses 4.2.5 anyway; the panel works. No configuration removes them:
Voilà needs both (denying jupyterlab-manager leaves "No version of module @jupyter-widgets/base is registered";
an ``extension_allowlist`` must name widgets-manager8 too, or no widget renders), and widgets-manager8 ships inside
Voilà's own wheel, so no choice of versions agrees either. anywidget 0.11.0 and jupyterlab-plotly 7.1.0 cause none.
The app loads only ``EXTENSIONS``, so other installed extensions cannot add clashes; the browser test fails on any
other kind of version warning.
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
#: The only JupyterLab extensions the app loads (whatever else is installed): Voilà's widget manager and the
#: JupyterLab one it builds on (it registers @jupyter-widgets/base and controls), anywidget and plotly's.
EXTENSIONS = ("@voila-dashboards/widgets-manager8", "@jupyter-widgets/jupyterlab-manager", "anywidget",
              "jupyterlab-plotly")


def voila_command(notebook: Path = NOTEBOOK, port: int | None = None, browser: bool = False) -> list[str]:
    """The ``voila`` command line that serves ``notebook`` as the lab's app."""
    allow = "[" + ",".join(f"'{name}'" for name in EXTENSIONS) + "]"
    cmd = [sys.executable, "-m", "voila", str(notebook), f"--template={TEMPLATE}", "--Voila.ip=127.0.0.1",
           f"--VoilaConfiguration.extension_allowlist={allow}"]
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
