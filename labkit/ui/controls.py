"""The lab's controls: ipywidgets that edit a :class:`~labkit.config.RunConfig`, and nothing else.

:class:`Controls` shows one widget per setting a learner changes (scaling method, architecture, width,
depth, learning rate, optimizer, number format, steps, batch size, seed, plus a few under "Advanced").
``Controls.config()`` builds the ``RunConfig`` they describe (``ConfigError`` when a value is invalid);
every field without a widget comes from the ``base`` config. The size readout shows the parameter count
and estimated memory (``labkit.train.estimate_memory``) as the sliders move.
"""

from __future__ import annotations

import functools
import html
import math
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets
import psutil

from labkit.config import (
    Arch,
    ConfigError,
    Fp8Backend,
    Fp8Scaling,
    NumberFormat,
    Optimizer,
    RunConfig,
    Scaling,
    Schedule,
)

SCALING_CHOICES: tuple[tuple[str, Scaling], ...] = (
    ("standard", Scaling.STANDARD),
    ("seed L2 once", Scaling.SEED_L2_ONCE),
    ("seed L2 always", Scaling.SEED_L2_ALWAYS),
    ("unit", Scaling.UNIT),
    ("u-μP", Scaling.UMUP),
)
ARCH_CHOICES: tuple[tuple[str, Arch], ...] = (("LSTM", Arch.LSTM), ("Transformer", Arch.TRANSFORMER),
                                              ("MLP", Arch.MLP))
OPTIMIZER_CHOICES: tuple[tuple[str, Optimizer], ...] = (("AdamW", Optimizer.ADAMW), ("SGD", Optimizer.SGD))
FORMAT_CHOICES: tuple[tuple[str, NumberFormat], ...] = (
    ("FP32", NumberFormat.FP32), ("BF16", NumberFormat.BF16), ("FP16", NumberFormat.FP16),
    ("FP8 E4M3", NumberFormat.FP8_E4M3), ("FP8 E5M2", NumberFormat.FP8_E5M2),
    ("FP8 E5M2, bias 16 (Graphcore)", NumberFormat.FP8_E5M2_BIAS16),
)
SCHEDULE_CHOICES: tuple[tuple[str, Schedule], ...] = (("cosine", Schedule.COSINE), ("constant", Schedule.CONSTANT))
#: Widths offered by the slider: powers of two and the 1.5× steps between them, up to sizes no laptop holds
#: (so the memory check has something to refuse).
WIDTHS: tuple[int, ...] = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096,
                           6144, 8192, 12288, 16384)
