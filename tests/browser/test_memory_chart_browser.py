"""The memory chart with three runs, rendered by plotly.js in Chromium (the panel's figure, exported): one stacked
bar per run beside its hatched estimate, RSS on its own panel, a diverged run that leaves the loss axis through the
top. Writes ``test-artifacts/memory-three-runs.png`` to look at."""

from __future__ import annotations

import pytest

from labkit.config import RunConfig
from labkit.runs import RunStatus
from labkit.ui import Lab

pytestmark = pytest.mark.browser

BARS = """() => {
    const gd = document.querySelector('.js-plotly-plot');
    return gd.calcdata.filter(cd => cd[0] && cd[0].trace.type === 'bar' && cd[0].trace.xaxis === 'x3')
                      .map(cd => ({name: cd[0].trace.name, x: Array.from(cd[0].trace.x)}));
}"""
LOSS_RANGE = "() => document.querySelector('.js-plotly-plot')._fullLayout.yaxis.range"


def test_memory_chart_with_three_runs(browser_page, artifacts, tmp_path):
    lab = Lab(RunConfig(arch="transformer", width=64, depth=2, heads=2, seq_len=32, batch_size=8, steps=60,
                        eval_every=20, eval_batches=2, scales_every=20), save=False)
    lab.train()
    lab.train(optimizer="sgd", format="bf16")
    blown = lab.train(scaling="u-mup", optimizer="sgd", lr=8.0)
    assert blown.status is RunStatus.DIVERGED
    path = lab.to_html(tmp_path / "three-runs.html")
    page = browser_page
    page.set_viewport_size({"width": 1500, "height": 1300})
    page.goto(path.as_uri())
    page.wait_for_selector(".js-plotly-plot .subplot.x3y3")
    page.wait_for_timeout(1000)
    page.screenshot(path=str(artifacts / "memory-three-runs.png"), full_page=True)
    bars = page.evaluate(BARS)
    categories = {x for bar in bars for x in bar["x"]}
    assert len(bars) == 3 * 8 and len(categories) == 6, categories  # 4 parts × (measured, estimate) × 3 runs
    low, high = page.evaluate(LOSS_RANGE)
    assert high < 10, "the diverged run flattened the loss axis"
