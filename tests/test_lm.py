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
    window = model.seq_len  # 32
    text = "To be, or not to be, that is the question: whether 'tis nobler"  # 63 characters
    table = sentence_probability(model, tokenizer, text)
    ids = tokenizer.encode("\n" + text)
    assert len(table) == len(text)
    with torch.no_grad():  # row i = P(text[i] | the last `window` tokens up to ids[i]), computed directly
        for i in (0, 5, window - 1, window, window + 1, 50, len(text) - 1):
            context = torch.tensor(ids[max(0, i + 1 - window): i + 1])
            expected = torch.softmax(model(context[None])[0, -1], dim=-1)[ids[i + 1]].item()
            assert table["p"].iloc[i] == pytest.approx(expected, rel=1e-5), i
    # A token that has slid out of every window changes nothing; inside the window it does.
    changed = sentence_probability(model, tokenizer, "X" + text[1:])
    assert changed["p"].iloc[window + 1:].tolist() == pytest.approx(table["p"].iloc[window + 1:].tolist(), rel=1e-6)
    assert changed["p"].iloc[1] != pytest.approx(table["p"].iloc[1], rel=1e-3)


@pytest.mark.parametrize("scaling", ["unit", "u-mup"])
def test_sample_from_a_fresh_unit_scaled_model(scaling):
    from labkit.build import build_for_run
    from labkit.config import RunConfig
    from labkit.scaling import ops

    ops._normal_moments.cache_clear()  # sample() runs under no_grad: the first GELU call must work there
    tokenizer = Corpus.load("shakespeare").tokenizer
    model, _, _ = build_for_run(RunConfig(scaling=scaling, width=32, heads=2, seq_len=16), tokenizer.vocab_size)
    text = sample(model, tokenizer, "KING:\n", length=20, seed=3)
    assert len(text) == 20 and text == sample(model, tokenizer, "KING:\n", length=20, seed=3)


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
