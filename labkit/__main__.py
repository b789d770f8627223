"""Command line: ``python -m labkit train | runs`` (see ``--help`` of each).

Every field of :class:`labkit.config.RunConfig` is an option of ``train``, generated from the dataclass
so the CLI can never drift from the config.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Any

from labkit import config as config_module
from labkit.config import ConfigError, RunConfig
from labkit.runs import Run, RunStore, default_runs_dir


def parse_number(text: str) -> float:
    """A float written as ``3e-3``, ``0.01`` or a power of two ``2**-7`` (or ``2^-7``)."""
    cleaned = text.strip().replace("^", "**")
    if "**" in cleaned:
        base, _, exponent = cleaned.partition("**")
        try:
            return float(base) ** float(exponent)
        except ValueError:
            pass
    try:
        return float(cleaned)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (examples: 3e-3, 0.01, 2**-7)") from None


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    return lambda text: None if text.strip().lower() == "none" else parse(text)


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """One ``--option`` per RunConfig field, with its help text, type and default."""
    defaults = RunConfig()
    group = parser.add_argument_group("run configuration")
    for f in dataclasses.fields(RunConfig):
        annotation = str(f.type)
        default = getattr(defaults, f.name)
        shown = default.value if isinstance(default, StrEnum) else default
        help_text = f"{f.metadata.get('help', '')} (default: {shown})"
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": help_text}
        enum_name = annotation.split("|")[0].strip()
        enum_type = getattr(config_module, enum_name, None)
        if isinstance(enum_type, type) and issubclass(enum_type, StrEnum):
            kwargs["choices"] = [m.value for m in enum_type]
        elif annotation.startswith("int"):
            kwargs["type"] = int
        elif annotation.startswith("float"):
            kwargs["type"] = parse_number
        if "None" in annotation:
            kwargs["type"] = _optional(kwargs.get("type", str))
            kwargs.pop("choices", None)
        group.add_argument("--" + f.name.replace("_", "-"), dest=f.name, **kwargs)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    return RunConfig(**{k: v for k, v in vars(args).items() if k in fields})


def _progress_callback(total: int) -> tuple[Callable[[Run, dict], None], Any]:
    from tqdm import tqdm

    bar = tqdm(total=total, unit="step", file=sys.stderr, dynamic_ncols=True)

    def update(run: Run, record: dict) -> None:
        bar.update(int(record["step"]) - bar.n)
        postfix = {"loss": f"{record['train_loss']:.3f}", "tok/s": f"{record['tokens_per_s']:.0f}"}
        if not math.isnan(record.get("val_loss", math.nan)):
            postfix["val"] = f"{record['val_loss']:.3f}"
        bar.set_postfix(postfix, refresh=False)

    return update, bar


def cmd_train(args: argparse.Namespace) -> int:
    from labkit.train import Trainer

    config = config_from_args(args)
    store = RunStore(args.runs_dir)
    callbacks = []
    bar = None
    if not args.quiet:
        progress, bar = _progress_callback(config.steps)
        callbacks.append(progress)
    trainer = Trainer(config, callbacks=callbacks, store=store)
    try:
        run = trainer.train()
    except Exception as exc:  # the run is saved with status "failed"; say why in one line
        run = trainer.run
        print(f"error: {exc}", file=sys.stderr)
    finally:
        if bar is not None:
            bar.close()
    summary = {k: _json_safe(v) for k, v in run.summary().items()}
    if args.json:
        print(json.dumps(summary))
    else:
        for key, value in summary.items():
            print(f"{key:>18}: {value}")
        print(f"{'saved to':>18}: {store.root / run.id}")
    return 0 if run.status.value in ("finished", "stopped") else 1


def cmd_runs(args: argparse.Namespace) -> int:
    table = RunStore(args.runs_dir).table()
    if args.json:
        print(table.to_json(orient="records"))
        return 0
    if table.empty:
        print(f"no saved runs in {RunStore(args.runs_dir).root}")
        return 0
    columns = [c for c in ("run_id", "status", "arch", "scaling", "format", "width", "lr", "steps",
                           "final_train_loss", "final_val_loss", "tokens_per_s") if c in table]
    print(table[columns].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


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


def _json_safe(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m labkit", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train one model headless and save the run")
    add_config_options(train)
    train.add_argument("--json", action="store_true", help="print the run's summary as one JSON object")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("--runs-dir", default=str(default_runs_dir()), help="folder of saved runs")
    train.set_defaults(func=cmd_train)

    scales = sub.add_parser("scales", help="per-layer RMS of activations, gradients and weights at initialisation")
    add_config_options(scales)
    scales.add_argument("--json", action="store_true", help="print the table as JSON records")
    scales.set_defaults(func=cmd_scales)

    runs = sub.add_parser("runs", help="list saved runs")
    runs.add_argument("--json", action="store_true", help="print the table as JSON records")
    runs.add_argument("--runs-dir", default=str(default_runs_dir()), help="folder of saved runs")
    runs.set_defaults(func=cmd_runs)

    from labkit.sweep.cli import add_sweep_command  # imported here: sweep code stays in labkit.sweep

    add_sweep_command(sub)
    from labkit.coord import add_coord_check_command

    add_coord_check_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        parser.error(str(exc))
        return 2


if __name__ == "__main__":
    sys.exit(main())
