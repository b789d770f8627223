"""The command line, in one place: ``python -m labkit COMMAND`` (``--help`` of each command says more).

Every field of :class:`labkit.config.RunConfig` is an option of ``train``, ``scales`` and ``sweep``,
generated from the dataclass (:func:`labkit.config.field_type`), so the command line never drifts from the
config. Numbers may be written ``3e-3``, ``0.01`` or ``2**-7``; ``sweep`` takes comma lists and doubling
ranges (``2**-10..2**0``). Values are checked by ``RunConfig`` itself, the same checks the lab's panel, the
Python API and sweeps get.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import json
import math
import signal
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from labkit.config import ConfigError, RunConfig, field_type
from labkit.runs import Run, RunStore, default_runs_dir

#: Most values one ``low..high`` range may expand to (a sweep of more is almost surely a typo).
MAX_RANGE_VALUES = 64

DESCRIPTION = "Unit Scaling Lab: train, list, sweep and sample language models from the shell."

#: Commands that live in their own module as ``main(argv) -> int``; each is listed in ``--help`` when its
#: module is installed, and gets the rest of the command line. Add new ones here.
MODULE_COMMANDS: dict[str, tuple[str, str]] = {
    "coord-check": ("labkit.coord", "muP coordinate check: activation scales across widths"),
}


# --- numbers, ranges and config fields ----------------------------------------------------------------------


def parse_number(text: str) -> float:
    """A float written as ``3e-3``, ``0.01`` or a power ``2**-7`` (or ``2^-7``)."""
    cleaned = str(text).strip().replace("^", "**")
    try:
        if "**" in cleaned:
            base, _, exponent = cleaned.partition("**")
            return float(base) ** float(exponent)
        return float(cleaned)
    except OverflowError:
        raise argparse.ArgumentTypeError(f"{text!r} is too large to be a number") from None
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (examples: 3e-3, 0.01, 2**-7)") from None


def parse_int(text: str) -> int:
    """An integer written as ``128``, ``1e3`` or ``2**7``."""
    cleaned = str(text).strip()
    if cleaned.lstrip("+-").isdigit():
        return int(cleaned)
    value = parse_number(cleaned)
    if not (math.isfinite(value) and value.is_integer()):
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer")
    return int(value)


def value_parser(name: str) -> Callable[[str], Any]:
    """How one value of RunConfig field ``name`` is read from text (``none`` for optional fields).

    Enum, text and bool fields are passed through: ``RunConfig`` checks them and lists the valid choices.
    """
    kind = field_type(name)
    parse: Callable[[str], Any] = {int: parse_int, float: parse_number}.get(kind.base, str.strip)
    if kind.optional:
        return lambda text: None if text.strip().lower() == "none" else parse(text)
    return parse


def parse_values(text: str, parse_one: Callable[[str], Any] = parse_number) -> list[Any]:
    """Comma-separated values, each a single value or a ``low..high`` doubling range.

    ``parse_values("2**-3..2**-1,1") == [0.125, 0.25, 0.5, 1.0]``; integer parsers give integers
    (``"32..128"`` -> ``[32, 64, 128]``). A range whose end is not low × a power of two (``32..100``) or
    that would expand to more than :data:`MAX_RANGE_VALUES` values is refused, never silently cut.
    """
    from labkit.sweep.grid import doubling

    values: list[Any] = []
    for piece in (p.strip() for p in text.split(",")):
        if not piece:
            continue
        if ".." not in piece:
            values.append(parse_one(piece))
            continue
        low_text, _, high_text = piece.partition("..")
        low, high = parse_one(low_text), parse_one(high_text)
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high)):
            raise ConfigError(f"{piece!r}: a range low..high needs two numbers")
        if not (0 < low <= high and math.isfinite(low) and math.isfinite(high)):
            raise ConfigError(f"{piece!r}: a range needs 0 < low <= high, both finite")
        count = math.floor(math.log2(high) - math.log2(low) + 1e-9) + 1  # logs: 1e300/1e-300 would overflow
        if count > MAX_RANGE_VALUES:
            raise ConfigError(f"{piece!r} doubles {count} times; a range may hold at most {MAX_RANGE_VALUES} "
                              "values: narrow it")
        points = doubling(low, high)
        last = points[-1]
        if not math.isclose(last, high, rel_tol=1e-9):
            raise ConfigError(
                f"{piece!r}: a range doubles from its start, and {high_text.strip()} is not {low_text.strip()} "
                f"times a power of two (it would end at {_number_text(last)}). End it at {_number_text(last)} "
                f"or {_number_text(last * 2)}, or list the values with commas")
        values.extend(round(p) if isinstance(low, int) else p for p in points)
    if not values:
        raise ConfigError(f"no values in {text!r}")
    return values


def _number_text(value: float) -> str:
    return str(round(value)) if float(value).is_integer() else f"{value:g}"


def add_config_options(parser: argparse.ArgumentParser, *, lists: bool = False) -> None:
    """One ``--option`` per RunConfig field. ``lists``: each takes comma lists and ranges (for ``sweep``)."""
    defaults = RunConfig()
    title = ("grid: any run option, as a comma list (a,b,c) and/or doubling ranges (2**-10..2**0, 32..256)"
             if lists else "run configuration")
    group = parser.add_argument_group(title)
    for f in dataclasses.fields(RunConfig):
        kind = field_type(f.name)
        default = _plain(getattr(defaults, f.name))
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS,
                                  "help": f"{f.metadata.get('help', '')} (default: {default})"}
        if lists:
            kwargs["metavar"] = "VALUES"
        elif kind.is_enum and not kind.optional:
            kwargs["choices"] = [m.value for m in kind.base]
        else:
            kwargs["type"] = value_parser(f.name)
        group.add_argument("--" + f.name.replace("_", "-"), dest=f.name, **kwargs)


def _plain(value: Any) -> Any:
    return getattr(value, "value", value)


def given_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The RunConfig fields set on the command line."""
    names = {f.name for f in dataclasses.fields(RunConfig)}
    return {k: v for k, v in vars(args).items() if k in names}


