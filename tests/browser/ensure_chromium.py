"""Make sure a Chromium is available for the browser tests; never fail the build.

``make test`` runs this before pytest. If ``chromium`` is already on PATH it says so and stops. Otherwise,
where it is allowed (running as root, or with password-less sudo; ``apt-get`` present; ``LABKIT_NO_APT``
unset) it runs ``apt-get install -y chromium`` (after ``apt-get update`` if the package is unknown).
Whatever happens it exits 0: without Chromium the browser tests skip themselves and say why.
Playwright's own browser download (``playwright install``) is never used.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
TIMEOUT_S = 900


def find() -> str | None:
    return next((path for name in NAMES if (path := shutil.which(name))), None)


def _apt_prefix() -> list[str] | None:
    """How to call apt-get here, or None (with the reason printed) when installing is not allowed."""
    if os.environ.get("LABKIT_NO_APT"):
        print("ensure_chromium: LABKIT_NO_APT is set; not installing Chromium (browser tests will be skipped)")
        return None
    if shutil.which("apt-get") is None:
        print("ensure_chromium: no apt-get on this system; install Chromium yourself to run the browser tests")
        return None
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return []
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        return ["sudo", "-n"]
    print("ensure_chromium: not root and no password-less sudo; run `sudo apt-get install -y chromium` "
          "to enable the browser tests")
    return None


def _run(cmd: list[str]) -> bool:
    print("ensure_chromium: $", " ".join(cmd), flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        result = subprocess.run(cmd, env=env, timeout=TIMEOUT_S, capture_output=True, text=True)
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(f"ensure_chromium: {exc}")
        return False
    if result.returncode != 0:
        print(f"ensure_chromium: exit {result.returncode}: {(result.stderr or result.stdout).strip()[-600:]}")
    return result.returncode == 0


def main() -> int:
    path = find()
    if path:
        print(f"ensure_chromium: using {path}")
        return 0
    prefix = _apt_prefix()
    if prefix is None:
        return 0
    install = [*prefix, "apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    if not _run(install) and _run([*prefix, "apt-get", "update"]):
        _run(install)
    path = find()
    print(f"ensure_chromium: {'installed ' + path if path else 'Chromium is still missing; browser tests will skip'}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as exc:  # never fail the build over a browser
        print(f"ensure_chromium: {type(exc).__name__}: {exc}")
        sys.exit(0)
