"""Tests of labkit.workshop: the helpers behind the workshop notebooks (small, fast configs only)."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from labkit import workshop as ws
from labkit.config import RunConfig
from labkit.lm import sentence_probability


def tiny(**overrides) -> RunConfig:
    base = dict(width=16, depth=1, heads=2, seq_len=16, batch_size=4, steps=2, eval_every=2, eval_batches=1)
    base.update(overrides)
    return RunConfig(**base)


# -- modes ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "smoke"), [("1", True), ("true", True), ("YES", True), ("", False), ("0", False)])
def test_smoke_mode_reads_the_environment(monkeypatch, value, smoke):
    monkeypatch.setenv(ws.SMOKE_ENV, value)
    assert ws.smoke_mode() is smoke
    assert ws.full_or_smoke("full", "smoke") == ("smoke" if smoke else "full")


def test_smoke_mode_off_when_unset(monkeypatch):
    monkeypatch.delenv(ws.SMOKE_ENV, raising=False)
    assert not ws.smoke_mode()
    assert ws.full_or_smoke(300, 20) == 300


def test_setup_sets_the_thread_count_and_says_the_mode(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setenv(ws.SMOKE_ENV, "1")
    try:
        text = ws.setup(threads=1)
        assert torch.get_num_threads() == 1
        assert "smoke mode" in text and "1 CPU thread" in text
    finally:
        torch.set_num_threads(before)


def test_runs_folder_is_temporary_unless_given(tmp_path):
    with ws.runs_folder(None, "x") as a, ws.runs_folder(None, "x") as b:
        assert a != b and a.is_dir() and not any(a.iterdir())
    assert not a.exists() and not b.exists()
    with ws.runs_folder(tmp_path, "x") as c:
        assert c == tmp_path
    assert tmp_path.exists()


def test_lr_sweep_in_a_temporary_folder_keeps_results_in_memory():
    sweep = ws.lr_sweep(tiny(arch="lstm"), [2**-6], name="tmp", scaling=["standard"])
    assert sweep.table()["status"].tolist() == ["finished"]
    (run,) = ws.sweep_runs(sweep).values()
    assert not run.metrics.empty
    assert sweep.best_lr()["best_lr"].tolist() == [2**-6]


# -- notebook 1 -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained():
    torch.set_num_threads(1)
    return ws.train_model(tiny(arch="lstm", steps=3))


def test_train_model_keeps_model_and_tokenizer(trained):
    assert trained.run.status.value == "finished"
    assert not trained.model.training
    assert trained.tokenizer.vocab_size == trained.run.info["vocab_size"]


def test_seeded_model_is_deterministic():
    a, b = ws.seeded_model(tiny(arch="lstm")), ws.seeded_model(tiny(arch="lstm"))
    ta = sentence_probability(a.model, a.tokenizer, "To be")
    tb = sentence_probability(b.model, b.tokenizer, "To be")
    assert ta["log_p"].tolist() == tb["log_p"].tolist()


def test_visible_tokens():
    assert ws.visible("a b\n") == "a␣b⏎"


def test_probability_table_and_figure(trained):
    table = sentence_probability(trained.model, trained.tokenizer, "To be, or")
    shown = ws.probability_table(table)
    assert list(shown["token w_i"])[:3] == ["T", "o", "␣"]
    assert np.isclose(shown["log P(w_1..w_i)"].iloc[-1], table["log_p"].sum(), atol=1e-3)
    fig = ws.probability_figure({"a": table, "b": table})
    assert len(fig.data) == 4


def test_length_table_probability_falls_and_uniform_is_exact(trained):
    text = "To be, or not to be, that is the question"
    table = ws.length_table(trained, text, [5, 10, 20, 40])
    assert list(table["characters"]) == [5, 10, 20, 40]
    assert (np.diff(table["log P(S)"]) < 0).all()
    vocab = trained.tokenizer.vocab_size
    assert np.allclose(table["uniform log10 P(S)"], -table["characters"] * math.log10(vocab))
    assert (table["uniform perplexity"] == vocab).all()
    assert np.allclose(table["perplexity"], np.exp(-table["log P(S)"] / table["characters"]))
    assert len(ws.length_figure(table).data) == 4


def test_compare_texts(trained):
    table = ws.compare_texts(trained, ["ab", "abc\n"])
    assert list(table["characters"]) == [2, 4]
    assert table["text"].iloc[1] == "abc⏎"


# -- notebook 2 -----------------------------------------------------------------------------------------------

def test_norm_table_after_seed_division():
    table = ws.norm_table(tiny(arch="lstm"))
    assert np.allclose(table["L2 norm (seed-l2-once)"], 1.0, atol=1e-5)
    assert np.allclose(table["RMS (seed-l2-once)"], 1 / np.sqrt(table["entries"]), rtol=1e-5)
    assert (table["L2 norm (standard)"] > 0).all()


def test_measure_costs_same_flops_and_bytes_for_seed_once():
    costs = ws.measure_costs({m: tiny(arch="lstm", scaling=m) for m in ("standard", "seed-l2-once")}, steps=2)
    assert costs.loc["standard", "FLOPs/step"] == costs.loc["seed-l2-once", "FLOPs/step"] > 0
    assert costs.loc["standard", "param bytes"] == 4 * costs.loc["standard", "parameters"]
    assert costs.loc["standard", "optimizer bytes"] >= 2 * costs.loc["standard", "param bytes"]


def test_step_times_ratio_to_first():
    """A model with ~60× the matmul work per step must come out measurably slower, in the right column."""
    configs = {"small": tiny(arch="mlp", width=16, batch_size=8, seq_len=32),
               "large": tiny(arch="mlp", width=256, batch_size=8, seq_len=32)}
    times = ws.step_times(configs, steps=5, warmup=1)
    assert list(times.index) == ["small", "large"]
    assert times.loc["small", "vs first"] == 1.0
    ms = times["step time (ms)"]
    assert times.loc["large", "vs first"] == pytest.approx(ms["large"] / ms["small"], rel=0.1, abs=0.05)
    assert times.loc["large", "vs first"] > 2.0, times


def test_seed_verdicts_from_synthetic_measurements():
    costs = pd.DataFrame({"FLOPs/step": [100, 100, 50], "total bytes": [10, 10, 10], "param bytes": [4, 4, 4]},
                         index=["standard", "same", "half"])
    times = pd.DataFrame({"step time (ms)": [10.0, 12.0, 5.0]}, index=costs.index)
    best = pd.Series({"standard": 2.0, "same": 2.01, "half": 3.0})
    v = ws.seed_verdicts(costs, times, best).set_index("claim")["verdict"]
    assert v["same reduces compute (FLOPs)"] == "does not hold"
    assert v["half reduces compute (FLOPs)"] == "holds"
    assert v["same reduces compute (time)"] == "does not hold"
    assert v["half reduces compute (time)"] == "holds"
    assert v["same reduces memory"] == "does not hold"
    assert v["same does not affect quality"] == "holds"
    assert v["half does not affect quality"] == "does not hold"


def test_seed_verdicts_undecided_without_a_finished_run():
    costs = pd.DataFrame({"FLOPs/step": [1, 1], "total bytes": [1, 1], "param bytes": [1, 1]}, index=["standard", "x"])
    times = pd.DataFrame({"step time (ms)": [1.0, 1.0]}, index=costs.index)
    v = ws.seed_verdicts(costs, times, pd.Series({"standard": 2.0, "x": math.nan}))
    assert v.set_index("claim").loc["x does not affect quality", "verdict"] == "undecided"


def test_lr_sweep_helpers(tmp_path):
    sweep = ws.lr_sweep(tiny(arch="lstm"), [2**-8, 2**-6], name="t", root=tmp_path,
                        scaling=["standard", "seed-l2-once"])
    table = sweep.table()
    assert len(table) == 4 and set(table["status"]) == {"finished"}
    runs = ws.sweep_runs(sweep, lr=2**-6)
    assert set(runs) == {"standard", "seed-l2-once"}
    assert not runs["standard"].metrics.empty
    best = ws.best_loss(table)
    assert set(best.index) == {"standard", "seed-l2-once"}
    summary = ws.sweep_summary(table)
    assert summary.loc["standard", "runs"] == 2
    assert summary.loc["standard", "best lr"] in ("2^-8", "2^-6")
    assert len(ws.loss_curves_figure(runs).data) >= 2
    assert list(ws.run_table(runs).columns) == ["status", "peak lr", "final train loss", "final val loss"]


# -- notebook 3 -----------------------------------------------------------------------------------------------

def test_format_table():
    table = ws.format_table()
    assert table.loc["fp16", "largest"] == "6.55e+04"
    assert table.loc["fp8-e4m3", "largest"] == "448"
    assert table.loc["fp8-e4m3", "beyond largest"] == "saturates"
    assert table.loc["fp8-e5m2", "smallest subnormal"] == "2^-16"
    assert table.loc["bf16", "bytes/value"] == 2


def test_rounding_table():
    table = ws.rounding_table([1e-9, 1.0, 70000])
    assert table.loc["1e-09", "fp16"] == "0"
    assert table.loc["70000", "fp16"] == "inf"
    assert table.loc["70000", "fp8-e4m3"] == "448"
    assert (table.loc["1"] == "1").all()


def test_scales_across_widths_and_spread():
    scales = ws.scales_across_widths(tiny(), ["standard", "unit"], [16, 32])
    assert set(scales["width"]) == {16, 32} and set(scales["kind"]) == {"activation", "gradient", "weight"}
    spread = ws.scale_spread(scales)
    assert (spread["min log2 RMS"] <= spread["max log2 RMS"]).all()
    unit = spread.loc[("unit", "weight")]
    assert (unit["median log2 RMS"].abs() < 0.2).all()  # N(0,1) weights
    fig = ws.scales_figure(scales)
    assert len(fig.data) > 0


def test_gradient_histogram_counts_every_parameter():
    config = tiny()
    hist = ws.gradient_histogram(config)
    model = ws.seeded_model(config).model
    assert hist["count"].sum() == sum(p.numel() for p in model.parameters())


def test_histogram_summary_fractions():
    hist = pd.DataFrame({"log2_abs": [-math.inf, -30.0, -20.0, 0.0], "count": [0, 1, 1, 2]})
    summary = ws.histogram_summary({"x": hist}, formats=("fp16", "fp8-e4m3"))
    assert summary.loc["x", "values"] == 4
    assert summary.loc["x", "fp16 → 0"] == "25.0%"  # 2^-30 is below fp16's 2^-24; 2^-20 is not
    assert summary.loc["x", "fp8-e4m3 → 0"] == "50.0%"
    assert summary.loc["x", "median log2|g|"] == -20.0
    assert len(ws.histogram_figure({"x": hist}).data) == 1


def test_op_scale_table_unit_rules_hold():
    table = ws.op_scale_table(width=64, tokens=1024)
    unit_linear = table.loc[("linear (d → 4d)", "unit")]
    assert abs(unit_linear["output RMS"] - 1) < 0.05 and abs(unit_linear["grad w RMS"] - 1) < 0.05
    assert abs(unit_linear["grad x RMS"] - 2) < 0.1  # constrained to the forward scale: off by sqrt(4)
    assert abs(table.loc[("embedding", "unit"), "grad table RMS"] - 1) < 0.1
    assert abs(table.loc[("embedding", "standard"), "grad table RMS"] - math.sqrt(1024 / 70)) < 0.5
    assert abs(table.loc[("linear (d → 4d)", "standard"), "grad w RMS"] - math.sqrt(1024)) < 3


def test_show_source():
    code = ws.show_source(ws.full_or_smoke)
    assert "def full_or_smoke" in code.data


# -- keeping notebooks clean ----------------------------------------------------------------------------------

def _nb(*cells):
    return {"cells": list(cells), "metadata": {"widgets": {"state": {}}}, "nbformat": 4, "nbformat_minor": 5}


def _code(source, outputs=None):
    return {"cell_type": "code", "source": source, "metadata": {"execution": {"x": 1}}, "execution_count": 3,
            "outputs": outputs or [{"output_type": "stream", "name": "stdout", "text": "hi\n"}]}


def test_check_cli(tmp_path, capsys):
    path = tmp_path / "a.ipynb"
    path.write_text(json.dumps(_nb(_code("x = 1"))), encoding="utf-8")
    assert ws.main(["check", str(path)]) == 0 and "a.ipynb: ok" in capsys.readouterr().out
    assert ws.main(["strip", str(path)]) == 2  # stripping is git's clean filter (nbstripout) now


def test_long_definitions():
    long_def = "def f(x):\n" + "".join(f"    x += {i}\n" for i in range(6)) + "    return x\n"
    nb = _nb(_code("%matplotlib inline\ndef g():\n    return 1\n"), _code(long_def),
             _code("class A:\n    pass\n"), _code("y = (lambda v:\n v)(1)\n"))
    assert ws.long_definitions(nb) == ["cell 1: def f (8 lines)"]
    assert ws.long_definitions(nb, max_lines=1) == ["cell 0: def g (2 lines)", "cell 1: def f (8 lines)",
                                                    "cell 2: class A (2 lines)", "cell 3: lambda <lambda> (2 lines)"]
    assert ws.long_definitions(_nb(_code("def (:"))) == ["cell 0: does not parse (invalid syntax, line 1)"]


def test_check_cli_fails_on_long_definitions(tmp_path):
    path = tmp_path / "b.ipynb"
    path.write_text(json.dumps(_nb(_code("def f():\n" + "    pass\n" * 10))), encoding="utf-8")
    assert ws.main(["check", str(path)]) == 1


def test_check_runs_as_a_module(tmp_path):
    path = tmp_path / "b.ipynb"
    path.write_text(json.dumps(_nb(_code("def f():\n" + "    pass\n" * 10))), encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "labkit.workshop", "check", str(path)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1 and "cell 0: def f (11 lines)" in result.stdout


def test_every_name_the_notebooks_call_is_exported():
    """Notebooks call ``ws.<name>``: each such name is in ``labkit.workshop.__all__`` (the package's one list)."""
    called = set()
    for path in sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb")):
        for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
            called |= set(re.findall(r"\bws\.([A-Za-z_]\w*)", "".join(cell["source"])))
    assert len(called) > 30
    assert sorted(called - set(ws.__all__)) == []
    assert all(hasattr(ws, name) for name in ws.__all__)


# -- notebooks 0, 4, 5, 6 -------------------------------------------------------------------------------------

def test_latest_scales_summarises_the_last_sampled_step():
    run = ws.train_model(tiny(steps=3, scales_every=2)).run
    table = ws.latest_scales({"a": run})
    assert set(table.index.get_level_values("kind")) == {"activation", "gradient", "weight"}
    assert (table["step"] == 2).all()
    assert (table["min RMS"] <= table["max RMS"]).all()


@pytest.fixture(scope="module")
def format_runs(tmp_path_factory):
    configs = {"fp32": tiny(), "fp8": tiny(format="fp8-e4m3"),
               "fp8 ls": tiny(format="fp8-e4m3", loss_scaling="dynamic")}
    return ws.run_configs(configs, name="fmt", root=tmp_path_factory.mktemp("runs"))


def test_run_configs_returns_runs_by_label(format_runs):
    assert list(format_runs) == ["fp32", "fp8", "fp8 ls"]
    assert all(r.status.value == "finished" for r in format_runs.values())
    assert format_runs["fp8"].config.format.value == "fp8-e4m3"


def test_format_events(format_runs):
    table = ws.format_events(format_runs)
    assert table.loc["fp32", "underflow bwd"] == "—"
    assert table.loc["fp8", "gradients"] == "fp8-e5m2"
    assert table.loc["fp8", "underflow bwd"].endswith("%")
    assert table.loc["fp8 ls", "loss scaling"] == "dynamic"
    fig = ws.events_figure(format_runs)
    assert all("fp32" not in t.name for t in fig.data)


def test_compare_losses(format_runs):
    table = ws.compare_losses(format_runs, [("fp8", "fp32"), ("fp32", "fp32")], tolerance=0.5)
    assert list(table["run"]) == ["fp8", "fp32"]
    assert table["matches"].iloc[1] and table["change"].iloc[1] == "+0.0%"


def test_lr_rules_table():
    umup = ws.lr_rules_table(tiny(scaling="u-mup", width=16, depth=2))
    assert np.isclose(umup.loc["blocks.0.mlp.fc.weight", "lr factor"], 16**-0.5 * 2**-0.5)
    assert umup.loc["head.weight", "lr factor"] == 1.0
    standard = ws.lr_rules_table(tiny())
    assert (standard["lr factor"] == 1.0).all()


def _sweep_table():
    rows = []
    for scaling, best in (("standard", {32: -4, 128: -8}), ("u-mup", {32: 0, 128: 0})):
        for width, b in best.items():
            for e in (-8, -6, -4, -2, 0):
                rows.append({"scaling": scaling, "width": width, "lr": 2.0**e, "status": "finished",
                             "final_val_loss": 2.0 + 0.01 * abs(e - b)})
    return pd.DataFrame(rows)


def test_transfer_table_and_best_lr_figure():
    table = ws.transfer_table(_sweep_table(), small=32, large=128)
    assert table.loc["standard", "best lr at width 32"] == "2^-4"
    assert table.loc["standard", "best lr at width 128"] == "2^-8"
    assert table.loc["standard", "gap"] == "+2.0%"
    assert table.loc["u-mup", "gap"] == "+0.0%"
    fig = ws.best_lr_figure(_sweep_table())
    assert [list(t.y) for t in fig.data] == [[-4, -8], [0, 0]]


def test_underflow_by_width_and_check():
    table = ws.underflow_by_width([16, 32], base=tiny(), steps=1)
    assert list(table.index) == [16, 32]
    assert ((table["gradient underflow"] >= 0) & (table["gradient underflow"] <= 1)).all()
    assert ws.check_underflow_width(24).message.startswith("give a power of two")


def test_checks():
    trained = ws.train_model(tiny(arch="lstm", steps=2))
    assert not ws.check_perplexity(trained, "short", "To be").solved
    check = ws.check_perplexity(trained, "To be, or not to be, that is", "To be, or not to be, that is")
    assert not check.solved and "not lower" in check.message
    run = trained.run
    assert ws.check_trains_like(run, run, arch="lstm").solved
    assert "format must be" in ws.check_trains_like(run, run, format="fp16").message
    factor = 16**-0.5 * 2**-0.5
    config = tiny(scaling="u-mup", width=16, depth=2)
    assert ws.check_lr_factor(factor, config, "blocks.0.mlp.fc.weight").solved
    assert not ws.check_lr_factor(1.0, config, "blocks.0.mlp.fc.weight").solved
    assert str(ws.Check(True, "x")) == "✓ solved: x"


def test_sweep_figure_caps_the_loss_axis():
    table = _sweep_table()
    table.loc[0, "final_val_loss"] = 180.0
    fig = ws.sweep_figure(table, ceiling=4.6)
    assert tuple(fig.layout.yaxis.range)[1] == 4.6
    assert "1 run(s) above 4.6 not shown" in fig.layout.title.text
    assert ws.sweep_figure(_sweep_table()).layout.yaxis.range is None


def test_op_scale_table_is_deterministic_whatever_the_global_rng():
    torch.manual_seed(1)
    a = ws.op_scale_table(width=32, tokens=256)
    torch.manual_seed(2)
    torch.rand(10)
    b = ws.op_scale_table(width=32, tokens=256)
    pd.testing.assert_frame_equal(a, b)
