"""A small GPT-style decoder-only Transformer: pre-norm blocks of causal attention and an MLP."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from labkit.models.layers import STANDARD_OPS, Embedding, LayerNorm, Linear, Ops
from labkit.models.roles import Role, tag_residual_depth


class CausalSelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, ops: Ops) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = Linear(width, 3 * width, op=ops.linear)
        self.proj = Linear(width, width, op=ops.linear)
        self.attention = ops.attention

    def forward(self, x: Tensor) -> Tensor:
        batch, seq, width = x.shape
        q, k, v = self.qkv(x).split(width, dim=2)
        q, k, v = (t.view(batch, seq, self.heads, width // self.heads).transpose(1, 2) for t in (q, k, v))
        y = self.attention(q, k, v).transpose(1, 2).reshape(batch, seq, width)
        return self.proj(y)


class MLP(nn.Module):
    def __init__(self, width: int, ops: Ops) -> None:
        super().__init__()
        self.fc = Linear(width, 4 * width, op=ops.linear)
        self.proj = Linear(4 * width, width, op=ops.linear)
        self.gelu = ops.gelu

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.gelu(self.fc(x)))


class Block(nn.Module):
    """x + attention(norm(x)), then x + mlp(norm(x)), each residual through the ops' split/add.

    ``attn_tau`` and ``mlp_tau`` weight the two branches against the skip path; only unit-scaled ops
    use them (standard residuals are plain sums).
    """

    def __init__(self, width: int, heads: int, ops: Ops, attn_tau: float, mlp_tau: float) -> None:
        super().__init__()
        self.attn_tau, self.mlp_tau = attn_tau, mlp_tau
        self.ln1 = LayerNorm(width, op=ops.layer_norm)
        self.attn = CausalSelfAttention(width, heads, ops)
        self.ln2 = LayerNorm(width, op=ops.layer_norm)
        self.mlp = MLP(width, ops)
        self.split, self.add = ops.residual_split, ops.residual_add

    def forward(self, x: Tensor) -> Tensor:
        branch, skip = self.split(x, self.attn_tau)
        x = self.add(self.attn(self.ln1(branch)), skip, self.attn_tau)
        branch, skip = self.split(x, self.mlp_tau)
        return self.add(self.mlp(self.ln2(branch)), skip, self.mlp_tau)


class TransformerLanguageModel(nn.Module):
    """Token + learned position embeddings, ``depth`` pre-norm blocks, final norm, linear readout.

    Every parameter inside ``blocks`` is tagged with residual depth ``depth`` (:mod:`labkit.models.roles`).
    """

    def __init__(self, vocab_size: int, width: int, depth: int, heads: int, seq_len: int,
                 ops: Ops = STANDARD_OPS) -> None:
        super().__init__()
        self.seq_len = seq_len
        self.token_embedding = Embedding(vocab_size, width, op=ops.embedding)
        self.position_embedding = Embedding(seq_len, width, op=ops.embedding)
        tau = ops.residual_tau
        self.blocks = nn.ModuleList(Block(width, heads, ops, tau(2 * i, 2 * depth), tau(2 * i + 1, 2 * depth))
                                    for i in range(depth))
        tag_residual_depth(self.blocks, depth)
        self.ln_f = LayerNorm(width, op=ops.layer_norm)
        self.head = Linear(width, vocab_size, op=ops.readout, role=Role.READOUT)
        self.add = ops.add

    def forward(self, ids: Tensor) -> Tensor:
        """Token ids (B, T) with T <= seq_len -> next-token logits (B, T, vocab)."""
        seq = ids.shape[1]
        if seq > self.seq_len:
            raise ValueError(f"sequence of {seq} tokens is longer than the model's seq_len={self.seq_len}")
        positions = torch.arange(seq, device=ids.device)
        x = self.add(self.token_embedding(ids), self.position_embedding(positions))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))
