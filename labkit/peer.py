"""Graphcore's ``unit-scaling`` (the published library) timed like labkit, for ``python -m labkit.bench``.

So that "labkit's unit scaling costs less" is measured, not assumed, the benchmark times the library's
own u-μP decoder (``unit_scaling.TransformerDecoder`` and its ``AdamW``) against the same architecture
written in plain PyTorch, and its ``simulate_format`` FP8 simulation (E4M3 forward, E5M2 backward,
stochastic rounding, its defaults) against the plain model, at labkit's model size and on labkit's
batches. The library is a development dependency (``pip install -e .[dev]``): :func:`peer_version`
says whether it is there.

The plain counterpart mirrors the library's decoder op for op: token embedding (no positions),
pre-norm layers of RMS norm (no gain) -> causal multi-head attention and RMS norm -> SwiGLU MLP
(4× width), each added to the residual stream, final RMS norm, linear readout; no biases.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labkit.config import RunConfig
from labkit.train import load_corpus

PEER = "unit-scaling"


def peer_version() -> str | None:
    """The installed version of Graphcore's ``unit-scaling``, or None when it is not installed."""
    try:
        import unit_scaling  # noqa: F401
    except ImportError:
        return None
    return importlib.metadata.version(PEER)


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.linear_qkv = nn.Linear(width, 3 * width, bias=False)
        self.linear_o = nn.Linear(width, width, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        batch, seq, width = x.shape
        q, k, v = self.linear_qkv(x).view(batch, seq, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.linear_o(y.transpose(1, 2).reshape(batch, seq, width))


class _SwiGLU(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(width, 4 * width, bias=False)
        self.linear_gate = nn.Linear(width, 4 * width, bias=False)
        self.linear_2 = nn.Linear(4 * width, width, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_2(self.linear_1(x) * F.silu(self.linear_gate(x)))


class PlainDecoder(nn.Module):
    """The architecture of ``unit_scaling.TransformerDecoder`` in plain PyTorch (standard parametrisation)."""

    def __init__(self, width: int, vocab_size: int, layers: int, heads: int) -> None:
        super().__init__()
        self.width = width
        self.embedding = nn.Embedding(vocab_size, width)
        self.attention = nn.ModuleList(_Attention(width, heads) for _ in range(layers))
        self.mlp = nn.ModuleList(_SwiGLU(width) for _ in range(layers))
        self.projection = nn.Linear(width, vocab_size, bias=False)

    def _norm(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, (self.width,))

    def forward(self, ids: Tensor) -> Tensor:
        x = self.embedding(ids)
        for attention, mlp in zip(self.attention, self.mlp, strict=True):
            x = x + attention(self._norm(x))
            x = x + mlp(self._norm(x))
        return self.projection(self._norm(x))


def peer_steps(config: RunConfig) -> dict[str, Callable[[], None]]:
    """One training step (batch, forward, loss, backward, AdamW step) of each of the library's models at
    ``config``'s size, on ``config``'s batches: plain, u-μP, and both under ``simulate_format`` FP8.

    Raises ImportError when the library is not installed (check :func:`peer_version` first).
    """
    import unit_scaling as uu
    import unit_scaling.functional as UF
    from unit_scaling.optim import AdamW as UAdamW
    from unit_scaling.transforms import simulate_fp8

    corpus = load_corpus(config.corpus, config.tokenizer.value, config.val_fraction)
    vocab, width, depth, heads = corpus.tokenizer.vocab_size, config.width, config.depth, config.heads

    def plain() -> nn.Module:
        torch.manual_seed(config.seed)
        return PlainDecoder(width, vocab, depth, heads)

    def umup() -> nn.Module:
        torch.manual_seed(config.seed)
        return uu.TransformerDecoder(width, vocab, depth, heads)

    def step(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor],
             optimizer: torch.optim.Optimizer) -> Callable[[], None]:
        generator = torch.Generator().manual_seed(config.seed + 1)

        def run_step() -> None:
            x, y = corpus.get_batch("train", config.batch_size, config.seq_len, generator)
            loss = loss_fn(model(x).flatten(0, 1), y.flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss.item()

        return run_step

    def standard_step(model: nn.Module) -> Callable[[], None]:
        return step(model, F.cross_entropy, torch.optim.AdamW(model.parameters(), lr=2.0**-7))

    def umup_step(model: nn.Module) -> Callable[[], None]:
        return step(model, UF.cross_entropy, UAdamW(model.parameters(), lr=2.0**-1))

    plain_model, umup_model = plain(), umup()
    return {
        "plain fp32": standard_step(plain_model),
        "u-mup fp32": umup_step(umup_model),
        "plain fp8 (simulate_format)": standard_step(simulate_fp8(plain())),
        "u-mup fp8 (simulate_format)": umup_step(simulate_fp8(umup())),
    }
