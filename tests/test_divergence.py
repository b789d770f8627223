"""The divergence rule (``labkit.divergence``) on made-up curves, and in the engine on runs measured in
``docs/divergence.md`` (standard Transformer at lr 0.5 fires at step 18; lr 2⁻²⁰ learns nothing)."""

from __future__ import annotations

import math

import pytest

from labkit.config import RunConfig
from labkit.divergence import DivergenceDetector, DivergenceRule, headroom
from labkit.runs import RunStatus
from labkit.train import Trainer

VOCAB = 70  # the Shakespeare character vocabulary: ln 70 = 4.248


def _first_firing(losses: list[float], rule: DivergenceRule | None = None) -> int | None:
    detector = DivergenceDetector(VOCAB, rule)
    for step, loss in enumerate(losses, start=1):
        if detector.update(step, loss) is not None:
            return step
    return None


def test_nan_diverges_at_once_and_names_the_step():
    detector = DivergenceDetector(VOCAB)
    assert detector.update(1, 4.3) is None
    assert detector.update(2, math.nan) == "loss became nan at step 2"


def test_a_loss_that_jumps_and_stays_up_fires_after_the_smoothing_and_the_patience():
    losses = [4.3] * 5 + [12.0] * 40
    # EMA(1/10) passes 4.3 + 1.5 on the first high step: 4.3 + 7.7 / 10 = 5.07 (no), then 5.76 (no), 6.39 (yes)
    # at step 8; ten steps above → step 17.
    assert _first_firing(losses) == 17
    assert _first_firing(losses, DivergenceRule(patience=1)) == 8


def test_healthy_curves_spikes_that_recover_and_plateaus_do_not_fire():
    falling = [4.3 * 0.99**i + 1.5 for i in range(300)]
    spike = [4.4] * 10 + [6.8] * 5 + [4.0] * 100  # like lr 2⁻² (rose 0.61 nats smoothed, then recovered)
    plateau = [4.25 + 0.01 * math.sin(i) for i in range(300)]
    for losses in (falling, spike, plateau):
        assert _first_firing(losses) is None
    assert headroom(spike, VOCAB)["max_rise"] < 1.5


def test_did_not_learn_is_a_flag_for_runs_that_end_at_the_uniform_guess():
    stuck, learned = DivergenceDetector(VOCAB), DivergenceDetector(VOCAB)
    for step in range(1, 200):
        stuck.update(step, 4.27)
        learned.update(step, 2.5)
    assert "no better than a uniform guess" in stuck.did_not_learn()
    assert learned.did_not_learn() is None
    short = DivergenceDetector(VOCAB)
    for step in range(1, 20):
        short.update(step, 4.27)
    assert short.did_not_learn() is None  # too short to judge


def test_rule_rejects_nonsense():
    with pytest.raises(ValueError, match="margin > 0"):
        DivergenceRule(margin=0)


@pytest.mark.slow
def test_engine_marks_the_lr_half_standard_transformer_diverged_with_step_and_reason():
    run = Trainer(RunConfig(lr=0.5)).train()  # measured: smoothed loss crosses start + 1.5 and fires at step 18
    assert run.status is RunStatus.DIVERGED
    assert run.info["divergence"]["step"] == run.last_step == 18
    assert "smoothed training loss" in run.info["divergence"]["reason"] and "lower the learning rate" in run.error


def test_engine_flags_a_tiny_learning_rate_as_did_not_learn_not_diverged(make_config):
    run = Trainer(make_config(lr=2.0**-20, steps=60)).train()
    assert run.status is RunStatus.FINISHED and "uniform guess" in run.info["did_not_learn"]
    healthy = Trainer(make_config(steps=60)).train()
    assert healthy.status is RunStatus.FINISHED and "did_not_learn" not in healthy.info