def config_from_args(args: argparse.Namespace) -> RunConfig:
    return RunConfig(**given_fields(args))


def axes_from_args(args: argparse.Namespace) -> dict[str, list[Any]]:
    """The grid axes of a ``sweep`` command line: ``{field: [values]}`` for every RunConfig option given."""
    axes = {}
    for name, text in given_fields(args).items():
        try:
            axes[name] = parse_values(text, value_parser(name))
        except (argparse.ArgumentTypeError, ConfigError) as exc:
            raise ConfigError(f"--{name.replace('_', '-')}: {exc}") from None
    return axes


# --- formatting ---------------------------------------------------------------------------------------------


def format_lr(value: float | None) -> str:
    """``2^-7 (0.0078)`` for powers of two, else 4 significant digits; ``-`` when unknown."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    exponent = math.log2(value) if value > 0 else math.nan
    if math.isfinite(exponent) and exponent.is_integer():
        return f"2^{int(exponent)} ({value:.2g})"
    return f"{value:.4g}"


def format_bytes(value: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{int(value)} B"


def format_value(key: str, value: Any) -> str:
    """One summary value as a person reads it: losses to 4 decimals, bytes in MiB, counts with commas."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if key in ("lr", "peak_lr"):
        return format_lr(value)
    if key.startswith("peak_mem") or key in ("peak_rss", "checkpoint_bytes"):
        return format_bytes(value)
    if key == "tokens_per_s":
        return f"{value:,.0f}"
    if key == "flops_per_step":
        return f"{value:.3g}"
    if isinstance(value, (bool, str)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4f}" if "loss" in key and abs(value) < 1e4 else f"{value:.4g}"
    return str(value)


def format_age(seconds: float | None) -> str:
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


