import pytest

from labkit.config import Arch, ConfigError, NumberFormat, RunConfig, Scaling


def test_strings_become_enums():
    config = RunConfig(arch="LSTM", scaling="seed-l2-once", format="fp8-e4m3")
    assert config.arch is Arch.LSTM
    assert config.scaling is Scaling.SEED_L2_ONCE
    assert config.effective_grad_format is NumberFormat.FP8_E5M2  # the FP8 recipe's default


def test_explicit_grad_format_wins():
    assert RunConfig(format="fp8-e4m3", grad_format="fp16").effective_grad_format is NumberFormat.FP16


@pytest.mark.parametrize(("changes", "message"), [
    ({"scaling": "unit-scale"}, "choose one of: standard, seed-l2-once"),
    ({"lr": 0.0}, "lr must be a positive"),
    ({"lr": float("nan")}, "lr must be a positive"),
    ({"seq_len": 0}, "seq_len must be a positive integer"),
    ({"width": -8}, "width must be a positive integer"),
    ({"width": 100, "heads": 3}, "heads must be positive and divide width"),
    ({"val_fraction": 1.0}, "val_fraction"),
    ({"device": "tpu"}, "device must be one of"),
])
def test_bad_values_name_the_field_and_the_fix(changes, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig(**changes)


def test_round_trip_through_dict():
    config = RunConfig(arch="mlp", lr=2**-7, format="bf16", grad_clip=1.0)
    assert RunConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="unknown config field"):
        RunConfig.from_dict({**config.to_dict(), "widht": 3})


def test_diff_lists_changed_fields():
    a, b = RunConfig(), RunConfig(scaling="unit", width=256)
    assert a.diff(b) == {"scaling": ("standard", "unit"), "width": (128, 256)}
