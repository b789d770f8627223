"""Stop while a notebook cell trains (``lab.train()``), in JupyterLab in Chromium: during Run All, the click stops
the cell's run within about a second and the next cells still run, in order, with complete results."""

from __future__ import annotations

import re
import time

import pytest
from test_browser import ALL_CHARTS_HAVE_POINTS, STATUS, _button, _status_contains, _wait_for
from test_controls_browser import wait_for_kernel

pytestmark = pytest.mark.browser

CELL_OUTPUT = ("() => Array.from(document.querySelectorAll('.jp-OutputArea-output')).map(e => e.textContent)"
               ".find(t => t.includes('cell 3 ran')) || ''")

#: In the page: when Stop was clicked and when the status line first said "stopped" (ms, performance.now()).
WATCH = """() => {
    const button = document.querySelector('.labkit-lab .labkit-stop');
    button.addEventListener('click', () => { window.__clicked = window.__clicked || performance.now(); },
                            {capture: true});
    const status = document.querySelector('.labkit-lab .labkit-status').closest('.widget-html');
    new MutationObserver(() => {
        if (!window.__stopped && status.textContent.includes('stopped at step')) {
            window.__stopped = performance.now();
            window.__stoppedText = status.textContent;
        }
    }).observe(status, {subtree: true, childList: true, characterData: true});
}"""


def test_stop_stops_a_run_that_a_cell_trains(cell_lab_server, browser_page, artifacts):
    page = browser_page
    page.goto(cell_lab_server.url, wait_until="domcontentloaded", timeout=60_000)
    wait_for_kernel(page)
    # Not awaited: the command's promise settles only when the last cell has run.
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
    try:
        _status_contains(page, "Training run #1", 90)
        _wait_for(page, ALL_CHARTS_HAVE_POINTS, 60, "points in the charts")
        time.sleep(2)
        stop = _button(page, "Stop")
        # Enabled within seconds of the run's start. Read at one instant, it was once disabled in a full CI run
        # while the screenshot taken a moment later showed it enabled (cause not found): wait for it instead.
        _wait_for(page, "() => { const b = [...document.querySelectorAll('.labkit-lab button')]"
                        ".find(b => b.textContent.includes('Stop')); return b && !b.disabled; }",
                  15, "Stop to be enabled while a cell trains")
        assert stop.is_enabled(), "Stop is disabled while a cell trains"
        page.evaluate(WATCH)
        stop.click()
        status = _wait_for(page, "() => window.__stoppedText", 20, "the status line to say 'stopped'")
        latency = page.evaluate("() => (window.__stopped - window.__clicked) / 1000")
        kernel_side = float(re.search(r"([\d.]+) s after Stop", status).group(1))
        output = _wait_for(page, CELL_OUTPUT, 90, "the third cell's output")
        assert re.search(r"first stopped at step \d+, second finished", output), output
        assert "Run #2 standard finished: 40 steps" in page.evaluate(STATUS)
        print(f"Stop during a cell: status 'stopped' {latency:.2f} s after the click in the browser, run ended "
              f"{kernel_side:.2f} s after the kernel took the interrupt")
        # The run's own reaction (kernel_side) is labkit's; the rest of the round trip (browser, Jupyter server,
        # SIGINT) is the machine's: 0.48–0.67 s alone or beside two CPU hogs, but 2.03 s once in a full CI run.
        assert latency < 5.0 and kernel_side < 1.0, (latency, kernel_side)
        assert "Traceback" not in page.inner_text(".jp-Notebook") and "KeyboardInterrupt" not in page.inner_text(
            ".jp-Notebook")
    finally:
        page.screenshot(path=str(artifacts / "jupyterlab-stop-during-cell.png"))
