"""What a language model computes (seed §2.1, §4): P(S) = Π_i P(w_i | w_1..w_{i-1}), and sampling.

    table = sentence_probability(model, tokenizer, "To be, or not to be")
    table["log_p"].sum()  # log P(S | context)

Character-level models have no start-of-sentence token, so every sentence is scored *after a context*
(by default a newline, the way every line of the corpus begins): the first row of the table is
P(w_1 | context), not an unconditional P(w_1).

A run trained earlier (and saved with a store) is loaded with :func:`load_model`::

    model, tokenizer, run = load_model("20261201-101500-1a2b3c")
    sample(model, tokenizer, "ROMEO:")
"""

from __future__ import annotations

import math

import pandas as pd
import torch
from torch import Tensor, nn

from labkit.checkpoint import load_model
from labkit.data import Tokenizer

__all__ = ["load_model", "next_token_log_probs", "perplexity", "sample", "sentence_probability"]


def _max_context(model: nn.Module) -> int | None:
    return getattr(model, "seq_len", None)


@torch.no_grad()
def next_token_log_probs(model: nn.Module, ids: Tensor) -> Tensor:
    """log P(next token | ids[:i+1]) for every position i of a 1-D id tensor: shape (len(ids), vocab).

    Models with a fixed context (the Transformer) see at most their last ``seq_len`` tokens.
    """
    was_training = model.training
    model.eval()
    window = _max_context(model)
    if window is None or len(ids) <= window:
        logits = model(ids[None])[0]
    else:
        rows = [model(ids[max(0, i + 1 - window): i + 1][None])[0, -1] for i in range(len(ids))]
        logits = torch.stack(rows)
    model.train(was_training)
    return torch.log_softmax(logits.float(), dim=-1)


def sentence_probability(model: nn.Module, tokenizer: Tokenizer, text: str, context: str = "\n") -> pd.DataFrame:
    """Per-token probabilities of ``text`` under ``model``, after ``context``.

    Columns: ``position``, ``token``, ``p`` = P(w_i | context, w_<i), ``log_p`` (natural log),
    ``cum_log_p`` (log P of the text so far) and ``cum_p`` (P of the text so far, which shrinks with
    every token: the reason to compare texts by perplexity rather than by P(S)).
    """
    if not text:
        raise ValueError("text is empty: give at least one character to score")
    if not context:
        raise ValueError("context must be at least one token (the model needs an input to predict from)")
    context_ids = tokenizer.encode(context)
    target_ids = tokenizer.encode(text)
    ids = torch.tensor(context_ids + target_ids, dtype=torch.long)
    log_probs = next_token_log_probs(model, ids[:-1])[len(context_ids) - 1:]
    targets = torch.tensor(target_ids, dtype=torch.long)
    log_p = log_probs.gather(1, targets[:, None])[:, 0].double()
    cum = torch.cumsum(log_p, dim=0)
    return pd.DataFrame({
        "position": range(1, len(target_ids) + 1),
        "token": tokenizer.tokens(target_ids),
        "p": log_p.exp().numpy(),
        "log_p": log_p.numpy(),
        "cum_log_p": cum.numpy(),
        "cum_p": cum.exp().numpy(),
    })


def perplexity(table: pd.DataFrame) -> float:
    """exp(−mean log p) over the table's tokens: comparable across texts of different lengths."""
    return math.exp(-float(table["log_p"].mean()))


@torch.no_grad()
def sample(model: nn.Module, tokenizer: Tokenizer, prompt: str = "\n", length: int = 200,
           temperature: float = 1.0, seed: int = 0) -> str:
    """Continue ``prompt`` by ``length`` tokens drawn from the model (temperature-scaled, seeded)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    generator = torch.Generator().manual_seed(seed)
    ids = torch.tensor(tokenizer.encode(prompt), dtype=torch.long)
    window = _max_context(model)
    was_training = model.training
    model.eval()
    for _ in range(length):
        context = ids if window is None else ids[-window:]
        logits = model(context[None])[0, -1].float() / temperature
        next_id = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)
        ids = torch.cat([ids, next_id])
    model.train(was_training)
    return tokenizer.decode(ids[len(tokenizer.encode(prompt)):])
