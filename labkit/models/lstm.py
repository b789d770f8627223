"""The seed article's language model (its section 5): embedding -> LSTM -> linear head."""

from __future__ import annotations

from torch import Tensor, nn

from labkit.models.layers import LSTM, STANDARD_OPS, Embedding, Linear, Ops
from labkit.models.roles import Role


class LSTMLanguageModel(nn.Module):
    """``LanguageModel`` from the seed article, runnable.

    The seed's version uses ``nn.Embedding``, ``nn.LSTM(batch_first=True)`` and ``nn.Linear``; this one
    has the same parameters (``embedding``, ``rnn``, ``fc``) and, with the standard ops, the same
    outputs. ``width`` is both the embedding and the hidden size; ``depth`` stacks LSTM layers.
    """

    def __init__(self, vocab_size: int, width: int, depth: int = 1, ops: Ops = STANDARD_OPS) -> None:
        super().__init__()
        self.embedding = Embedding(vocab_size, width, op=ops.embedding)
        self.rnn = LSTM(width, width, depth, op=ops.lstm)
        self.fc = Linear(width, vocab_size, op=ops.readout, role=Role.READOUT)

    def forward(self, ids: Tensor) -> Tensor:
        """Token ids (B, T) -> next-token logits (B, T, vocab)."""
        return self.fc(self.rnn(self.embedding(ids)))
