import json
import subprocess
import sys

import pytest

from labkit.__main__ import main, parse_number


def run_cli(*args, runs_dir):
    return subprocess.run([sys.executable, "-m", "labkit", *args, "--runs-dir", str(runs_dir)],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("arch", ["transformer", "lstm"])
def test_train_json_summary_and_runs_listing(arch, tmp_path):
    result = run_cli("train", "--arch", arch, "--width", "32", "--steps", "60", "--eval-every", "30",
                     "--lr", "2**-6", "--json", runs_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["status"] == "finished" and summary["steps"] == 60
    assert summary["final_val_loss"] < 3.3  # below the corpus's unigram entropy (3.31 nats)
    for key in ("run_id", "final_train_loss", "tokens_per_s", "peak_mem_total", "peak_rss"):
        assert summary[key] is not None
    assert "step/s" in result.stderr  # tqdm progress bar
    listing = run_cli("runs", runs_dir=tmp_path)
    assert summary["run_id"] in listing.stdout


def test_every_config_field_is_an_option(capsys):
    from dataclasses import fields

    from labkit.config import RunConfig

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = capsys.readouterr().out
    for f in fields(RunConfig):
        assert "--" + f.name.replace("_", "-") in help_text


def test_bad_option_is_a_clear_error(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--lr", "0", "--runs-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "lr must be a positive" in capsys.readouterr().err


def test_parse_number():
    assert parse_number("2**-7") == 2**-7
    assert parse_number("2^3") == 8
    assert parse_number("3e-3") == 0.003


def test_scales_command_prints_the_table(tmp_path, capsys):
    assert main(["scales", "--scaling", "unit", "--arch", "mlp", "--width", "64"]) == 0
    out = capsys.readouterr().out
    assert "hidden.0" in out and "gradient" in out
    assert main(["scales", "--scaling", "unit", "--arch", "mlp", "--width", "64", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["kind"] for r in rows} == {"activation", "gradient", "weight"}
    assert all(0.3 < r["rms"] < 3 for r in rows)
