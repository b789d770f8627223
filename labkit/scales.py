"""Per-layer scale instrumentation: the RMS of every op's output, of the gradient arriving at it, and
of its weight. This is the data behind the lab's "per-layer scale" chart and μP's coord check.

    recorder = ScaleRecorder(model)
    with recorder.recording(step=0):
        loss_fn(model(x), y).backward()
    recorder.table()  # DataFrame: step, layer, kind ∈ {activation, gradient, weight}, rms

Hooks are attached only inside ``recording()``, so steps that are not sampled pay nothing. RMS values
are kept as 0-d tensors until ``rows()`` converts them all at once.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import pandas as pd
import torch
from torch import Tensor, nn

from labkit.build import build_for_run, load_corpus, resolve_device
from labkit.config import RunConfig
from labkit.models.layers import LSTM, Embedding, LayerNorm, Linear

#: The modules whose outputs are recorded: every op that owns parameters.
RECORDED = (Linear, Embedding, LayerNorm, LSTM)


def _rms(t: Tensor) -> Tensor:
    return t.detach().float().pow(2).mean().sqrt()


class ScaleRecorder:
    """Records activation, gradient and weight RMS per named layer of ``model`` while recording.

    Rows go to ``sink`` (a list, e.g. ``run.scales``) when given, else to a list of the recorder's own.
    """

    def __init__(self, model: nn.Module, sink: list[dict] | None = None) -> None:
        self.model = model
        self.layers = {name: m for name, m in model.named_modules() if isinstance(m, RECORDED)}
        self._pending: list[tuple[int, str, str, Tensor]] = []
        self._rows: list[dict] = sink if sink is not None else []

    @contextlib.contextmanager
    def recording(self, step: int) -> Iterator[None]:
        """Record the forward and backward pass run inside this block as ``step``."""
        handles = [m.register_forward_hook(self._forward_hook(step, name)) for name, m in self.layers.items()]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
        for name, module in self.layers.items():
            weight = getattr(module, "weight", None)
            if weight is None and isinstance(module, LSTM):
                weight = module.weight_hh_l0
            if weight is not None:
                self._pending.append((step, name, "weight", _rms(weight)))
        self._flush()

    def _forward_hook(self, step: int, name: str):
        def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            self._pending.append((step, name, "activation", _rms(output)))
            if output.requires_grad:
                output.register_hook(lambda grad: self._pending.append((step, name, "gradient", _rms(grad))))

        return hook

    def _flush(self) -> None:
        if not self._pending:
            return
        values = torch.stack([v for *_, v in self._pending]).tolist()
        self._rows.extend([{"step": step, "layer": layer, "kind": kind, "rms": value}
                           for (step, layer, kind, _), value in zip(self._pending, values, strict=True)])
        self._pending = []

    def rows(self) -> list[dict]:
        """Every recorded value so far, as dicts (step, layer, kind, rms)."""
        self._flush()
        return list(self._rows)

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows(), columns=["step", "layer", "kind", "rms"])


def log2_histogram(t: Tensor, low: int = -40, high: int = 20) -> pd.DataFrame:
    """Counts of log2|x| in unit-wide bins from ``low`` to ``high`` (zeros counted separately as ``-inf``).

    Drawn against a number format's range, it shows which values would underflow or saturate.
    """
    flat = t.detach().float().flatten()
    nonzero = flat[flat != 0]
    exponents = torch.floor(torch.log2(nonzero.abs())).clamp(low, high)
    counts = torch.bincount((exponents - low).long(), minlength=high - low + 1)
    frame = pd.DataFrame({"log2_abs": range(low, high + 1), "count": counts.tolist()})
    zeros = int(flat.numel() - nonzero.numel())
    return pd.concat([pd.DataFrame({"log2_abs": [-math.inf], "count": [zeros]}), frame], ignore_index=True)


def initial_scales(config: RunConfig) -> pd.DataFrame:
    """Per-layer RMS of activations, gradients and weights of ``config``'s model at initialisation,
    from one forward and backward pass on a training batch (what ``python -m labkit scales`` prints)."""
    torch.set_num_threads(config.threads)
    device = resolve_device(config.device)  # device="cuda" without CUDA is refused, never computed on the CPU
    corpus = load_corpus(config.corpus, config.tokenizer.value, config.val_fraction)
    corpus.check_seq_len(config.seq_len)
    model, ops, _ = build_for_run(config, corpus.tokenizer.vocab_size)
    model.to(device)
    x, y = corpus.get_batch("train", config.batch_size, config.seq_len, torch.Generator().manual_seed(config.seed))
    x, y = x.to(device), y.to(device)
    recorder = ScaleRecorder(model)
    with recorder.recording(step=0):
        ops.cross_entropy(model(x).flatten(0, 1), y.flatten()).backward()
    return recorder.table()
