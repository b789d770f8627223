"""The coordinate check must pass a correct parametrisation and flag a wrong one."""

import math

import numpy as np
import pytest
import torch

from labkit.config import RunConfig
from labkit.coord import UpdateMeter, coord_check, embedding_lr_times_width, flatness

SMALL = dict(widths=(64, 128, 256), steps=3, seeds=2, batch_size=4, seq_len=32)


@pytest.fixture(scope="module")
def umup():
    return coord_check("u-mup", **SMALL)


def test_umup_is_flat_in_width(umup):
    assert umup.passed, umup.flagged  # measured: worst |slope| 0.11-0.18 here, tolerance 0.25
    assert set(umup.data["width"]) == {64, 128, 256} and set(umup.data["step"]) == {1, 2, 3}
    assert (umup.data["act_rms"] > 0).all()


def test_standard_parametrisation_is_flagged():
    check = coord_check("standard", **SMALL)
    assert not check.passed
    assert check.worst_slope > 0.5  # hidden outputs grow with width after one Adam step


def test_a_planted_wrong_rule_is_flagged(umup):
    """u-μP with the embedding LR multiplied by the width: the check must catch it, at the embeddings."""
    check = coord_check("u-mup", lr_tweak=embedding_lr_times_width, **SMALL)
    assert not check.passed
    flagged = set(check.flagged["layer"])
    assert {"token_embedding", "position_embedding"} <= flagged, check.flagged
    embeddings = check.slopes[check.slopes["layer"].str.endswith("embedding")]
    assert (embeddings["slope"] > 0.4).all()  # measured ≈ 0.49: RMS grows as √width
    correct = umup.slopes[umup.slopes["layer"].str.endswith("embedding")]
    assert (correct["slope"].abs() < 0.1).all()


def test_relative_updates_are_recorded_for_every_weight(umup):
    linear = umup.data[umup.data["layer"].str.endswith(("qkv", "fc", "head", "embedding"))]
    assert linear["rel_update"].between(1e-6, 10).all()
    blocks = umup.data[umup.data["layer"].str.fullmatch(r"blocks\.\d")]
    assert blocks["rel_update"].isna().all()  # a block has no weight of its own


def test_flatness_slope_is_the_log_log_fit():
    import pandas as pd

    rows = [{"layer": "a", "step": 2, "width": w, "act_rms": w**0.5} for w in (64, 128, 256)]
    rows += [{"layer": "b", "step": 2, "width": w, "act_rms": 3.0} for w in (64, 128, 256)]
    slopes = flatness(pd.DataFrame(rows), tolerance=0.25).set_index("layer")
    assert slopes.loc["a", "slope"] == pytest.approx(0.5) and slopes.loc["a", "flagged"]
    assert slopes.loc["b", "slope"] == pytest.approx(0.0, abs=1e-12) and not slopes.loc["b", "flagged"]


def test_figure_has_a_panel_per_step_and_a_line_per_layer(umup):
    fig = umup.figure()
    layers = umup.data["layer"].nunique()
    assert len(fig.data) == layers * 3 * 2  # layers × steps × (activation, update)
    assert [a.text for a in fig.layout.annotations][:3] == ["step 1", "step 2", "step 3"]


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="steps"):
        coord_check("u-mup", widths=(64, 128), steps=1)
    with pytest.raises(ValueError, match="two widths"):
        coord_check("u-mup", widths=(64,), steps=3)


def test_update_meter_reports_effective_lr_and_relative_update():
    from labkit.build import build_for_run
    from labkit.train import make_optimizer

    config = RunConfig(scaling="u-mup", width=32, heads=2, seq_len=16)
    model, ops, method = build_for_run(config, vocab_size=20)
    optimizer = make_optimizer(config, method.param_groups(model, 0.5, config.optimizer))
    meter = UpdateMeter(optimizer)
    ids = torch.randint(0, 20, (2, 16))
    ops.cross_entropy(model(ids).flatten(0, 1), ids.flatten()).backward()
    name = "weight 32 (blocks)"  # one optimizer group per u-μP rule (make_optimizer merges them)
    group = next(g for g in optimizer.param_groups if g["name"] == name)
    assert "blocks.0.mlp.fc.weight" in group["members"] and len(group["params"]) == 6  # qkv, proj, fc × 2 blocks
    before = [p.detach().clone() for p in group["params"]]
    meter.before_step()
    optimizer.step()
    record = meter.after_step()
    assert record[f"eff_lr/{name}"] == pytest.approx(0.5 * 32**-0.5 * 2**-0.5)
    delta = sum(float((p.detach() - b).norm()) ** 2 for p, b in zip(group["params"], before, strict=True))
    expected = (delta / sum(float(b.norm()) ** 2 for b in before)) ** 0.5
    assert record[f"rel_update/{name}"] == pytest.approx(expected, rel=1e-5)
    assert math.isclose(record["eff_lr/embedding 32"], 0.5 * 32**-0.5)


@pytest.mark.parametrize("scaling", ["standard", "u-mup"])
def test_engine_records_effective_lr_and_relative_update_per_group(scaling):
    from labkit.train import Trainer

    config = RunConfig(scaling=scaling, width=32, depth=1, heads=2, seq_len=16, batch_size=4, steps=6,
                       log_every=2, eval_every=6, eval_batches=1, lr=0.01, warmup_steps=4)
    trainer = Trainer(config)
    metrics = trainer.train().metrics
    groups = trainer.optimizer.param_groups
    eff = [c for c in metrics if c.startswith("eff_lr/")]
    rel = [c for c in metrics if c.startswith("rel_update/")]
    assert len(eff) == len(rel) == len(groups)
    if scaling == "standard":
        assert eff == ["eff_lr/all"]
        assert metrics["eff_lr/all"].tolist() == pytest.approx(metrics["lr"].tolist())  # warm-up then cosine
    else:
        factor = 32**-0.5 * 1**-0.5  # blocks.0.mlp.fc: fan_in^-1/2 × depth^-1/2 (depth 1)
        assert metrics["eff_lr/weight 32 (blocks)"].tolist() == pytest.approx((metrics["lr"] * factor).tolist())
    assert (metrics[rel] > 0).all().all() and np.isfinite(metrics[rel]).all().all()
    matrices = [c for c in rel if c.split("/")[1].split()[0] in ("weight", "embedding", "readout", "all")]
    assert len(matrices) == (1 if scaling == "standard" else 4)  # embeddings, weights (fan-in 32, 128), readout
    assert (metrics[matrices] < 0.5).all().all()  # (biases start at 0 under unit scaling: no bound on theirs)


def test_cli_coord_check_json(capsys):
    import json

    from labkit.__main__ import main

    code = main(["coord-check", "--scaling", "standard", "--width", "32,64", "--steps", "2", "--seeds", "1",
                 "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["scaling"] == "standard" and code == (0 if out["passed"] else 1)
    assert {"layer", "step", "slope", "flagged"} <= set(out["slopes"][0])
