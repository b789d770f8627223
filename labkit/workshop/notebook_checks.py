"""Keeping notebooks short and clean: cells whose outputs nbval checks, definitions too long for a notebook,
and ``python -m labkit.workshop check FILE...``."""

from __future__ import annotations

import ast
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CHECK_MARK = "# NBVAL_CHECK_OUTPUT"


def is_checked(cell: Mapping[str, Any]) -> bool:
    """Whether a notebook cell is marked ``# NBVAL_CHECK_OUTPUT`` (its outputs are kept and compared)."""
    return cell.get("cell_type") == "code" and CHECK_MARK in _source(cell)


def long_definitions(nb: Mapping[str, Any], max_lines: int = 5) -> list[str]:
    """Functions, classes and lambdas defined in a notebook's code cells that span more than ``max_lines``
    lines (logic belongs in ``labkit``). Returns ``"cell N: def name (K lines)"`` strings; cells that do not
    parse as Python (after dropping ``%``/``!`` lines) are reported too."""
    problems = []
    for index, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") != "code":
            continue
        code = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in _source(cell).splitlines())
        try:
            tree = ast.parse(code)
        except SyntaxError as exc:
            problems.append(f"cell {index}: does not parse ({exc.msg}, line {exc.lineno})")
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
                lines = node.end_lineno - node.lineno + 1
                if lines > max_lines:
                    kind = {"ClassDef": "class", "Lambda": "lambda"}.get(type(node).__name__, "def")
                    problems.append(f"cell {index}: {kind} {getattr(node, 'name', '<lambda>')} ({lines} lines)")
    return problems


def _source(cell: Mapping[str, Any]) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def main(argv: list[str] | None = None) -> int:
    """``python -m labkit.workshop check FILE...``: list long definitions; exit 1 if any notebook has one.
    (Stripping outputs is git's clean filter, nbstripout, which ``make`` installs.)"""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2 or argv[0] != "check":
        print(main.__doc__)
        return 2
    status = 0
    for name in argv[1:]:
        problems = long_definitions(json.loads(Path(name).read_text(encoding="utf-8")))
        status |= bool(problems)
        print("\n".join(f"{name}: {p}" for p in problems) or f"{name}: ok")
    return status
