"""The executed gallery (``make gallery``), built here in smoke mode: every notebook runs and gets its page, the
site loads nothing from the network, plotly.js is in it once, every figure is drawn, and the live panel is
replaced by its static figure. The browser test opens every page from the file system in headless Chromium.

The site is built once, in the background from the start of the session (``conftest.py``), so that this
second run of the notebooks (after nbval's) mostly uses the core the other tests leave idle. A notebook that
stops rendering as a page fails here.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from labkit.gallery import panel
from labkit.gallery.build import Site, build

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
ARTIFACTS = REPO / "test-artifacts" / "gallery"
#: References in a page: script/img/iframe sources, stylesheet links, CSS url(...).
REFERENCE = re.compile(r"""<(?:script|img|iframe|source|link)\b[^>]*?\b(?:src|href)\s*=\s*["']([^"']+)["']"""
                       r"""|url\(\s*["']?([^"')]+)["']?\s*\)""", re.I)
PLOTLY_JS_BANNER = b"* plotly.js v"


@pytest.fixture(scope="module")
def site(gallery_build, tmp_path_factory):
    """The smoke-mode site: the build ``conftest.py`` started in the background at collection, or a new one."""
    if gallery_build is None:
        return build(tmp_path_factory.mktemp("gallery"), smoke=True, jobs=2, log=lambda _: None)
    out = gallery_build / "site"
    status = (gallery_build / "exit_status").read_text().strip()
    log = (gallery_build / "build.log").read_text(encoding="utf-8", errors="replace")
    assert (out / "manifest.json").exists(), f"the gallery build wrote no site (exit {status}):\n{log[-3000:]}"
    return Site.load(out)


def _pages(site) -> list[Path]:
    return sorted(site.root.glob("*.html"))


def test_every_notebook_runs_and_has_a_page(site):
    assert not site.failures, [f"{p.name}: {p.error}" for p in site.failures]
    assert [p.name for p in site.pages] == [p.stem for p in NOTEBOOKS]
    index = (site.root / "index.html").read_text(encoding="utf-8")
    for page in site.pages:
        assert (site.root / page.href).stat().st_size > 10_000, page.name
        assert f'href="{page.href}"' in index, f"index does not link {page.href}"
    assert 'href="guide.html"' in index and (site.root / "guide.html").exists()


def test_pages_state_how_they_were_made(site):
    info = site.info
    assert info["mode"] == "smoke" and info["versions"]["torch"] != "not installed"
    for path in _pages(site):  # the index and every notebook's page (the guide's was not executed)
        text = path.read_text(encoding="utf-8")
        if path.name != "guide.html":
            assert info["date"] in text and f"torch {info['versions']['torch']}" in text, path.name
    for page in site.pages:  # the hidden measuring cells ran, and are not on the pages
        assert page.memory["rss_after_import"] > 50 * 2**20 and page.memory["peak_rss"] > 50 * 2**20
        assert page.memory["torch_threads"] == 1
        assert "_labkit_gallery_measure" not in (site.root / page.href).read_text(encoding="utf-8")


def test_nothing_is_loaded_from_the_network(site):
    """Every script, stylesheet, image and CSS url() is a relative path to a file in the site (or inline data)."""
    for path in _pages(site):
        text = path.read_text(encoding="utf-8")
        refs = [a or b for a, b in REFERENCE.findall(text)]
        assert refs or path.name == "index.html", path.name  # the index has no scripts; the others load two
        for ref in refs:
            if ref.startswith(("data:", "#")):
                continue
            assert not re.match(r"^([a-z][a-z0-9+.-]*:|//)", ref, re.I), f"{path.name} loads {ref}"
            assert (site.root / ref.split("?")[0]).is_file(), f"{path.name}: {ref} is not in the site"
        assert "cdn" not in " ".join(refs).lower()


def test_plotly_js_is_in_the_site_once(site):
    copies = [p.relative_to(site.root).as_posix() for p in site.root.rglob("*")
              if p.is_file() and PLOTLY_JS_BANNER in p.read_bytes()]
    assert copies == ["static/plotly.min.js"]


def test_every_figure_is_on_its_page_and_no_widget_is(site):
    assert sum(p.figures for p in site.pages) >= len(site.pages)  # most notebooks draw; the count is checked below
    for page in site.pages:
        text = (site.root / page.href).read_text(encoding="utf-8")
        assert text.count('class="plotly-graph-div"') == page.figures, page.name
        assert "application/vnd.jupyter.widget-view+json" not in text, f"{page.name}: a widget cannot run here"


def test_the_live_panel_is_its_final_static_figure(site):
    """Notebook 0's panel cell holds the note and the figure of both runs (updated after each), like lab.figure()."""
    text = (site.root / "00-tour.html").read_text(encoding="utf-8")
    assert "The live panel, as a static figure." in text
    figures = re.findall(r'<script\b[^>]*\bid="[^"]+-figure"[^>]*>(.*?)</script>', text, re.S)
    panel_figure, static_figure = figures[0], figures[-1]  # the panel's cell, and the notebook's lab.figure()
    assert '"#1 standard"' in panel_figure and '"#2 unit"' in panel_figure
    assert len(panel_figure) == pytest.approx(len(static_figure), rel=0.01)


def test_static_panel_is_off_unless_asked(monkeypatch):
    monkeypatch.delenv(panel.STATIC_PANEL_ENV, raising=False)
    assert not panel.requested()
    monkeypatch.setenv(panel.STATIC_PANEL_ENV, "1")
    assert panel.requested()


@pytest.mark.browser
def test_pages_render_offline_in_chromium(site):
    """Open every page from file://: each plotly figure is drawn with its traces, math is typeset, no request
    leaves the file system (``about:blank`` is MathJax's font probe) and no script fails."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    sync_api = pytest.importorskip("playwright.sync_api")
    if chromium is None:
        pytest.skip("no chromium (tests/browser/ensure_chromium.py installs it)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
            "--disable-component-update", "--disable-sync", "--disable-quic", "--disable-dev-shm-usage"]
    figures = {p.href: p.figures for p in site.pages}
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=args)
        try:
            for path in _pages(site):
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                requests: list[str] = []
                errors: list[str] = []
                page.on("request", lambda r, seen=requests: seen.append(r.url))
                page.on("pageerror", lambda e, seen=errors: seen.append(str(e)))
                page.goto(path.as_uri(), wait_until="load")
                expected = figures.get(path.name, 0)
                if expected:
                    page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= "
                                           f"{expected}", timeout=30_000)
                drawn = page.evaluate("""() => [...document.querySelectorAll('.js-plotly-plot')].map(
                    p => p.querySelectorAll('.trace, .point, .bars path').length)""")
                assert len(drawn) == expected, path.name
                assert all(n > 0 for n in drawn), f"{path.name}: a figure without traces: {drawn}"
                if path.name == "01-language-models.html":
                    page.wait_for_function("document.querySelectorAll('.MathJax').length > 0", timeout=30_000)
                page.screenshot(path=str(ARTIFACTS / f"{path.stem}.png"))
                outside = [u for u in requests if not u.startswith(("file://", "data:", "about:blank"))]
                assert not outside, f"{path.name} requested {outside}"
                assert not errors, f"{path.name}: {errors}"
                page.close()
        finally:
            browser.close()
