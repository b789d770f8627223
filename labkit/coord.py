"""The coordinate check: does a parametrisation keep every layer's scale fixed as the model widens?

μP (Yang & Hu 2021) and u-μP (Blake et al. 2024) promise that the size of every activation and of every
weight update stays put as width grows, so the best learning rate does too. Microsoft's ``mup`` package
checks it with a *coordinate check*: train a few steps at several widths and plot each layer's
activation size against width, one panel per step. Lines flat in width: the rules are right. A line
that climbs or sinks with width: some learning rate (or multiplier) is wrong by a power of the width.

    check = coord_check(scaling="u-mup", widths=(64, 128, 256, 512), steps=5)
    check.flagged           # the (layer, step) pairs whose activation RMS grows or shrinks with width
    check.figure()          # lines per layer vs width, one panel per step

What is recorded, per width, seed, step and layer (every ``Embedding`` and ``Linear`` module, and
every residual block's output):

* ``act_rms``: RMS of the layer's output in the forward pass of that step, on one fixed batch (step 1 is
  the initialisation; step t has seen t-1 updates). This is what the flatness verdict is made from.
* ``rel_update``: ‖ΔW‖/‖W‖ (Frobenius) of the layer's weight in that step's update. Shown, not judged:
  under μP a hidden matrix's update is low-rank, so this ratio falls as width^-1/2 even when the rule is
  right (its effect on the output, Θ(1), is what ``act_rms`` sees at the next step).

Flatness: for each layer and step ≥ 2, the slope of log2(mean act_rms over seeds) against log2(width),
a least-squares fit over the widths. ``|slope| > tolerance`` flags the layer: a slope of 0.5 means the
activation grows as √width. The default tolerance (0.25) was set from measurement: see ``docs/RESULTS.md``.

:class:`UpdateMeter` records, for the training engine, every optimizer group's effective learning rate
and relative update size (columns ``eff_lr/<group>`` and ``rel_update/<group>``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from labkit.cli import parse_int, parse_number, parse_values
from labkit.config import ConfigError, RunConfig, Scaling

#: An extra factor on a parameter's learning rate: ``(name, parameter, width) -> factor``. Used to plant a
#: wrong rule and see the check catch it (e.g. multiply the embedding LR by the width).
LrTweak = Callable[[str, nn.Parameter, int], float]

DEFAULT_TOLERANCE = 0.25


def embedding_lr_times_width(name: str, param: nn.Parameter, width: int) -> float:
    """A deliberately wrong rule, for demonstrations and tests: every embedding table's LR × width."""
    from labkit.models.roles import Role, role_of

    return float(width) if role_of(param) is Role.EMBEDDING else 1.0


def _layers(model: nn.Module) -> dict[str, nn.Module]:
    """The modules whose outputs are tracked: every Embedding and Linear, and each residual block."""
    from labkit.models.layers import Embedding, Linear
    from labkit.models.transformer import Block

    return {name: m for name, m in model.named_modules() if isinstance(m, Embedding | Linear | Block)}


def _group_name(group: dict[str, Any], index: int) -> str:
    return str(group.get("name", "all" if index == 0 else f"group{index}"))


