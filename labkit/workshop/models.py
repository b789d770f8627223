"""One model to look at: train it or build it seeded, and read what its config gives each parameter
(norms at initialisation, learning-rate factors)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import nn

from labkit.build import build_for_run, load_corpus
from labkit.config import RunConfig
from labkit.data import Tokenizer
from labkit.runs import Run


@dataclass
class Trained:
    """A run together with what it trained: the model (in eval mode) and the corpus tokenizer."""

    run: Run
    model: nn.Module
    tokenizer: Tokenizer


def train_model(config: RunConfig | None = None, **overrides: Any) -> Trained:
    """Train one run with the lab's engine and keep the model, to score and sample text with it."""
    from labkit.train import Trainer

    config = (config or RunConfig()).replace(**overrides) if overrides else (config or RunConfig())
    trainer = Trainer(config)
    run = trainer.train()
    model = trainer.model.eval()
    return Trained(run, model, corpus_for(config).tokenizer)


def seeded_model(config: RunConfig | None = None, **overrides: Any) -> Trained:
    """The model ``config`` would start training from (seeded, untrained), with an empty run record."""
    config = (config or RunConfig()).replace(**overrides) if overrides else (config or RunConfig())
    tokenizer = corpus_for(config).tokenizer
    model, _, _ = build_for_run(config, tokenizer.vocab_size)
    return Trained(Run(config), model.eval(), tokenizer)


def corpus_for(config: RunConfig):
    """The corpus (text and tokenizer) that ``config`` trains on."""
    return load_corpus(config.corpus, config.tokenizer.value, config.val_fraction)


def norm_table(config: RunConfig, after: str = "seed-l2-once") -> pd.DataFrame:
    """Each parameter tensor of ``config``'s model at initialisation, under standard scaling and after the
    seed's division by the L2 norm (``after``): size, L2 norm and RMS (typical entry size) of both.

    Dividing a tensor of n entries by its norm leaves entries of RMS 1/√n: the bigger the tensor, the
    smaller its entries.
    """
    from labkit.instrument import used_norms

    base, _, _ = build_for_run(config.replace(scaling="standard"), corpus_for(config).tokenizer.vocab_size)
    other, _, _ = build_for_run(config.replace(scaling=after), corpus_for(config).tokenizer.vocab_size)
    norms_after = used_norms(other)
    rows = []
    for name, p in base.named_parameters():
        n = p.numel()
        norm = float(torch.linalg.vector_norm(p.detach()))
        rows.append({"parameter": name, "entries": n, "L2 norm (standard)": norm,
                     "RMS (standard)": norm / math.sqrt(n), f"L2 norm ({after})": norms_after[name],
                     f"RMS ({after})": norms_after[name] / math.sqrt(n)})
    return pd.DataFrame(rows)


def lr_rules_table(config: RunConfig, lr: float = 1.0) -> pd.DataFrame:
    """The per-parameter learning rates a scaling method gives the optimizer (``param_groups``): for each
    parameter its shape, the factor applied to the base learning rate, and the rule behind it."""

    model, _, method = build_for_run(config, corpus_for(config).tokenizer.vocab_size)
    names = {id(p): n for n, p in model.named_parameters()}
    rows = []
    for group in method.param_groups(model, lr, config.optimizer):
        for p in group["params"]:
            rows.append({"parameter": names[id(p)], "shape": "×".join(map(str, p.shape)),
                         "lr factor": group.get("lr_scale", 1.0), "rule": group.get("rule", "base rate")})
    return pd.DataFrame(rows).set_index("parameter")
