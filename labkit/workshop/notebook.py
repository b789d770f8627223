"""Starting a notebook: smoke mode (tiny runs under test), the thread count, and showing source code."""

from __future__ import annotations

import inspect
import os
from typing import Any

import torch

SMOKE_ENV = "LABKIT_SMOKE"


_TRUE = ("1", "true", "yes", "on")


def smoke_mode() -> bool:
    """True when the environment variable ``LABKIT_SMOKE`` is set to 1/true/yes/on (the tests set it)."""
    return os.environ.get(SMOKE_ENV, "").strip().lower() in _TRUE


def full_or_smoke(full: Any, smoke: Any) -> Any:
    """``smoke`` in smoke mode, else ``full``: step counts, grids and widths that shrink under test."""
    return smoke if smoke_mode() else full


def setup(threads: int = 1) -> str:
    """Prepare a notebook: set torch's CPU thread count (steady timings on a shared 2-core machine) and
    return a one-line description of the mode, for the notebook to print."""
    torch.set_num_threads(threads)
    mode = (f"smoke mode ({SMOKE_ENV}=1): tiny runs, numbers are not meaningful" if smoke_mode()
            else "full mode")
    return f"labkit workshop: {mode}; torch uses {torch.get_num_threads()} CPU thread(s)."


def show_source(obj: Any) -> Any:
    """The source code of a function or class, as a syntax-highlighted IPython ``Code`` object."""
    from IPython.display import Code

    return Code(inspect.getsource(obj), language="python")