class UpdateMeter:
    """Per optimizer group: the effective learning rate and ‖ΔW‖/‖W‖ of one step's update.

    Cheap enough for every logged step: :meth:`before_step` copies the parameters into buffers kept for the
    run (one ``foreach`` copy, nothing allocated) and takes their norms; :meth:`after_step` subtracts the new
    values in place and takes the norms of the differences. Call both only on steps you log.
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.names = [_group_name(g, i) for i, g in enumerate(optimizer.param_groups)]
        params = [[p for p in g["params"] if p.requires_grad] for g in optimizer.param_groups]
        self._flat = [p for ps in params for p in ps]
        self._group_of = torch.tensor([i for i, ps in enumerate(params) for _ in ps], dtype=torch.long)
        self._before = [torch.empty_like(p) for p in self._flat]
        self._before_norms: list[torch.Tensor] | None = None

    @torch.no_grad()
    def before_step(self) -> None:
        if self._flat:
            torch._foreach_copy_(self._before, self._flat)
        self._before_norms = torch._foreach_norm(self._flat) if self._flat else []

    @torch.no_grad()
    def after_step(self) -> dict[str, float]:
        """``eff_lr/<group>`` and ``rel_update/<group>`` for the step just taken."""
        if self._before_norms is None:
            raise RuntimeError("UpdateMeter.after_step() called without before_step()")
        before_norms, self._before_norms = self._before_norms, None
        squares = torch.zeros(2, len(self.names), dtype=torch.float64)
        if self._flat:  # per group: Σ‖Δp‖² and Σ‖p‖², summed over its parameters
            torch._foreach_sub_(self._before, self._flat)  # before - after: -Δp, the same norm
            for row, norms in enumerate((torch._foreach_norm(self._before), before_norms)):
                squares[row].index_add_(0, self._group_of, torch.stack(norms).double().cpu().square())
        delta_sq, weight_sq = squares.tolist()
        record = {}
        for name, group, d2, w2 in zip(self.names, self.optimizer.param_groups, delta_sq, weight_sq, strict=True):
            record[f"eff_lr/{name}"] = float(group["lr"])
            record[f"rel_update/{name}"] = (d2 / w2) ** 0.5 if w2 else math.nan
        return record


@dataclass
class CoordCheck:
    """The result of :func:`coord_check`: the measurements, the flatness verdict and the figure."""

    scaling: Scaling
    data: pd.DataFrame  #: width, seed, step, layer, act_rms, rel_update (one row per layer and step)
    tolerance: float = DEFAULT_TOLERANCE
    label: str = ""
    slopes: pd.DataFrame = field(init=False)  #: layer, step, slope (of log2 act_rms vs log2 width), flagged

    def __post_init__(self) -> None:
        self.slopes = flatness(self.data, self.tolerance)

    @property
    def flagged(self) -> pd.DataFrame:
        """Rows of :attr:`slopes` whose activation RMS changes with width by more than the tolerance."""
        return self.slopes[self.slopes["flagged"]].reset_index(drop=True)

    @property
    def passed(self) -> bool:
        return self.flagged.empty

    @property
    def worst_slope(self) -> float:
        """The largest |slope| over layers and steps ≥ 2."""
        return float(self.slopes["slope"].abs().max()) if len(self.slopes) else math.nan

    def summary(self) -> dict[str, Any]:
        return {"scaling": self.scaling.value, "label": self.label, "passed": self.passed,
                "tolerance": self.tolerance, "worst_slope": round(self.worst_slope, 4),
                "flagged": self.flagged.round(4).to_dict(orient="records")}

    def figure(self) -> Any:
        """Activation RMS (top row) and ‖ΔW‖/‖W‖ (bottom row) of every layer against width, one column per
        step; log-log axes, mean over seeds. Flagged layers are drawn thick."""
        import plotly.graph_objects as go
        from plotly.colors import qualitative
        from plotly.subplots import make_subplots

        steps = sorted(self.data["step"].unique())
        mean = self.data.groupby(["layer", "step", "width"])[["act_rms", "rel_update"]].mean()
        layers = list(dict.fromkeys(self.data["layer"]))
        flagged = set(self.flagged["layer"])
        fig = make_subplots(rows=2, cols=len(steps), shared_xaxes=True, horizontal_spacing=0.03,
                            vertical_spacing=0.08, subplot_titles=[f"step {s}" for s in steps])
        palette = qualitative.Dark24
        for i, layer in enumerate(layers):
            colour = palette[i % len(palette)]
            for col, step in enumerate(steps, start=1):
                rows = mean.loc[(layer, step)]
                for row, metric in ((1, "act_rms"), (2, "rel_update")):
                    fig.add_trace(go.Scatter(
                        x=rows.index, y=rows[metric], mode="lines+markers", name=layer, legendgroup=layer,
                        showlegend=(col == 1 and row == 1),
                        line=dict(color=colour, width=4 if layer in flagged else 1.5),
                        marker=dict(size=4), hovertemplate=f"{layer}<br>width %{{x}}<br>{metric} %{{y:.3g}}"),
                        row=row, col=col)
        fig.update_xaxes(type="log", tickvals=sorted(self.data["width"].unique()), title_text="width", row=2)
        fig.update_xaxes(type="log", tickvals=sorted(self.data["width"].unique()), row=1)
        fig.update_yaxes(type="log")
        fig.update_yaxes(title_text="activation RMS", row=1, col=1)
        fig.update_yaxes(title_text="‖ΔW‖ / ‖W‖", row=2, col=1)
        verdict = "flat: passes" if self.passed else f"{len(flagged)} layer(s) flagged (thick)"
        fig.update_layout(title=f"Coordinate check: {self.label or self.scaling.value} — {verdict} "
                                f"(|slope| ≤ {self.tolerance} in log-log)",
                          template="plotly_white", height=620, width=max(700, 260 * len(steps)),
                          margin=dict(t=80, l=70, r=20, b=50), legend=dict(font=dict(size=10)))
        return fig


def flatness(data: pd.DataFrame, tolerance: float = DEFAULT_TOLERANCE) -> pd.DataFrame:
    """Per layer and step ≥ 2: least-squares slope of log2(mean act_rms) against log2(width), and
    whether ``|slope| > tolerance``. Step 1 (the initialisation) is not judged: no rule has acted yet."""
    mean = data[data["step"] >= 2].groupby(["layer", "step", "width"], sort=False)["act_rms"].mean()
    rows = []
    for (layer, step), series in mean.groupby(level=["layer", "step"], sort=False):
        x = np.log2(series.index.get_level_values("width").to_numpy(dtype=float))
        y = np.log2(series.to_numpy(dtype=float))
        slope = float(np.polyfit(x, y, 1)[0]) if len(x) > 1 and np.isfinite(y).all() else math.inf
        rows.append({"layer": layer, "step": int(step), "slope": slope, "flagged": not abs(slope) <= tolerance})
    return pd.DataFrame(rows, columns=["layer", "step", "slope", "flagged"])


def _measure_width(config: RunConfig, x: torch.Tensor, y: torch.Tensor, steps: int, lr_tweak: LrTweak | None,
                   vocab: int) -> list[dict[str, Any]]:
    from labkit.build import build_for_run
    from labkit.train import make_optimizer, peak_learning_rate

    model, ops, method = build_for_run(config, vocab)
    lr = peak_learning_rate(config, method)
    groups = method.param_groups(model, lr, config.optimizer)
    if lr_tweak is not None:  # one group per parameter, each with its own extra factor
        names = {id(p): n for n, p in model.named_parameters()}
        groups = [{**g, "params": [p], "lr": g["lr"] * lr_tweak(names[id(p)], p, config.width)}
                  for g in groups for p in g["params"]]
    optimizer = make_optimizer(config, groups)
    layers = _layers(model)
    rms: dict[str, float] = {}

    def hook(name: str) -> Callable[..., None]:
        def record(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            rms[name] = float(output.detach().double().square().mean().sqrt())
        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in layers.items()]
    weights = {name: m.weight for name, m in layers.items() if isinstance(getattr(m, "weight", None), torch.Tensor)}
    rows = []
    try:
        model.train()
        for step in range(1, steps + 1):
            rms.clear()
            loss = ops.cross_entropy(model(x).flatten(0, 1), y.flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            before = {name: w.detach().clone() for name, w in weights.items()}
            optimizer.step()
            for name in layers:
                update = math.nan
                if name in weights:
                    w0 = before[name]
                    update = float((weights[name].detach() - w0).norm() / w0.norm())
                rows.append({"width": config.width, "seed": config.seed, "step": step, "layer": name,
                             "act_rms": rms.get(name, math.nan), "rel_update": update, "loss": loss.item()})
    finally:
        for handle in handles:
            handle.remove()
    return rows


def coord_check(scaling: Scaling | str = Scaling.UMUP, widths: Sequence[int] = (64, 128, 256, 512),
                steps: int = 5, seeds: int = 3, *, config: RunConfig | None = None, lr: float | None = None,
                lr_tweak: LrTweak | None = None, tolerance: float = DEFAULT_TOLERANCE, label: str = "",
                batch_size: int = 8, seq_len: int = 64) -> CoordCheck:
    """Train ``steps`` steps at each width (one fixed batch, constant learning rate, ``seeds`` seeds) and
    record every layer's activation RMS and relative weight update per step (see the module docstring).

    ``config`` sets everything else (architecture, depth, optimizer; default: the lab's Transformer); the
    learning rate is ``lr`` or the method's default. ``lr_tweak`` multiplies chosen parameters' learning
    rates, to plant a wrong rule. Runs in seconds on a CPU at the default sizes.
    """
    from labkit.build import load_corpus

    if steps < 2:
        raise ValueError(f"steps must be at least 2 (step 1 is the initialisation), got {steps}")
    if len(widths) < 2:
        raise ValueError(f"give at least two widths to compare, got {list(widths)}")
    base = (config or RunConfig()).replace(scaling=Scaling(scaling), schedule="constant", lr=lr,
                                           batch_size=batch_size, seq_len=seq_len)
    corpus = load_corpus(base.corpus, base.tokenizer.value, base.val_fraction)
    x, y = corpus.get_batch("train", batch_size, seq_len, torch.Generator().manual_seed(0))
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(base.threads)
    rows = []
    try:
        for width in widths:
            heads = base.heads if width % base.heads == 0 else 1
            for seed in range(seeds):
                config_w = base.replace(width=int(width), heads=heads, seed=seed)
                rows += _measure_width(config_w, x, y, steps, lr_tweak, corpus.tokenizer.vocab_size)
    finally:
        torch.set_num_threads(previous_threads)
    return CoordCheck(Scaling(scaling), pd.DataFrame(rows), tolerance, label)


# ------------------------------------------------------------------------------------------------------
# Command line: python -m labkit coord-check ...


def _configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--scaling", default=Scaling.UMUP.value, choices=[s.value for s in Scaling])
    parser.add_argument("--width", default="64,128,256,512",
                        help="widths: a comma list or a doubling range such as 64..512 (default: 64,128,256,512)")
    parser.add_argument("--steps", type=parse_int, default=5, help="training steps per width (default: 5)")
    parser.add_argument("--seeds", type=parse_int, default=3, help="seeds per width (default: 3)")
    parser.add_argument("--lr", type=parse_number, default=None,
                        help="learning rate, e.g. 3e-3 or 2**-7 (default: the method's default)")
    parser.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"])
    parser.add_argument("--arch", default="transformer", choices=["transformer", "mlp", "lstm"])
    parser.add_argument("--depth", type=parse_int, default=2)
    parser.add_argument("--tolerance", type=parse_number, default=DEFAULT_TOLERANCE,
                        help="largest |slope| of log2 RMS vs log2 width that counts as flat "
                             f"(default {DEFAULT_TOLERANCE})")
    parser.add_argument("--plant-wrong-embedding-rule", action="store_true",
                        help="multiply every embedding table's LR by the width (a wrong rule the check must flag)")
    parser.add_argument("--html", default=None, help="write the figure to this HTML file (self-contained)")
    parser.add_argument("--json", action="store_true", help="print the verdict and the slopes as JSON")
    parser.set_defaults(func=_run_cli)
    return parser


def _run_cli(args: argparse.Namespace) -> int:
    widths = parse_values(args.width, parse_int)
    config = RunConfig(arch=args.arch, depth=args.depth, optimizer=args.optimizer)
    plant = embedding_lr_times_width if args.plant_wrong_embedding_rule else None
    label = f"{args.scaling} with embedding LR × width (planted)" if plant else ""
    check = coord_check(args.scaling, widths, args.steps, args.seeds, config=config, lr=args.lr,
                        tolerance=args.tolerance, lr_tweak=plant, label=label)
    if args.html:
        check.figure().write_html(args.html, include_plotlyjs=True)
    if args.json:
        print(json.dumps({**check.summary(), "slopes": check.slopes.round(4).to_dict(orient="records")}))
    else:
        print(f"coordinate check, {check.scaling.value}, widths {widths}, {args.steps} steps, {args.seeds} seeds: "
              f"{'PASS (flat)' if check.passed else 'FLAGGED'}; worst |slope| {check.worst_slope:.3f} "
              f"(tolerance {check.tolerance})")
        if not check.passed:
            print(check.flagged.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0 if check.passed else 1


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m labkit.coord`` (same options as ``python -m labkit coord-check``)."""
    parser = _configure(argparse.ArgumentParser(prog="python -m labkit coord-check",
                                                description=__doc__.split("\n\n")[0]))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        parser.error(str(exc))


if __name__ == "__main__":
    sys.exit(main())
