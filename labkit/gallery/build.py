"""Build the gallery: execute each notebook with nbclient, export it with nbconvert, write an offline site.

The site (default ``build/gallery``)::

    index.html            the notebooks, when and where they ran, with which package versions
    guide.html            the instructor's guide (notebooks/GUIDE.md)
    00-tour.html, ...     one page per notebook: prose, code, tables and interactive plotly figures
    static/plotly.min.js  the one copy of plotly.js, from the installed plotly package
    static/mathjax/       MathJax 2 (from jupyter-server-mathjax) for the formulas in the prose
    manifest.json         the same facts as index.html, for scripts: times, memory, figure counts

Everything is configuration of the standard tools: the kernel draws figures with plotly's
``plotly_mimetype`` renderer (``PLOTLY_RENDERER``), nbclient executes without storing widget state, and
nbconvert's ``lab`` template is extended (``templates/labkit_gallery``) to load plotly.js and MathJax from
``static/`` instead of a CDN, to draw the plotly mime type, and to add a bar that says how the page was made.
Two cells, tagged ``remove-cell`` and dropped from the pages, measure the kernel's memory after importing
labkit and at the end of the notebook.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import jinja2
import markupsafe
import nbformat
from nbclient import NotebookClient
from nbconvert import HTMLExporter
from nbconvert.filters import markdown2html_mistune
from nbconvert.preprocessors import Preprocessor
from traitlets.config import Config

from labkit.gallery.panel import STATIC_PANEL_ENV

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = Path(__file__).resolve().parent / "templates"
PLOTLY_MIME = "application/vnd.plotly.v1+json"
HIDDEN_TAG = "remove-cell"
SMOKE_ENV = "LABKIT_SMOKE"
#: Packages whose versions each page states.
PACKAGES = ("labkit", "torch", "numpy", "pandas", "plotly", "ipywidgets", "ipykernel", "nbclient", "nbconvert")
#: nbconvert's HTML output priority (nbconvert 7), after which the gallery puts plotly's mime type first.
DATA_PRIORITY = ("application/vnd.jupyter.widget-view+json", "application/javascript", "text/html", "text/markdown",
                 "image/svg+xml", "text/vnd.mermaid", "text/latex", "image/png", "image/jpeg", "text/plain")
#: MathJax folders the pages never load (other languages, the SVG output, the accessibility extensions).
MATHJAX_SKIP = ("localization", "SVG", "a11y")

_MEASURE_START = """\
def _labkit_gallery_measure():
    import json, psutil, labkit.ui, labkit.workshop  # noqa
    print(json.dumps({"rss_after_import": psutil.Process().memory_info().rss}))