def print_summary(run: Run, store: RunStore | None) -> None:
    summary = run.summary()
    for key, value in summary.items():
        if (key == "error" and not value) or key == "steps_planned":
            continue
        shown = value if key in ("error", "status", "run_id") else format_value(key, value)
        if key == "steps":
            shown = f"{summary['steps']:,} of {run.config.steps:,}"
        print(f"{key:>18}: {shown}")
    if store is not None:
        print(f"{'saved to':>18}: {store.root / run.id}")


def _json_safe(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _print_warnings(caught: list[warnings.WarningMessage]) -> None:
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)


# --- commands -----------------------------------------------------------------------------------------------


class _Progress:
    """A tqdm bar over steps, opened at the first record (a run refused before training shows none)."""

    def __init__(self, total: int) -> None:
        self.total, self.bar = total, None

    def __call__(self, run: Run, record: dict) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=self.total, initial=int(record["step"]) - 1, unit="step", file=sys.stderr,
                            dynamic_ncols=True)
        bar = self.bar
        bar.update(int(record["step"]) - bar.n)
        postfix = {"loss": f"{record['train_loss']:.3f}", "tok/s": f"{record['tokens_per_s']:.0f}"}
        if not math.isnan(record.get("val_loss", math.nan)):
            postfix["val"] = f"{record['val_loss']:.3f}"
        bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


RESUME_OPTIONS = {"steps", "threads"}  # what --resume may change; everything else is the saved run's


def cmd_train(args: argparse.Namespace) -> int:
    from labkit.train import Trainer

    store = RunStore(args.runs_dir)
    if args.resume:
        changed = sorted(set(given_fields(args)) - RESUME_OPTIONS)
        if changed:
            raise ConfigError(f"--resume continues {args.resume} with its saved config; only --steps and --threads "
                              f"may be given, not {', '.join('--' + c.replace('_', '-') for c in changed)}")
        trainer = Trainer.resuming(args.resume, store=store, **given_fields(args))
    else:
        trainer = Trainer(config_from_args(args), store=store)
    progress = _Progress(trainer.config.steps)
    if not args.quiet:
        trainer.callbacks.append(progress)
    previous_handler = signal.signal(signal.SIGINT, _stop_on_ctrl_c(trainer))
    try:
        run = trainer.train()
    except Exception as exc:
        progress.close()
        print(f"error: {exc}", file=sys.stderr)
        if not trainer.started:  # refused before training: nothing was saved, nothing to summarise
            return 2
        run = trainer.run
    finally:
        signal.signal(signal.SIGINT, previous_handler)
        progress.close()
    if args.json:
        print(json.dumps({k: _json_safe(v) for k, v in run.summary().items()}))
    else:
        print_summary(run, store)
    if trainer.interrupted:
        return 130
    return 0 if run.status.value in ("finished", "stopped") else 1


def _stop_on_ctrl_c(trainer: Any) -> Callable[[int, Any], None]:
    """A SIGINT handler: the first Ctrl-C stops the run cleanly after the current step (saved, checkpointed,
    exit status 130); a second one interrupts at once."""

    def handler(signum: int, frame: Any) -> None:
        if trainer.stop_requested:
            raise KeyboardInterrupt
        trainer.interrupted = True
        trainer.stop()
        print("\nstopping after this step (Ctrl-C again to stop at once)", file=sys.stderr)

    return handler


