"""The controls in a real browser: what a click changes must survive the round trip to the kernel and back."""

from __future__ import annotations

import time

import pytest
from test_browser import STATUS, _wait_for

from labkit.config import RunConfig
from labkit.ui.controls import SCALING_CHOICES, default_lr, describe_lr

pytestmark = pytest.mark.browser

READOUT = ("() => Array.from(document.querySelectorAll('.labkit-lab .widget-html-content small'))"
           ".map(e => e.textContent).find(t => t.includes('lr =')) || ''")
AUTO = "() => { const b = document.querySelector('.labkit-lab .labkit-lr-auto input'); return b ? b.checked : null; }"
#: The default AdamW learning rate of each scaling method (menu label -> "0.00781 = 2⁻⁷ ≈ 10⁻²·¹"), as the
#: readout prints it: taken from labkit's defaults table, so a re-measured default needs no edit here.
DEFAULTS = {label: describe_lr(default_lr(RunConfig(scaling=scaling))) for label, scaling in SCALING_CHOICES}


def wait_for_kernel(page) -> None:
    """Wait until JupyterLab's current notebook has an idle kernel."""
    _wait_for(page, "() => !!(window.jupyterapp && window.jupyterapp.shell.currentWidget && window.jupyterapp.shell"
                    ".currentWidget.sessionContext && window.jupyterapp.shell.currentWidget.sessionContext.session"
                    " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel && window.jupyterapp"
                    ".shell.currentWidget.sessionContext.session.kernel.status === 'idle')", 60,
              "the notebook's kernel")


def _open_lab(page, server) -> None:
    page.goto(server.url, wait_until="domcontentloaded", timeout=60_000)
    wait_for_kernel(page)
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    _wait_for(page, "() => !!document.querySelector('.labkit-lab .labkit-lr-auto input')", 90, "the controls")


def _settle(page, seconds: float = 1.5) -> None:
    """Let every echo of the last change travel to the kernel and back."""
    time.sleep(seconds)


def test_auto_lr_survives_every_method_and_back(lab_server, browser_page, artifacts):
    page = browser_page
    _open_lab(page, lab_server)
    assert page.evaluate(AUTO) is True
    scaling = page.locator(".widget-dropdown:has(label:text-is('scaling')) select")
    try:
        for label in [*DEFAULTS, "standard", "u-μP", "unit", "standard"]:
            scaling.select_option(label=label)
            readout = _wait_for(page, f"() => {{ const t = ({READOUT})(); return t.includes('{DEFAULTS[label]} ') "
                                      f"&& t.includes('default of {label} ') ? t : ''; }}", 15,
                                f"the auto readout of {label}")
            _settle(page)
            assert page.evaluate(AUTO) is True, f"auto unticked after choosing {label}"
            assert page.evaluate(READOUT) == readout, f"the readout changed after choosing {label}"
        # Untick, move on, tick again under u-μP: auto comes back with u-μP's default and stays.
        scaling.select_option(label="u-μP")
        _settle(page)
        page.locator(".labkit-lab .labkit-lr-auto input").uncheck()
        _settle(page)
        assert "auto" not in page.evaluate(READOUT)
        page.locator(".labkit-lab .labkit-lr-auto input").check()
        _wait_for(page, f"() => ({READOUT})().includes('auto: lr = {DEFAULTS['u-μP']}')", 15, "u-μP's default again")
        _settle(page)
        assert page.evaluate(AUTO) is True, "re-ticking auto was undone under u-μP"
        # Back to standard: the run that starts uses standard's default, not u-μP's.
        scaling.select_option(label="standard")
        _wait_for(page, f"() => ({READOUT})().includes('{DEFAULTS['standard']}')", 15, "standard's default")
        _settle(page)
        page.locator(".labkit-lab button", has_text="Train").first.click()
        status = _wait_for(page, f"() => {{ const s = ({STATUS})(); return s.includes('Training run #1') ? s : ''; }}",
                           30, "the run to start")
        assert f"auto lr {DEFAULTS['standard'].split(' ≈')[0]}" in status, status
        page.locator(".labkit-lab button", has_text="Stop").first.click()
        _wait_for(page, f"() => ({STATUS})().includes('stopped at step')", 30, "the run to stop")
    finally:
        page.screenshot(path=str(artifacts / "controls-auto-lr.png"))