_labkit_gallery_measure(); del _labkit_gallery_measure"""

_MEASURE_END = """\
def _labkit_gallery_measure():
    import json, resource, psutil, torch
    me = psutil.Process()
    # sweep workers still alive; PSS, since forked workers share pages with each other
    children = sum(c.memory_full_info().pss for c in me.children(recursive=True))
    print(json.dumps({"rss_end": me.memory_info().rss, "pss_children_end": children, "torch_threads":
                      torch.get_num_threads(), "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
_labkit_gallery_measure(); del _labkit_gallery_measure"""


@dataclass
class Page:
    """One executed notebook: where its page is, what it took, and what went wrong (if anything)."""

    name: str
    title: str
    goal: str
    seconds: float
    figures: int = 0
    memory: dict[str, int] = field(default_factory=dict)
    error: str | None = None

    @property
    def href(self) -> str:
        return f"{self.name}.html"


@dataclass
class Site:
    """The built site: its folder, the run's facts, and a page per notebook."""

    root: Path
    info: dict[str, Any]
    pages: list[Page]

    @property
    def failures(self) -> list[Page]:
        return [p for p in self.pages if p.error is not None]

    @classmethod
    def load(cls, root: str | os.PathLike) -> Site:
        """The site built earlier in ``root``, from its ``manifest.json``."""
        manifest = json.loads((Path(root) / "manifest.json").read_text(encoding="utf-8"))
        return cls(Path(root), manifest["info"], [Page(**p) for p in manifest["pages"]])


class NotebookLinks(Preprocessor):
    """Point markdown links between notebooks (``01-language-models.ipynb``) at their gallery pages."""

    names: set[str] = set()

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type == "markdown":
            cell.source = re.sub(r"\]\(([\w.-]+)\.ipynb(#[^)\s]*)?\)", self._link, cell.source)
        return cell, resources

    def _link(self, match: re.Match) -> str:
        name, anchor = match.group(1), match.group(2) or ""
        return f"]({name}.html{anchor})" if name in self.names else match.group(0)


def run_info(smoke: bool) -> dict[str, Any]:
    """When, where and with what the gallery is built: date, mode, machine, Python, package versions, commit."""
    import psutil

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": "smoke" if smoke else "full",
        "machine": f"{cpu}, {os.cpu_count()} logical cores, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM",
        "os": platform.platform(terse=True),
        "python": platform.python_version(),
        "load_average": [round(x, 1) for x in os.getloadavg()],
        "versions": versions,
        "commit": _git_commit(),
    }


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True,
                             timeout=10, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def kernel_env(smoke: bool, runs_dir: Path) -> dict[str, str]:
    """The kernels' environment: the mode, plotly's mime-type renderer, the static panel, a scratch runs folder."""
    env = {**os.environ, STATIC_PANEL_ENV: "1", "PLOTLY_RENDERER": "plotly_mimetype",
           "LABKIT_RUNS_DIR": str(runs_dir), "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
    env.pop(SMOKE_ENV, None)
    if smoke:
        env[SMOKE_ENV] = "1"
    return env


def _hidden_cell(source: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_code_cell(source, metadata={"tags": [HIDDEN_TAG]})


def _cell_text(cell: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")


def _describe(nb: nbformat.NotebookNode, name: str) -> tuple[str, str]:
    """The notebook's title (its first heading) and goal (the first cell's **Goal.** sentence or paragraph)."""
    first = nb.cells[0].source if nb.cells and nb.cells[0].cell_type == "markdown" else ""
    title = next((line[2:].strip() for line in first.splitlines() if line.startswith("# ")), name)
    goal = re.search(r"\*\*Goal\.\*\*\s*(.+?)(?:\n\n|$)", first, re.S)
    return title, (goal.group(1).strip() if goal else "")


def execute(path: Path, env: dict[str, str], timeout: int) -> tuple[nbformat.NotebookNode, Page]:
    """Run one notebook top to bottom in a fresh kernel (its folder as working directory)."""
    nb = nbformat.read(path, as_version=4)
    title, goal = _describe(nb, path.stem)
    nb.cells.insert(0, _hidden_cell(_MEASURE_START))
    nb.cells.append(_hidden_cell(_MEASURE_END))
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", store_widget_state=False,
                            resources={"metadata": {"path": str(path.parent)}})
    page = Page(path.stem, title, goal, 0.0)
    start = time.perf_counter()
    try:
        client.execute(env=env)
    except Exception as exc:  # a notebook that fails still gets a page, showing where it stopped
        page.error = f"{type(exc).__name__}: {exc}"
    page.seconds = time.perf_counter() - start
    for cell in nb.cells:  # number the prompts as if the first hidden cell had not run
        if cell.cell_type == "code" and cell.get("execution_count"):
            cell.execution_count -= 1
            for output in cell.outputs:
                if output.get("execution_count"):
                    output.execution_count -= 1
    for cell in (nb.cells[0], nb.cells[-1]):
        for line in _cell_text(cell).splitlines():
            if line.startswith("{"):
                page.memory.update(json.loads(line))
    page.figures = sum(PLOTLY_MIME in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    return nb, page


def exporter(names: Iterable[str]) -> HTMLExporter:
    """nbconvert's HTML exporter with the gallery template, local scripts and plotly's mime type first."""
    config = Config()
    config.HTMLExporter.template_name = "labkit_gallery"
    config.HTMLExporter.extra_template_basedirs = [str(TEMPLATES)]
    config.HTMLExporter.mathjax_url = "static/mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe"
    config.HTMLExporter.exclude_input_prompt = False
    config.TagRemovePreprocessor.enabled = True
    config.TagRemovePreprocessor.remove_cell_tags = {HIDDEN_TAG}
    config.NbConvertBase.display_data_priority = [PLOTLY_MIME, *DATA_PRIORITY]
    exp = HTMLExporter(config=config)
    links = NotebookLinks()
    links.names = set(names)
    exp.register_preprocessor(links, enabled=True)
    return exp


def write_page(exp: HTMLExporter, nb: nbformat.NotebookNode, page: Page, info: dict[str, Any], out: Path) -> None:
    resources = {"metadata": {"name": page.title}, "gallery": {"site": info, "page": asdict(page)}}
    body, _ = exp.from_notebook_node(nb, resources=resources)
    (out / page.href).write_text(body, encoding="utf-8")


def copy_static(out: Path) -> None:
    """One copy of plotly.js (from the installed plotly) and of MathJax (from jupyter-server-mathjax)."""
    import jupyter_server_mathjax
    import plotly

    static = out / "static"
    static.mkdir(parents=True, exist_ok=True)
    shutil.copy2(Path(plotly.__file__).parent / "package_data" / "plotly.min.js", static / "plotly.min.js")
    mathjax = Path(jupyter_server_mathjax.__file__).parent / "static"
    shutil.rmtree(static / "mathjax", ignore_errors=True)
    shutil.copytree(mathjax, static / "mathjax", ignore=shutil.ignore_patterns(*MATHJAX_SKIP))


def build(out: str | os.PathLike = REPO / "build" / "gallery", notebooks: Iterable[str | os.PathLike] | None = None,
          *, smoke: bool = False, jobs: int = 1, timeout: int = 1800, guide: str | os.PathLike | None = None,
          log: Callable[[str], None] = print) -> Site:
    """Execute ``notebooks`` (default: every ``notebooks/*.ipynb``) and write the site into ``out``.

    ``jobs`` notebooks run at once, each in its own kernel (torch on one thread each: ``ws.setup()``).
    ``timeout`` bounds one cell, in seconds. A notebook that fails still gets its page (up to the failing
    cell, with the error), is marked on the index, and is listed in ``Site.failures``. The executed
    notebooks are kept beside the site (:func:`executed_dir`), so that :func:`render` can redo the pages alone.
    """
    out = Path(out)
    default = sorted((REPO / "notebooks").glob("*.ipynb"))
    paths = sorted(Path(p) for p in notebooks) if notebooks is not None else default
    if not paths:
        raise FileNotFoundError("no notebooks to build: pass .ipynb files or run from a labkit checkout")
    info = run_info(smoke)
    log(f"gallery: {len(paths)} notebooks in {info['mode']} mode, {jobs} at a time, into {out}")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="labkit-gallery-") as scratch:
        env = kernel_env(smoke, Path(scratch) / "runs")

        def one(path: Path) -> tuple[nbformat.NotebookNode, Page]:
            nb, page = execute(path, env, timeout)
            log(f"  {page.name}: {page.seconds:.0f} s, {page.figures} figures"
                + (f" — FAILED: {page.error.splitlines()[0]}" if page.error else ""))
            return nb, page

        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            results = list(pool.map(one, paths))
    info["seconds"] = round(time.perf_counter() - start, 1)
    kept = executed_dir(out)
    shutil.rmtree(kept, ignore_errors=True)
    kept.mkdir(parents=True)
    for nb, page in results:
        nbformat.write(nb, kept / f"{page.name}.ipynb")
    (kept / "run.json").write_text(json.dumps({"info": info, "pages": [asdict(p) for _, p in results]}, indent=2),
                                   encoding="utf-8")
    return render(out, guide=Path(guide) if guide is not None else paths[0].parent / "GUIDE.md", log=log)


def executed_dir(out: str | os.PathLike) -> Path:
    """Where the executed notebooks of the site ``out`` are kept: ``<out>-executed`` beside it (not published)."""
    out = Path(out)
    return out.parent / f"{out.name}-executed"


def render(out: str | os.PathLike, guide: str | os.PathLike | None = REPO / "notebooks" / "GUIDE.md",
           log: Callable[[str], None] = print) -> Site:
    """Write the site ``out`` from its executed notebooks (kept by :func:`build`), without running anything."""
    out, kept = Path(out), executed_dir(out)
    run = json.loads((kept / "run.json").read_text(encoding="utf-8"))
    info, pages = run["info"], [Page(**p) for p in run["pages"]]
    out.mkdir(parents=True, exist_ok=True)
    exp = exporter(p.name for p in pages)
    for page in pages:
        write_page(exp, nbformat.read(kept / f"{page.name}.ipynb", as_version=4), page, info, out)
    has_guide = guide is not None and Path(guide).exists()
    if has_guide:
        guide_nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(Path(guide).read_text("utf-8"))])
        write_page(exp, guide_nb, Page("guide", "Instructor's guide", "", 0.0), info, out)
    copy_static(out)
    site = Site(out, info, pages)
    write_index(site, has_guide=has_guide)
    log(f"gallery: {len(pages)} pages, executed in {info['seconds']:.0f} s, {site_bytes(out) / 2**20:.1f} MiB; "
        f"open {out / 'index.html'}")
    return site


def write_index(site: Site, has_guide: bool) -> None:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True)
    env.filters["markdown"] = lambda text: markupsafe.Markup(markdown2html_mistune(text))
    html = env.get_template("site_index.html.j2").render(info=site.info, pages=site.pages, has_guide=has_guide)
    (site.root / "index.html").write_text(html, encoding="utf-8")
    manifest = {"info": site.info, "pages": [asdict(p) for p in site.pages]}
    (site.root / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")


def site_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
