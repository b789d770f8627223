import json

import pytest

from labkit.__main__ import main, parse_number


# In-process (``python -m labkit`` as a process is tested in test_sweep.py and test_store.py): a process start
# costs seconds of imports.
@pytest.mark.parametrize("arch", ["transformer", "lstm"])
def test_train_json_summary_and_runs_listing(arch, tmp_path, capsys):
    code = main(["train", "--arch", arch, "--width", "32", "--steps", "60", "--eval-every", "30", "--lr", "2**-6",
                 "--json", "--runs-dir", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(out)
    assert summary["status"] == "finished" and summary["steps"] == 60
    assert summary["final_val_loss"] < 3.3  # below the corpus's unigram entropy (3.31 nats)
    for key in ("run_id", "final_train_loss", "tokens_per_s", "peak_mem_total", "peak_rss"):
        assert summary[key] is not None
    assert "step/s" in err  # tqdm progress bar
    assert main(["runs", "--runs-dir", str(tmp_path)]) == 0
    assert summary["run_id"] in capsys.readouterr().out


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