def cmd_runs(args: argparse.Namespace) -> int:
    store = RunStore(args.runs_dir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = store.table()
    _print_warnings(caught)
    if args.json:
        print(table.to_json(orient="records"))
        return 0
    if table.empty:
        print(f"no saved runs in {store.root}")
        return 0
    shown = table.copy()
    shown["steps"] = [f"{done}/{planned}" for done, planned in zip(shown["steps_done"], shown["steps"], strict=True)]
    shown["lr"] = [format_lr(lr) if lr is not None and not _isnan(lr) else f"default {format_lr(peak)}"
                   for lr, peak in zip(shown["lr"], shown.get("peak_lr", [None] * len(shown)), strict=True)]
    for key in ("final_train_loss", "final_val_loss", "tokens_per_s"):
        if key in shown:
            shown[key] = [format_value(key, v) for v in shown[key]]
    shown["last_saved"] = [format_age(a) for a in shown["heartbeat_age"]]
    columns = [c for c in ("run_id", "status", "arch", "scaling", "format", "width", "lr", "steps",
                           "final_train_loss", "final_val_loss", "tokens_per_s", "last_saved") if c in shown]
    print(shown[columns].to_string(index=False))
    return 0


def _isnan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def cmd_scales(args: argparse.Namespace) -> int:
    from labkit.scales import initial_scales

    config = config_from_args(args)
    table = initial_scales(config)
    if args.json:
        print(table.to_json(orient="records"))
        return 0
    wide = table.pivot_table(index="layer", columns="kind", values="rms", sort=False)
    print(f"RMS at initialisation: {config.arch.value}, {config.scaling.value}, width {config.width} "
          f"(one forward and backward pass on {config.batch_size}×{config.seq_len} tokens)")
    print(wide.to_string(float_format=lambda v: f"{v:.3g}"))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from labkit.sweep.analysis import paper_table
    from labkit.sweep.core import Sweep
    from labkit.sweep.executors import make_executor
    from labkit.sweep.grid import grid

    pool = make_executor(args.executor, args.workers)  # a bad executor or worker count: refused before anything
    if args.retries < 0:
        raise ConfigError(f"--retries must be >= 0, got {args.retries}")
    sweep = Sweep(grid(RunConfig(), **axes_from_args(args)), args.name, root=args.runs_dir)
    if not args.quiet:
        print(f"{sweep.name}: {len(sweep)} runs, {len(sweep.todo())} to train, executor {args.executor}",
              file=sys.stderr)
    try:
        table = sweep.run(pool, retries=args.retries, progress=not args.quiet, lease=args.lease)
    except KeyboardInterrupt:
        done = int(sweep.table()["status"].isin(["finished", "diverged"]).sum())
        print(f"\ninterrupted: {done}/{len(sweep)} runs done; run the same command again to resume",
              file=sys.stderr)
        return 130
    finally:
        pool.close()
    if args.json:
        print(table.to_json(orient="records"))
    else:
        counts = table["status"].value_counts().to_dict()
        print(f"sweep {sweep.name}: {counts}, saved in {sweep.store.root}")
        print(paper_table(table, metric=args.metric).to_string())
        for _, row in table[table["status"] == "failed"].iterrows():
            print(f"failed {row['key']}: {row['error']}")
    return 1 if (table["status"] == "failed").any() else 0


def cmd_sample(args: argparse.Namespace) -> int:
    from labkit.checkpoint import load_model
    from labkit.lm import sample

    model, tokenizer, _ = load_model(args.run, store=RunStore(args.runs_dir))
    prompt = args.prompt.replace("\\n", "\n")
    text = sample(model, tokenizer, prompt, length=args.length, temperature=args.temperature, seed=args.seed)
    print(prompt + text)
    return 0


# --- the parser ---------------------------------------------------------------------------------------------

SWEEP_DESCRIPTION = """\
Train a grid of runs and save each. Every run option takes a comma list and/or doubling ranges; each option
given with several values is an axis of the grid:

  python -m labkit sweep --scaling standard,seed-l2-once --width 64,128 --lr 2**-10..2**0 --steps 200
  python -m labkit sweep ... --executor dask     # or sequential, local (default), tcp://host:8786
  python -m labkit sweep ... --json              # the result table as JSON records on stdout

Running the same command again resumes: finished and diverged runs are not redone. Several drivers of the
same sweep (on one runs folder) share the grid: each claims configs in the sweep index, so each trains once.
"""


class _Parser(argparse.ArgumentParser):
    """Bad input is one line: the problem and where to look, without the (long) usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m labkit", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    runs_dir = {"default": str(default_runs_dir()), "help": "folder of saved runs (default: $LABKIT_RUNS_DIR or runs/)"}

    train = sub.add_parser("train", help="train one model headless and save the run (or --resume one)")
    add_config_options(train)
    train.add_argument("--resume", metavar="RUN_ID", default=None,
                       help="continue a saved run (finished, stopped or interrupted) from its last checkpoint, "
                            "to --steps in total")
    train.add_argument("--json", action="store_true", help="print the run's summary as one JSON object")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("--runs-dir", **runs_dir)
    train.set_defaults(func=cmd_train, parser=train)

    runs = sub.add_parser("runs", help="list saved runs (status, steps done/planned, losses)")
    runs.add_argument("--json", action="store_true", help="print the table as JSON records")
    runs.add_argument("--runs-dir", **runs_dir)
    runs.set_defaults(func=cmd_runs, parser=runs)

    scales = sub.add_parser("scales", help="per-layer RMS of activations, gradients and weights at initialisation")
    add_config_options(scales)
    scales.add_argument("--json", action="store_true", help="print the table as JSON records")
    scales.set_defaults(func=cmd_scales, parser=scales)

    sweep = sub.add_parser("sweep", help="train a grid of runs in parallel, save each, resume where it stopped",
                           description=SWEEP_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_options(sweep, lists=True)
    options = sweep.add_argument_group("sweep")
    options.add_argument("--executor", default="local",
                         help="sequential, local (worker processes, default), gpu (one worker per CUDA GPU; "
                              "sweep --device cuda), dask (a local Dask cluster), or a Dask scheduler address such as tcp://10.0.0.5:8786")
    options.add_argument("--workers", type=parse_int, default=None, help="worker processes (default: one per core)")
    options.add_argument("--name", default=None, help="sweep name (default: derived from the grid)")
    options.add_argument("--retries", type=parse_int, default=1, help="extra attempts for a run whose worker died")
    options.add_argument("--lease", type=parse_number, default=60.0,
                         help="seconds a claim on a config lasts unless renewed (a dead driver's claims expire)")
    options.add_argument("--metric", default="final_val_loss", help="loss used to pick the best LR")
    options.add_argument("--runs-dir", **runs_dir)
    options.add_argument("--json", action="store_true", help="print the result table as JSON records")
    options.add_argument("--quiet", action="store_true", help="no progress bar")
    sweep.set_defaults(func=cmd_sweep, parser=sweep)

    sample = sub.add_parser("sample", help="continue a prompt with the model of a saved run")
    sample.add_argument("--run", required=True, metavar="RUN_ID", help="the run whose checkpoint to load")
    sample.add_argument("--prompt", default="\n", help="text to continue (\\n for a newline; default: a newline)")
    sample.add_argument("--length", type=parse_int, default=200, help="tokens to generate")
    sample.add_argument("--temperature", type=parse_number, default=1.0, help="softmax temperature (> 0)")
    sample.add_argument("--seed", type=parse_int, default=0, help="seed of the sampling")
    sample.add_argument("--runs-dir", **runs_dir)
    sample.set_defaults(func=cmd_sample, parser=sample)

    for name, (module_name, help_text) in MODULE_COMMANDS.items():  # listed here; main() hands them their argv
        if importlib.util.find_spec(module_name) is not None:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (2: bad input, 130: interrupted with Ctrl-C)."""
    from labkit.build import ResourceError
    from labkit.data import CorpusError

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in MODULE_COMMANDS and importlib.util.find_spec(MODULE_COMMANDS[argv[0]][0]):
        return int(importlib.import_module(MODULE_COMMANDS[argv[0]][0]).main(argv[1:]) or 0)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        args.parser.error(str(exc))  # the command's own usage line
    except (ResourceError, CorpusError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 2

