import math

import pytest
import torch

from labkit.data import Corpus
from labkit.lm import perplexity, sample, sentence_probability
from labkit.train import Trainer


@pytest.fixture(scope="module")
def trained(request):
    from labkit.config import RunConfig

    trainer = Trainer(RunConfig(width=32, depth=1, heads=2, seq_len=32, batch_size=8, steps=30))
    trainer.train()
    return trainer.model, Corpus.load("shakespeare").tokenizer


def test_p_of_s_is_the_product_of_the_conditionals(trained):
    model, tokenizer = trained
    table = sentence_probability(model, tokenizer, "To be, or not to be")
    assert list(table.columns) == ["position", "token", "p", "log_p", "cum_log_p", "cum_p"]
    assert table["cum_p"].iloc[-1] == pytest.approx(table["p"].prod(), rel=1e-9)
    assert table["cum_log_p"].iloc[-1] == pytest.approx(table["log_p"].sum())
    assert (table["cum_p"].diff().dropna() <= 0).all()  # every token can only shrink P(S)


def test_probabilities_match_a_direct_softmax(trained):
    model, tokenizer = trained
    text = "ROMEO:\nO"
    table = sentence_probability(model, tokenizer, text, context="\n")
    ids = torch.tensor(tokenizer.encode("\n" + text))
    with torch.no_grad():
        probs = torch.softmax(model(ids[None])[0], dim=-1)
    expected = [probs[i, ids[i + 1]].item() for i in range(len(text))]
    assert table["p"].tolist() == pytest.approx(expected, rel=1e-5)


def test_long_texts_use_a_sliding_window(trained):
    model, tokenizer = trained
    table = sentence_probability(model, tokenizer, "a" * 50)  # longer than the model's 32 positions
    assert len(table) == 50 and table["p"].between(0, 1).all()


def test_perplexity_is_length_normalised(trained):
    model, tokenizer = trained
    short = sentence_probability(model, tokenizer, "the king")
    long = sentence_probability(model, tokenizer, "the king the king the king")
    assert long["cum_p"].iloc[-1] < short["cum_p"].iloc[-1]
    assert perplexity(short) == pytest.approx(math.exp(-short["log_p"].mean()))


def test_sample_is_seeded(trained):
    model, tokenizer = trained
    a = sample(model, tokenizer, "KING:\n", length=40, seed=1)
    assert a == sample(model, tokenizer, "KING:\n", length=40, seed=1)
    assert a != sample(model, tokenizer, "KING:\n", length=40, seed=2)
    assert len(a) == 40


def test_bad_inputs(trained):
    model, tokenizer = trained
    with pytest.raises(ValueError, match="empty"):
        sentence_probability(model, tokenizer, "")
    with pytest.raises(ValueError, match="temperature"):
        sample(model, tokenizer, temperature=0)
