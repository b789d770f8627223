"""A plain MLP language model over a fixed window of previous tokens (Bengio et al. 2003 style).

It answers the seed's FAQ "can unit scaling apply to other models?" with a model that has no
recurrence and no attention: just embeddings, linear layers and a nonlinearity.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from labkit.models.layers import STANDARD_OPS, Embedding, Linear, Ops
from labkit.models.roles import Role

CONTEXT = 8  # tokens the MLP sees when predicting the next one


class MLPLanguageModel(nn.Module):
    """Embed the last ``CONTEXT`` tokens, concatenate, ``depth`` GELU layers of ``width``, readout."""

    def __init__(self, vocab_size: int, width: int, depth: int = 2, ops: Ops = STANDARD_OPS) -> None:
        super().__init__()
        self.embedding = Embedding(vocab_size, width, op=ops.embedding)
        sizes = [CONTEXT * width] + [width] * depth
        self.hidden = nn.ModuleList(Linear(a, b, op=ops.linear) for a, b in zip(sizes, sizes[1:], strict=False))
        self.head = Linear(sizes[-1], vocab_size, op=ops.readout, role=Role.READOUT)
        self.gelu = ops.gelu

    def forward(self, ids: Tensor) -> Tensor:
        """Token ids (B, T) -> next-token logits (B, T, vocab); early positions see zero padding."""
        x = self.embedding(ids)  # (B, T, d)
        x = F.pad(x, (0, 0, CONTEXT - 1, 0))  # left-pad the time axis
        x = x.unfold(1, CONTEXT, 1)  # (B, T, d, CONTEXT): window ending at each position
        x = x.transpose(2, 3).flatten(2)  # (B, T, CONTEXT * d), oldest token first
        for layer in self.hidden:
            x = self.gelu(layer(x))
        return self.head(x)