LR_LOG2_RANGE = (-20.0, 3.0)
_SUPERSCRIPT = str.maketrans("-0123456789.", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹·")

LABEL_STYLE = {"description_width": "100px"}
ROW = widgets.Layout(width="100%", max_width="460px")


def format_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'``; binary units, three significant digits."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.3g} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{value:.3g} TiB"


def format_count(n: float) -> str:
    """``422982`` -> ``'423 k'``, ``1.2e9`` -> ``'1.2 G'``."""
    for threshold, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= threshold:
            return f"{n / threshold:.3g} {suffix}"
    return str(int(n))


def describe_lr(lr: float) -> str:
    """A learning rate readable as a power of 2 and of 10: ``'3.91e-03 = 2⁻⁸ ≈ 10⁻²·⁴'``."""
    log2, log10 = math.log2(lr), math.log10(lr)
    p2 = f"{round(log2)}" if abs(log2 - round(log2)) < 1e-9 else f"{log2:.2f}"
    p10 = f"{round(log10)}" if abs(log10 - round(log10)) < 1e-9 else f"{log10:.1f}"
    eq2 = "=" if abs(log2 - round(log2)) < 1e-9 else "≈"
    eq10 = "=" if abs(log10 - round(log10)) < 1e-9 else "≈"
    return f"{lr:.3g} {eq2} 2{p2.translate(_SUPERSCRIPT)} {eq10} 10{p10.translate(_SUPERSCRIPT)}"


@functools.lru_cache(maxsize=256)
def _estimate(config_json: str, vocab_size: int) -> dict[str, int]:
    from labkit.train import estimate_memory

    return estimate_memory(RunConfig.from_dict(_loads(config_json)), vocab_size)


def _loads(text: str) -> dict[str, Any]:
    import json

    return json.loads(text)


def default_lr(config: RunConfig) -> float:
    """The learning rate a run with ``lr=None`` will use (``NotImplementedError`` if the method is missing)."""
    from labkit.train import peak_learning_rate

    return peak_learning_rate(config.replace(lr=None))


class Controls:
    """Widgets for the settings of a run. ``widget`` lays them out; ``config()`` reads them.

    ``base`` supplies every field that has no widget (corpus, schedule details, ...). ``vocab_size`` is the
    tokenizer's vocabulary, needed for the parameter count (``None``: loaded from the base config's corpus).
    """

    def __init__(self, base: RunConfig | None = None, vocab_size: int | None = None) -> None:
        self.base = base or RunConfig()
        self._vocab_size = vocab_size
        self._updating = False
        self._listeners: list[Callable[[], None]] = []
        cfg = self.base
        self.scaling = widgets.Dropdown(options=SCALING_CHOICES, value=cfg.scaling, description="scaling",
                                        style=LABEL_STYLE, layout=ROW)
        self.arch = widgets.ToggleButtons(options=ARCH_CHOICES, value=cfg.arch, description="architecture",
                                          style={**LABEL_STYLE, "button_width": "100px"})
        self.width = widgets.SelectionSlider(options=_with(WIDTHS, cfg.width), value=cfg.width, description="width",
                                             continuous_update=False, style=LABEL_STYLE, layout=ROW)
        self.depth = widgets.IntSlider(value=cfg.depth, min=1, max=max(24, cfg.depth), description="depth",
                                       continuous_update=False, style=LABEL_STYLE, layout=ROW)
        self.size = widgets.HTML(layout=widgets.Layout(margin="0 0 0 104px"))
        lr = cfg.lr if cfg.lr is not None else 2.0**-8
        #: The learning rate the slider stands for, exactly. The browser's FloatLogSlider recomputes its value as
        #: base ** log(value) whenever the kernel moves it and sends that back (0.5 returns as 0.4999999999999988),
        #: so the slider's own value is only an input: see ``_lr_moved``.
        self._lr_value = lr
        self.lr = widgets.FloatLogSlider(value=lr, base=2, min=LR_LOG2_RANGE[0], max=LR_LOG2_RANGE[1], step=0.25,
                                         description="learning rate", readout=False, continuous_update=True,
                                         style=LABEL_STYLE, layout=widgets.Layout(width="300px"))
        self.lr_auto = widgets.Checkbox(value=cfg.lr is None, description="auto", indent=False,
                                        layout=widgets.Layout(width="70px"))
        self.lr_auto.add_class("labkit-lr-auto")
        self.lr_readout = widgets.HTML(layout=widgets.Layout(margin="0 0 0 104px"))
        self.optimizer = widgets.ToggleButtons(options=OPTIMIZER_CHOICES, value=cfg.optimizer,
                                               description="optimizer",
                                               style={**LABEL_STYLE, "button_width": "80px"})
        self.format = widgets.Dropdown(options=FORMAT_CHOICES, value=cfg.format, description="number format",
                                       style=LABEL_STYLE, layout=ROW)
        # FP8 arithmetic: simulated or real (torch._scaled_mm), and the real casts' scaling; FP8 formats only.
        toggle_style = {**LABEL_STYLE, "button_width": "95px"}
        self.fp8_backend = widgets.ToggleButtons(options=[(b.value, b) for b in Fp8Backend], value=cfg.fp8_backend,
                                                 description="FP8 backend", style=toggle_style)
        self.fp8_scaling = widgets.ToggleButtons(options=[(s.value, s) for s in Fp8Scaling], value=cfg.fp8_scaling,
                                                 description="FP8 scaling", style=toggle_style)
        self.steps = widgets.IntText(value=cfg.steps, description="steps", style=LABEL_STYLE,
                                     layout=widgets.Layout(width="210px"))
        self.batch_size = widgets.IntText(value=cfg.batch_size, description="batch size", style=LABEL_STYLE,
                                          layout=widgets.Layout(width="210px"))
        self.seed = widgets.IntText(value=cfg.seed, description="seed", style=LABEL_STYLE,
                                    layout=widgets.Layout(width="210px"))
        # Advanced
        self.heads = widgets.Dropdown(options=_with(head_choices(cfg.width), cfg.heads), value=cfg.heads,
                                      description="heads", style=LABEL_STYLE, layout=widgets.Layout(width="210px"))
        self.seq_len = widgets.IntText(value=cfg.seq_len, description="sequence length",
                                       style={"description_width": "120px"}, layout=widgets.Layout(width="230px"))
        self.schedule = widgets.Dropdown(options=SCHEDULE_CHOICES, value=cfg.schedule, description="LR schedule",
                                         style=LABEL_STYLE, layout=widgets.Layout(width="210px"))
        self.eval_every = widgets.IntText(value=cfg.eval_every, description="eval every", style=LABEL_STYLE,
                                          layout=widgets.Layout(width="210px"))
        self.scales_every = widgets.IntText(value=cfg.scales_every, description="scales every",
                                            tooltip="record per-layer RMS every n steps (0: off)",
                                            style=LABEL_STYLE, layout=widgets.Layout(width="210px"))
        #: Widget for each RunConfig field it edits (lr is special: the slider plus the auto box).
        self.fields: dict[str, widgets.ValueWidget] = {
            "scaling": self.scaling, "arch": self.arch, "width": self.width, "depth": self.depth,
            "optimizer": self.optimizer, "format": self.format, "steps": self.steps, "batch_size": self.batch_size,
            "seed": self.seed, "heads": self.heads, "seq_len": self.seq_len, "schedule": self.schedule,
            "eval_every": self.eval_every, "scales_every": self.scales_every,
            "fp8_backend": self.fp8_backend, "fp8_scaling": self.fp8_scaling,
        }
        for w in self.fields.values():
            w.observe(self._changed, names="value")
        self.lr.observe(self._lr_moved, names="value")
        self.lr_auto.observe(self._changed, names="value")
        self._refresh()

    # -- reading and writing ---------------------------------------------------------------------------------
    def values(self) -> dict[str, Any]:
        """The raw widget values, keyed by RunConfig field (``lr`` is None in auto mode)."""
        values = {name: w.value for name, w in self.fields.items()}
        values["lr"] = None if self.lr_auto.value else self._lr_value
        if values["format"] not in (NumberFormat.FP8_E4M3, NumberFormat.FP8_E5M2):
            values["fp8_backend"] = Fp8Backend.SIMULATED  # the FP8 choices mean nothing for other formats
        if values["fp8_backend"] is Fp8Backend.SIMULATED:
            values["fp8_scaling"] = Fp8Scaling.NONE
        return values

    def config(self) -> RunConfig:
        """The RunConfig the controls describe; raises ``ConfigError`` naming an invalid value."""
        return self.base.replace(**self.values())

    def set_config(self, config: RunConfig) -> None:
        """Show ``config`` in the widgets (and use it as the base for fields without a widget)."""
        self.base = config
        self._updating = True
        try:
            for name, w in self.fields.items():
                value = getattr(config, name)
                if isinstance(w, widgets.SelectionSlider | widgets.Dropdown) and value not in _option_values(w):
                    w.options = _with(_option_values(w), value)
                if isinstance(w, widgets.IntSlider) and value > w.max:
                    w.max = value
                w.value = value
            self.lr_auto.value = config.lr is None
            if config.lr is not None:
                self._show_lr(config.lr)
        finally:
            self._updating = False
        self._refresh()

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` after any control changes."""
        self._listeners.append(callback)

    @property
    def vocab_size(self) -> int:
        """Vocabulary of the base config's corpus (loaded once, cached by ``labkit.train.load_corpus``)."""
        if self._vocab_size is None:
            from labkit.train import load_corpus

            cfg = self.base
            self._vocab_size = load_corpus(cfg.corpus, cfg.tokenizer.value, cfg.val_fraction).tokenizer.vocab_size
        return self._vocab_size

    # -- reactions -------------------------------------------------------------------------------------------
    def _show_lr(self, lr: float) -> None:
        """Move the slider to ``lr`` without it counting as the user's choice."""
        self._lr_value = lr
        updating, self._updating = self._updating, True
        try:
            self.lr.value = lr
        finally:
            self._updating = updating

    def _lr_moved(self, change: dict[str, Any]) -> None:
        if self._updating:
            return
        new = float(change["new"])
        if abs(math.log2(new) - math.log2(self._lr_value)) < self.lr.step / 2:
            return  # the browser echoing, rounded, the value the kernel set: not a move of the slider
        self._lr_value = new
        self._updating = True
        try:
            self.lr_auto.value = False  # the user chose a value: no longer automatic
        finally:
            self._updating = False
        self._refresh()

    def _changed(self, change: dict[str, Any]) -> None:
        if self._updating:
            return
        if change.get("owner") is self.width:
            self._offer_heads()
        self._refresh()

    def _offer_heads(self) -> None:
        """Offer the head counts that divide the width (what the config's error suggests), keeping a valid choice."""
        choices = head_choices(self.width.value)
        if tuple(_option_values(self.heads)) == choices:
            return
        keep = self.heads.value if self.heads.value in choices else max(c for c in choices if c <= 4 or c == 1)
        self._updating = True
        try:
            self.heads.options = choices
            self.heads.value = keep
        finally:
            self._updating = False

    def _refresh(self) -> None:
        fp8 = self.format.value in (NumberFormat.FP8_E4M3, NumberFormat.FP8_E5M2)
        self.fp8_backend.disabled = not fp8
        self.fp8_scaling.disabled = not fp8 or self.fp8_backend.value is Fp8Backend.SIMULATED
        self._refresh_lr()
        self._refresh_size()
        for callback in self._listeners:
            callback()

    def _refresh_lr(self) -> None:
        if not self.lr_auto.value:
            self.lr_readout.value = f"<small>lr = {describe_lr(self._lr_value)}</small>"
            return
        try:
            lr = default_lr(self.base.replace(scaling=self.scaling.value, optimizer=self.optimizer.value))
        except (NotImplementedError, ConfigError) as exc:
            self.lr_readout.value = f"<small>auto: {html.escape(str(exc))}</small>"
            return
        self._show_lr(lr)
        self.lr_readout.value = (f"<small>auto: lr = {describe_lr(lr)} (default of "
                                 f"{self.scaling.label} with {self.optimizer.label})</small>")

    def _refresh_size(self) -> None:
        try:
            config = self.config()
            estimate = _estimate(config.to_json(), self.vocab_size)
        except ConfigError as exc:
            self.size.value = f"<small style='color:#b00020'>{html.escape(str(exc))}</small>"
            return
        except Exception as exc:  # a corpus that cannot be read, say: show it, never break the controls
            self.size.value = f"<small style='color:#b00020'>size unknown: {html.escape(str(exc))}</small>"
            return
        free = psutil.virtual_memory().available
        parts = (f"params {format_bytes(estimate['param_bytes'])} + grads {format_bytes(estimate['grad_bytes'])}"
                 f" + optimizer {format_bytes(estimate['optimizer_bytes'])} + activations "
                 f"{format_bytes(estimate['activation_bytes'])}")
        text = (f"<b>{format_count(estimate['parameters'])}</b> parameters · est. memory "
                f"<b>{format_bytes(estimate['total_bytes'])}</b> ({parts}) · {format_bytes(free)} free")
        if estimate["total_bytes"] > 0.8 * free:
            text = f"<span style='color:#b00020'>{text} — too big: Train will refuse</span>"
        self.size.value = f"<small>{text}</small>"

    # -- layout ----------------------------------------------------------------------------------------------
    @functools.cached_property
    def widget(self) -> widgets.Widget:
        """Model settings on the left, optimisation settings on the right, "Advanced" folded below."""
        left = widgets.VBox([self.scaling, self.arch, self.width, self.depth, self.size],
                            layout=widgets.Layout(flex="1 1 460px"))
        right = widgets.VBox([widgets.HBox([self.lr, self.lr_auto]), self.lr_readout, self.optimizer, self.format,
                              self.fp8_backend, self.fp8_scaling,
                              widgets.HBox([self.steps, self.batch_size]), self.seed],
                             layout=widgets.Layout(flex="1 1 460px"))
        advanced = widgets.Accordion([widgets.HBox([
            widgets.VBox([self.heads, self.seq_len, self.schedule]),
            widgets.VBox([self.eval_every, self.scales_every]),
        ])], titles=("Advanced",), selected_index=None)
        return widgets.VBox([widgets.Box([left, right], layout=widgets.Layout(display="flex", flex_flow="row wrap")),
                             advanced])


def head_choices(width: int) -> tuple[int, ...]:
    """Head counts a width allows: its divisors up to 64 (``RunConfig`` suggests the same ones)."""
    return tuple(d for d in range(1, min(width, 64) + 1) if width % d == 0)


def _option_values(w: widgets.Widget) -> list[Any]:
    return [o[1] if isinstance(o, tuple) else o for o in w.options]


def _with(options: Any, value: Any) -> tuple[Any, ...]:
    """``options`` plus ``value`` (sorted in, for numbers) when it is missing."""
    items = tuple(options)
    values = [o[1] if isinstance(o, tuple) else o for o in items]
    if value in values:
        return items
    if all(isinstance(o, int) for o in items) and isinstance(value, int):
        return tuple(sorted((*items, value)))
    return (*items, value)
