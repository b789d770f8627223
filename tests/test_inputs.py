"""Every bad input gets a one-line refusal naming the field and the fix, or a sane result (issue 11).

Each row of the report's table "input tried -> refused (message) / accepted (result)" is a case here.
"""

from __future__ import annotations

import math
import re

import pytest
import torch

from labkit.cli import main, parse_values, value_parser
from labkit.config import ConfigError, RunConfig
from labkit.data import Corpus, CorpusError
from labkit.runs import RunStore
from labkit.sweep import grid

# --- the API: RunConfig refuses, with the field and the fix in the message ----------------------------------


@pytest.mark.parametrize(("changes", "message"), [
    ({"warmup_steps": float("nan")}, "warmup_steps must be an integer, got nan"),
    ({"lr": True}, "lr must be a number, not True"),
    ({"weight_decay": float("inf")}, "weight_decay must be a non-negative number <= 100, got inf"),
    ({"weight_decay": -0.1}, "weight_decay must be a non-negative number"),
    ({"threads": 100000}, "threads must be a positive integer <= .*cores"),
    ({"seed": 2**70}, "seed must be a non-negative integer"),
    ({"seed": -1}, "seed must be a non-negative integer"),
    ({"lr": 2**10000}, "lr=.*too large to be a number"),
    ({"lr": "fast"}, "lr must be a number, got the text 'fast'"),
    ({"lr": [0.1]}, "lr must be a number, got .* of type list"),
    ({"width": 100000}, "width must be a positive integer <= 65,536"),
    ({"seq_len": 100_000_000}, "seq_len must be a positive integer <= 65,536"),
    ({"steps": 10.5}, "steps must be an integer, got 10.5"),
    ({"grad_clip": 0}, "grad_clip must be a positive number"),
    ({"loss_scale": float("inf")}, "loss_scale must be a positive number .*got inf"),
    ({"val_fraction": 1.0}, "val_fraction must be a positive number < 1"),
    ({"eval_every": 0}, "eval_every must be a positive integer"),
    ({"corpus": ""}, "corpus must be a non-empty string"),
    ({"device": "tpu"}, "device must be one of cpu, cuda, mps, auto"),
])
def test_config_refuses_with_field_and_fix(changes, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig(**changes)


@pytest.mark.parametrize(("changes", "expected"), [
    ({"lr": "3e-3"}, {"lr": 0.003}),  # numeric strings from the API or JSON are read as numbers
    ({"lr": "none"}, {"lr": None}),
    ({"width": "64"}, {"width": 64}),
    ({"steps": 10.0}, {"steps": 10}),  # an integral float is an integer
    ({"lr": 1}, {"lr": 1.0}),
])
def test_config_accepts_numbers_written_as_text(changes, expected):
    config = RunConfig(**changes)
    for name, value in expected.items():
        assert getattr(config, name) == value and type(getattr(config, name)) is type(value)


def test_sweeps_share_the_checks():
    assert [c.lr for c in grid(RunConfig(), lr=["2e-3", 0.5])] == [0.002, 0.5]
    with pytest.raises(ConfigError, match="lr must be a number, not True"):
        grid(RunConfig(), lr=[True])


def test_zero_byte_file_is_not_a_corpus(tmp_path):
    path = tmp_path / "zeros.txt"
    path.write_bytes(b"\x00" * 200_000)
    for tokenizer in ("char", "byte"):
        with pytest.raises(CorpusError, match="only 1 distinct token"):
            Corpus.load(str(path), tokenizer=tokenizer)


# --- ranges on the command line ------------------------------------------------------------------------------


def test_range_whose_end_is_off_the_grid_is_refused_not_truncated():
    with pytest.raises(ConfigError, match="100 is not 32 times a power of two.*End it at 64 or 128"):
        parse_values("32..100", value_parser("width"))
    assert parse_values("32..128", value_parser("width")) == [32, 64, 128]
    assert parse_values("32..64,100", value_parser("width")) == [32, 64, 100]
    assert parse_values("2**-3..2**-1", value_parser("lr")) == [0.125, 0.25, 0.5]


def test_huge_range_is_refused_without_overflow():
    with pytest.raises(ConfigError, match="at most 64 values"):
        parse_values("1e-300..1e300", value_parser("lr"))


# --- the command line: one line on stderr, exit status 2, nothing saved -------------------------------------


def _cli(capsys, *args):
    try:
        code = main(list(args))
    except SystemExit as exit_info:
        code = exit_info.code
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize(("args", "message"), [
    (["train", "--lr", "2**10000"], "'2\\*\\*10000' is too large to be a number"),
    (["train", "--threads", "100000"], "threads must be a positive integer <= "),
    (["train", "--weight-decay", "inf"], "weight_decay must be a non-negative number"),
    (["train", "--warmup-steps", "nan"], "'nan' is not an integer"),
    (["train", "--seq-len", "100000000"], "seq_len must be a positive integer"),
    (["train", "--width", "100000"], "width must be a positive integer"),
    (["train", "--seed", "2**70"], "seed must be a non-negative integer"),
    (["train", "--depth", "100000", "--arch", "lstm", "--width", "16"], "s per step .* reduce width, depth"),
    (["scales", "--corpus", "/bin/ls"], "/bin/ls is not UTF-8 text"),
    (["sweep", "--width", "32..100"], "--width: '32..100': .*100 is not 32 times a power of two"),
    (["sweep", "--lr", "1e-300..1e300"], "--lr: .*at most 64 values"),
    (["sweep", "--executor", "foo"], "executor='foo' is not valid"),
    (["sweep", "--workers", "0"], "workers must be a positive integer"),
])
def test_cli_refuses_in_one_line_and_saves_nothing(capsys, tmp_path, args, message):
    runs_dir = ["--runs-dir", str(tmp_path)] if args[0] != "scales" else []
    code, err = _cli(capsys, *args, *runs_dir, "--quiet" if args[0] == "train" else "--json")
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert re.search(message, lines[0]), lines[0]
    assert not list(tmp_path.iterdir())  # no run, no phantom sweep


def test_zero_byte_corpus_is_refused_before_a_run_exists(capsys, tmp_path):
    path = tmp_path / "zeros.txt"
    path.write_bytes(b"\x00" * 200_000)
    code, err = _cli(capsys, "train", "--corpus", str(path), "--runs-dir", str(tmp_path / "runs"))
    assert code == 2 and "only 1 distinct token" in err
    assert RunStore(tmp_path / "runs").ids() == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_scales_on_cuda_without_cuda_is_refused(capsys):
    code, err = _cli(capsys, "scales", "--device", "cuda", "--width", "32", "--heads", "2")
    assert code == 2 and "sees no CUDA GPU" in err


def test_string_lr_from_the_api_trains_at_that_lr(make_config):
    from labkit.train import train

    run = train(make_config(lr="0.015625", steps=2, schedule="constant"))
    assert math.isclose(run.metrics["lr"].iloc[-1], 2**-6)
