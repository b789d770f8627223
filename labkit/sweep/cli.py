"""``python -m labkit sweep``: run a grid from the shell.

Every RunConfig field is an option that takes a comma-separated list and ``low..high`` doubling ranges;
each option given with several values is an axis of the grid::

    python -m labkit sweep --scaling standard,seed-l2-once --width 64,128 --lr 2**-10..2**0 --steps 200
    python -m labkit sweep ... --executor dask            # or sequential, local (default), tcp://host:8786
    python -m labkit sweep ... --json                     # the result table as JSON records on stdout

Running the same command again resumes: finished and diverged runs are not redone.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from labkit.config import ConfigError, RunConfig
from labkit.runs import default_runs_dir


def _parse_int(text: str) -> int:
    from labkit.__main__ import parse_number

    value = parse_number(text)
    if not float(value).is_integer():
        raise ConfigError(f"{text!r} is not an integer")
    return int(value)


def _field_parser(field: dataclasses.Field) -> Callable[[str], Any]:
    """How one value of a RunConfig field is read from text (enums are checked by RunConfig itself)."""
    from labkit.__main__ import parse_number

    annotation = str(field.type)
    parse: Callable[[str], Any] = {"int": _parse_int, "float": parse_number}.get(
        annotation.split("|")[0].strip(), str.strip)
    if "None" in annotation:
        return lambda text: None if text.strip().lower() == "none" else parse(text)
    return parse


def add_sweep_command(subparsers: Any) -> None:
    """Register the ``sweep`` subcommand on the ``python -m labkit`` parser's subparsers."""
    parser = subparsers.add_parser(
        "sweep", help="train a grid of runs in parallel, save each, resume where it stopped",
        description=__doc__.split("\n\n", 1)[1].replace("::", ":"),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = RunConfig()
    group = parser.add_argument_group(
        "grid: any run option, as a comma list (a,b,c) and/or doubling ranges (2**-10..2**0, 32..256)")
    for field in dataclasses.fields(RunConfig):
        default = getattr(defaults, field.name)
        shown = default.value if isinstance(default, StrEnum) else default
        group.add_argument("--" + field.name.replace("_", "-"), dest=field.name, default=argparse.SUPPRESS,
                           metavar="VALUES", help=f"{field.metadata.get('help', '')} (default: {shown})")
    options = parser.add_argument_group("sweep")
    options.add_argument("--executor", default="local",
                         help="sequential, local (worker processes, default), gpu (one worker per CUDA GPU; "
                              "sweep --device cuda), dask (a local Dask cluster), "
                              "or a Dask scheduler address such as tcp://10.0.0.5:8786")
    options.add_argument("--workers", type=int, default=None, help="worker processes (default: one per core)")
    options.add_argument("--name", default=None, help="sweep name (default: derived from the grid)")
    options.add_argument("--retries", type=int, default=1, help="extra attempts for a run whose worker died")
    options.add_argument("--metric", default="final_val_loss", help="loss used to pick the best LR")
    options.add_argument("--runs-dir", default=str(default_runs_dir()), help="folder of saved runs")
    options.add_argument("--json", action="store_true", help="print the result table as JSON records")
    options.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=cmd_sweep)


def grid_from_args(args: argparse.Namespace) -> list[RunConfig]:
    """The configs named by the RunConfig options of ``args`` (each a list of values)."""
    from labkit.sweep.grid import grid, parse_values

    axes: dict[str, list[Any]] = {}
    for field in dataclasses.fields(RunConfig):
        if field.name in vars(args):
            try:
                axes[field.name] = parse_values(getattr(args, field.name), _field_parser(field))
            except (argparse.ArgumentTypeError, ConfigError) as exc:
                raise ConfigError(f"--{field.name.replace('_', '-')}: {exc}") from None
    return grid(RunConfig(), **axes)


def cmd_sweep(args: argparse.Namespace) -> int:
    from labkit.sweep.analysis import paper_table
    from labkit.sweep.core import Sweep

    sweep = Sweep(grid_from_args(args), args.name, root=args.runs_dir)
    if not args.quiet:
        print(f"{sweep.name}: {len(sweep)} runs, {len(sweep.todo())} to train, executor {args.executor}",
              file=sys.stderr)
    try:
        table = sweep.run(args.executor, workers=args.workers, retries=args.retries, progress=not args.quiet)
    except KeyboardInterrupt:
        done = int(sweep.table()["status"].isin(["finished", "diverged"]).sum())
        print(f"\ninterrupted: {done}/{len(sweep)} runs done; run the same command again to resume",
              file=sys.stderr)
        return 130
    if args.json:
        print(table.to_json(orient="records"))
    else:
        counts = table["status"].value_counts().to_dict()
        print(f"sweep {sweep.name}: {counts}, saved in {sweep.store.root}")
        print(paper_table(table, metric=args.metric).to_string())
        failed = table[table["status"] == "failed"]
        for _, row in failed.iterrows():
            print(f"failed {row['key']}: {row['error']}")
    return 1 if (table["status"] == "failed").any() else 0
