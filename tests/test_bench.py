"""The benchmark's peer comparison with Graphcore's ``unit-scaling``: built at labkit's size, skipped with
a clear reason when it cannot be measured. (Timings themselves are printed by ``python -m labkit.bench``,
never asserted.)"""

from __future__ import annotations

import pytest
import torch

from labkit import bench, peer
from labkit.config import RunConfig

TINY = {"width": 32, "depth": 1, "heads": 2, "seq_len": 16, "batch_size": 2}


def test_peer_models_train_at_labkit_size() -> None:
    config = RunConfig(**TINY)
    steps, reason = bench._peer_steps(config, wanted=True)
    assert reason is None
    assert set(steps) == {"plain fp32", "u-mup fp32", "plain fp8 (simulate_format)", "u-mup fp8 (simulate_format)"}
    for name in ("plain fp32", "u-mup fp32"):  # the fp8 ones compile with TorchDynamo on first use: bench only
        steps[name]()


def test_plain_counterpart_mirrors_the_peer_decoder() -> None:
    import unit_scaling as uu

    ours, theirs = peer.PlainDecoder(32, 50, 2, 2), uu.TransformerDecoder(32, 50, 2, 2)
    assert sorted(p.shape for p in ours.parameters()) == sorted(p.shape for p in theirs.parameters())
    assert ours(torch.randint(0, 50, (2, 8))).shape == (2, 8, 50)


def test_peer_absent_or_not_comparable_gives_a_reason(monkeypatch) -> None:
    steps, reason = bench._peer_steps(RunConfig(arch="lstm", **TINY), wanted=True)
    assert steps == {} and "no LSTM" in reason
    assert bench._peer_steps(RunConfig(**TINY), wanted=False) == ({}, "not measured (--no-peer)")
    monkeypatch.setattr(bench, "peer_version", lambda: None)
    steps, reason = bench._peer_steps(RunConfig(**TINY), wanted=True)
    assert steps == {} and "not installed" in reason and "[dev]" in reason


def test_peer_version_is_none_without_the_library(monkeypatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_unit_scaling(name, *args, **kwargs):
        if name == "unit_scaling":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_unit_scaling)
    assert peer.peer_version() is None


def test_cpu_clock_ignores_time_the_thread_spends_off_the_cpu() -> None:
    import time

    def nap() -> None:
        time.sleep(0.02)  # what a step looks like while other processes hold the cores

    wall = bench.interleaved_step_times({"nap": nap}, steps=2, warmup=0)["nap"]
    cpu = bench.interleaved_step_times({"nap": nap}, steps=2, warmup=0, clock=time.thread_time)["nap"]
    assert min(wall) >= 0.02 and max(cpu) < 0.01


def test_profile_shows_where_a_variants_extra_time_goes() -> None:
    config = RunConfig(**TINY, scaling="unit")
    table = bench.profile_extra(config.replace(format="fp8-e4m3"), config, steps=2, rows=40)
    total, rows = table[0], {row["op"]: row for row in table[1:]}
    assert total["op"] == "total" and total["calls"] > total["reference_calls"]
    assert rows["Quantise"]["reference_calls"] == 0 and rows["Quantise"]["calls"] > 0  # the rounding nodes
    assert rows["Quantise"]["extra_ms"] == rows["Quantise"]["ms"] > 0
    extras = [row["extra_ms"] for row in table[1:]]
    assert extras == sorted(extras, reverse=True)


def test_profile_compares_each_variant_with_what_its_target_names() -> None:
    assert bench._reference_of("unit fp8") == "unit fp32" and bench._reference_of("u-mup fp8") == "u-mup fp32"
    assert bench._reference_of("standard fp8") == "standard fp32" == bench._reference_of("unit fp32")


def test_ratios_pair_the_steps_of_one_turn() -> None:
    """A slow spell that hits every contender in the same turns leaves the paired ratio exact; the ratio of the
    two medians is off when the spell covers different shares of each list's middle."""
    reference = [1.0, 1.0, 3.0, 3.0, 1.0]
    contender = [1.1, 1.1, 3.3, 3.3, 1.1]  # always 1.1× the reference, in every turn
    assert bench.paired_ratio(contender, reference) == pytest.approx(1.1)
    skewed = [1.1, 3.3, 3.3, 3.3, 1.1]  # 1.1× in the first turns, 3.3× in turn 2
    assert bench.paired_ratio(skewed, reference) == pytest.approx(1.1)
    assert bench.median_ms(skewed) / bench.median_ms(reference) == pytest.approx(3.3)
    with pytest.raises(ValueError):
        bench.paired_ratio([1.0], [1.0, 2.0])


def test_engine_comparison_times_a_bare_step_between_engine_steps(monkeypatch) -> None:
    """The bare steps (here a 30 ms nap) are timed apart from the engine's (a tiny model's, a few ms), in
    turns: a bare loop slower than the engine shows as a throughput ratio above 1."""
    import time

    naps: list[float] = []
    monkeypatch.setattr(bench, "bare_step", lambda config: lambda: naps.append(time.sleep(0.03)))
    result = bench.compare_engine(RunConfig(**TINY), steps=6, rounds=1)
    assert len(naps) == 7  # one bare step after each of the engine's 6 + 1 steps
    assert 30 <= result["bare_step_ms"] < 45 and result["engine_step_ms"] < 20
    assert result["throughput_ratio"] > 1.5
