"""The lab's models: the seed's LSTM, a GPT-style Transformer and a plain MLP, all built from ``Ops``."""

from __future__ import annotations

from torch import nn

from labkit.config import Arch, ModelConfig
from labkit.models.layers import STANDARD_OPS, Ops
from labkit.models.lstm import LSTMLanguageModel
from labkit.models.mlp import MLPLanguageModel
from labkit.models.transformer import TransformerLanguageModel

__all__ = ["LSTMLanguageModel", "MLPLanguageModel", "Ops", "STANDARD_OPS", "TransformerLanguageModel",
           "build_model", "count_parameters"]


def build_model(config: ModelConfig, ops: Ops = STANDARD_OPS) -> nn.Module:
    """A freshly initialised model of the given shape whose forward pass uses ``ops``."""
    if config.arch is Arch.LSTM:
        return LSTMLanguageModel(config.vocab_size, config.width, config.depth, ops)
    if config.arch is Arch.TRANSFORMER:
        return TransformerLanguageModel(config.vocab_size, config.width, config.depth, config.heads,
                                        config.seq_len, ops)
    if config.arch is Arch.MLP:
        return MLPLanguageModel(config.vocab_size, config.width, config.depth, ops)
    raise ValueError(f"unknown architecture {config.arch!r}")


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
