"""Notebook 1: a sentence's probability P(S) token by token, how it and perplexity change with length."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

from labkit.palette import run_colour
from labkit.workshop.models import Trained

_VISIBLE = {" ": "␣", "\n": "⏎", "\t": "⇥"}


def visible(token: str) -> str:
    """A token as a table can show it: space ``␣``, newline ``⏎``, tab ``⇥``."""
    return "".join(_VISIBLE.get(c, c) for c in token)


def probability_table(table: pd.DataFrame) -> pd.DataFrame:
    """``labkit.lm.sentence_probability``'s table, for reading: visible tokens, P(S) so far in scientific
    notation, log probabilities to 3 decimals."""
    return pd.DataFrame({
        "i": table["position"],
        "token w_i": [visible(t) for t in table["token"]],
        "P(w_i | w_<i)": table["p"].round(4),
        "log P(w_i | w_<i)": table["log_p"].round(3),
        "log P(w_1..w_i)": table["cum_log_p"].round(3),
        "P(w_1..w_i)": [f"{p:.3e}" for p in table["cum_p"]],
    })


def probability_figure(tables: Mapping[str, pd.DataFrame], title: str = "") -> Any:
    """Per-token probability bars (top) and the running log P(S) (bottom), one colour per model."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("P(wᵢ | w₁..wᵢ₋₁) for each character",
                                        "log P(w₁..wᵢ): the sentence's log probability so far"))
    for i, (name, table) in enumerate(tables.items()):
        colour = run_colour(i)
        labels = [f"{p}:{visible(t)}" for p, t in zip(table["position"], table["token"], strict=True)]
        fig.add_trace(go.Bar(x=labels, y=table["p"], name=name, marker_color=colour, legendgroup=name), 1, 1)
        fig.add_trace(go.Scatter(x=labels, y=table["cum_log_p"], name=name, mode="lines+markers",
                                 line_color=colour, legendgroup=name, showlegend=False), 2, 1)
    fig.update_yaxes(title_text="probability", range=[0, 1], row=1, col=1)
    fig.update_yaxes(title_text="log P (nats)", row=2, col=1)
    fig.update_xaxes(title_text="position:character", row=2, col=1, tickangle=0)
    fig.update_layout(title=title or None, barmode="group", template="plotly_white", height=560,
                      margin=dict(t=60, l=60, r=20, b=50))
    return fig


def length_table(trained: Trained, text: str, lengths: Iterable[int], context: str = "\n") -> pd.DataFrame:
    """How P(S) and perplexity behave as a text gets longer: score each prefix ``text[:n]``.

    Columns: ``characters``, ``log P(S)`` (natural log), ``log10 P(S)``, ``perplexity`` (exp of minus the mean
    log probability per character), and the same two numbers for a uniform model over the vocabulary
    (every character 1/V), the floor a model must beat.
    """
    from labkit.lm import perplexity, sentence_probability

    vocab = trained.tokenizer.vocab_size
    rows = []
    for n in lengths:
        table = sentence_probability(trained.model, trained.tokenizer, text[:n], context)
        log_p = float(table["log_p"].sum())
        rows.append({"characters": len(table), "log P(S)": log_p, "log10 P(S)": log_p / math.log(10),
                     "perplexity": perplexity(table), "uniform log10 P(S)": -len(table) * math.log10(vocab),
                     "uniform perplexity": float(vocab)})
    return pd.DataFrame(rows)


def length_figure(table: pd.DataFrame) -> Any:
    """Two panels from :func:`length_table`: log10 P(S) falls with length; perplexity per character does not."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("log₁₀ P(S) vs length", "perplexity per character"))
    x = table["characters"]
    fig.add_trace(go.Scatter(x=x, y=table["log10 P(S)"], name="trained model", mode="lines+markers",
                             line_color=run_colour(0), legendgroup="m"), 1, 1)
    fig.add_trace(go.Scatter(x=x, y=table["uniform log10 P(S)"], name="uniform over the vocabulary",
                             mode="lines", line=dict(color="#999999", dash="dash"), legendgroup="u"), 1, 1)
    fig.add_trace(go.Scatter(x=x, y=table["perplexity"], name="trained model", mode="lines+markers",
                             line_color=run_colour(0), legendgroup="m", showlegend=False), 1, 2)
    fig.add_trace(go.Scatter(x=x, y=table["uniform perplexity"], name="uniform", mode="lines",
                             line=dict(color="#999999", dash="dash"), legendgroup="u", showlegend=False), 1, 2)
    fig.update_xaxes(title_text="characters in S")
    fig.update_yaxes(title_text="log₁₀ P(S)", row=1, col=1)
    top = max(float(table["uniform perplexity"].max()), float(table["perplexity"].max()))
    ticks = [v for v in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000) if v <= 2 * top]
    fig.update_yaxes(title_text="perplexity (log scale)", type="log", tickvals=ticks,
                     range=[0, math.log10(1.5 * top)], row=1, col=2)
    fig.update_layout(template="plotly_white", height=380, margin=dict(t=50, l=60, r=20, b=50))
    return fig


def compare_texts(trained: Trained, texts: Sequence[str], context: str = "\n") -> pd.DataFrame:
    """P(S), log P(S) and perplexity of several texts under one model, to compare texts of different lengths."""
    from labkit.lm import perplexity, sentence_probability

    rows = []
    for text in texts:
        table = sentence_probability(trained.model, trained.tokenizer, text, context)
        log_p = float(table["log_p"].sum())
        rows.append({"text": text.replace("\n", "⏎"), "characters": len(table), "log P(S)": round(log_p, 2),
                     "P(S)": f"{math.exp(log_p):.2e}", "perplexity": round(perplexity(table), 2)})
    return pd.DataFrame(rows)
