"""``python -m labkit.gallery [--mode full|smoke] [--out DIR] [--jobs N] [NOTEBOOK ...]``: build the gallery."""

from __future__ import annotations

import argparse
import os
import sys

from labkit.gallery.build import REPO, SMOKE_ENV, build, render


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labkit.gallery", description=__doc__.split(":", 1)[1].strip())
    parser.add_argument("notebooks", nargs="*", help="notebooks to build (default: every notebooks/*.ipynb)")
    parser.add_argument("--out", default=str(REPO / "build" / "gallery"), help="site folder (default: %(default)s)")
    parser.add_argument("--mode", choices=("full", "smoke"), default=None,
                        help=f"full: the notebooks' real runs (make gallery); smoke: tiny runs, seconds per notebook "
                             f"(default: smoke when {SMOKE_ENV}=1, else full)")
    parser.add_argument("--jobs", type=int, default=1, help="notebooks executed at once (default: %(default)s)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds one cell may take (default: %(default)s)")
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite the pages from the notebooks the last build executed (runs nothing)")
    args = parser.parse_args(argv)
    if args.render_only:
        site = render(args.out)
        return 1 if site.failures else 0
    smoke = args.mode == "smoke" if args.mode else os.environ.get(SMOKE_ENV, "").strip().lower() in {"1", "true"}
    site = build(args.out, args.notebooks or None, smoke=smoke, jobs=args.jobs, timeout=args.timeout)
    for page in site.failures:
        print(f"FAILED {page.name}: {page.error}", file=sys.stderr)
    return 1 if site.failures else 0


if __name__ == "__main__":
    sys.exit(main())
