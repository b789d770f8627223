"""The scale properties each method promises, measured at initialisation."""

import pytest
import torch
from torch.nn.utils.parametrizations import weight_norm

from labkit.build import build_for_run
from labkit.config import Arch, Optimizer, RunConfig, Scaling
from labkit.instrument import flops_per_step, used_norms
from labkit.models import count_parameters
from labkit.scales import initial_scales
from labkit.scaling import get_method
from labkit.scaling.seed_l2 import UnitNorm
from labkit.scaling.umup import residual_tau
from labkit.train import Trainer

WIDTHS = [64, 128, 256, 512]
LINEARS = r"(?:qkv|proj|fc|head|hidden\.\d+)$"


def linear_rms(scaling: str, arch: str, width: int):
    table = initial_scales(RunConfig(scaling=scaling, arch=arch, width=width, batch_size=8))
    is_linear = table["layer"].str.contains(LINEARS)
    return table[is_linear & (table["kind"] != "weight")]


@pytest.mark.parametrize("arch", ["transformer", "mlp"])
@pytest.mark.parametrize("width", WIDTHS)
def test_unit_scaling_keeps_every_linear_layer_near_unit_rms(arch, width):
    rows = linear_rms("unit", arch, width)
    assert len(rows) >= 4
    bad = rows[(rows["rms"] < 0.5) | (rows["rms"] > 2.0)]
    assert bad.empty, bad


def test_unit_scaled_lstm_near_unit_rms_at_every_width():
    for width in WIDTHS:
        table = initial_scales(RunConfig(scaling="unit", arch="lstm", width=width, batch_size=4, seq_len=32))
        values = table[table["kind"] != "weight"]["rms"]
        assert values.between(0.5, 2.0).all(), (width, table)


def test_standard_gradients_drift_with_width():
    """Under PyTorch's defaults the gradient at the hidden layers shrinks as width grows (≈ width^-1/2)."""
    ratio = []
    for width in (64, 512):
        rows = linear_rms("standard", "transformer", width)
        grads = rows[(rows["kind"] == "gradient") & rows["layer"].str.startswith("blocks")]
        ratio.append(grads["rms"].median())
    assert ratio[0] / ratio[1] > 2.0  # measured 2.8 (√8 = 2.83)
    # and the values are far below unit scale: the FP16/FP8 underflow problem
    assert ratio[1] < 1e-3


def _used_weight_norms(scaling: str, arch: str):
    model, _, _ = build_for_run(RunConfig(scaling=scaling, arch=arch), vocab_size=70)
    return model, used_norms(model)


@pytest.mark.parametrize("arch", list(Arch))
def test_seed_l2_always_uses_unit_norm_tensors(arch):
    model, norms = _used_weight_norms("seed-l2-always", arch)
    weights = {k: v for k, v in norms.items() if k.endswith("weight") or "weight_" in k}
    assert weights and all(abs(v - 1) < 1e-5 for v in weights.values()), weights


@pytest.mark.parametrize("arch", list(Arch))
def test_seed_l2_once_divides_every_nonzero_tensor_by_its_norm(arch):
    model, norms = _used_weight_norms("seed-l2-once", arch)
    nonzero = {k: v for k, v in norms.items() if v > 0}
    assert all(abs(v - 1) < 1e-5 for v in nonzero.values())
    zero = [k for k, v in norms.items() if v == 0]
    assert all("ln" in k and k.endswith("bias") for k in zero)  # LayerNorm biases start at 0: left alone


def test_seed_l2_always_stays_unit_norm_during_training():
    trainer = Trainer(RunConfig(scaling="seed-l2-always", width=32, heads=2, seq_len=32, steps=10))
    trainer.train()
    norms = used_norms(trainer.model)
    assert all(abs(v - 1) < 1e-5 for k, v in norms.items() if k.endswith("weight") and "ln" not in k)
    assert trainer.run.metrics["param_norm"].iloc[-1] != pytest.approx(trainer.run.metrics["param_norm"].iloc[0])


@pytest.mark.parametrize("arch", list(Arch))
def test_seed_methods_change_no_count_flop_or_byte(arch):
    """The seed's claim of saved compute and memory, tested: parameters, FLOPs and bytes are unchanged."""
    figures = {}
    ids = torch.randint(0, 70, (4, 32))
    for scaling in ("standard", "seed-l2-once", "seed-l2-always"):
        model, ops, _ = build_for_run(RunConfig(scaling=scaling, arch=arch, seq_len=32), vocab_size=70)
        stored = sum(p.numel() * p.element_size() for p in model.parameters())
        figures[scaling] = (count_parameters(model), stored)
        flops = flops_per_step(model, ids, ops.cross_entropy)
        figures[scaling] += (flops,)
    standard = figures["standard"]
    assert figures["seed-l2-once"] == standard
    params, stored, flops = figures["seed-l2-always"]
    assert (params, stored) == standard[:2]
    # computing w/||w|| in every forward pass adds a few elementwise FLOPs: none of the matmuls change
    assert flops == pytest.approx(standard[2], rel=0.01)


def test_per_row_unit_norm_matches_weight_norm_with_unit_gain():
    torch.manual_seed(0)
    linear = torch.nn.Linear(16, 8)
    reference = weight_norm(torch.nn.Linear(16, 8), dim=0)
    reference.load_state_dict({"bias": linear.bias, "parametrizations.weight.original0": torch.ones(8, 1),
                               "parametrizations.weight.original1": linear.weight})
    torch.testing.assert_close(UnitNorm(per_row=True)(linear.weight), reference.weight)
    assert torch.linalg.vector_norm(UnitNorm()(linear.weight)).item() == pytest.approx(1.0)


def graphcore_transformer(vocab: int, width: int, depth: int, seq_len: int) -> torch.nn.Module:
    """labkit's Transformer rebuilt from Graphcore's modules: same parameter names, shapes and order."""
    import unit_scaling as uu

    def block() -> torch.nn.Module:
        b = torch.nn.Module()
        b.ln1 = uu.LayerNorm(width, elementwise_affine=True)
        b.attn = torch.nn.Module()
        b.attn.qkv, b.attn.proj = uu.Linear(width, 3 * width, bias=True), uu.Linear(width, width, bias=True)
        b.ln2 = uu.LayerNorm(width, elementwise_affine=True)
        b.mlp = torch.nn.Module()
        b.mlp.fc, b.mlp.proj = uu.Linear(width, 4 * width, bias=True), uu.Linear(4 * width, width, bias=True)
        return b

    model = torch.nn.Module()
    model.token_embedding = uu.Embedding(vocab, width)
    model.position_embedding = uu.Embedding(seq_len, width)
    model.blocks = uu.DepthModuleList(block() for _ in range(depth))
    model.ln_f = uu.LayerNorm(width, elementwise_affine=True)
    model.head = uu.LinearReadout(width, vocab, bias=True)
    return model


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
@pytest.mark.parametrize("depth", [1, 3])
@pytest.mark.parametrize("width", [64, 128, 256])
def test_umup_lr_factors_match_graphcore_for_every_parameter(width, depth, optimizer):
    from unit_scaling.optim import lr_scale_func_adam, lr_scale_func_sgd, scaled_parameters

    config = RunConfig(scaling="u-mup", width=width, depth=depth, heads=4, seq_len=32, optimizer=optimizer)
    model, _, method = build_for_run(config, vocab_size=70)
    ours = {g["name"]: g["lr_scale"] for g in method.param_groups(model, 1.0, config.optimizer)}
    theirs_model = graphcore_transformer(70, width, depth, 32)
    # labkit's readout is unconstrained, like LinearReadout's default: Graphcore's SGD rule for that case.
    rule = lr_scale_func_adam if optimizer == "adamw" else lr_scale_func_sgd(readout_constraint=None)
    groups = scaled_parameters(theirs_model.parameters(), rule, lr=1.0)
    theirs = {name: g["lr"] for (name, _), g in zip(theirs_model.named_parameters(), groups, strict=True)}
    assert list(ours) == list(theirs)
    for name in theirs:
        assert ours[name] == pytest.approx(theirs[name], rel=1e-12), name
    assert ours["token_embedding.weight"] == pytest.approx(width**-0.5)  # the rule the issue was about


@pytest.mark.parametrize("width", [64, 256])
def test_umup_sgd_factors_for_a_constrained_readout_match_graphcore(width):
    from unit_scaling.optim import lr_scale_func_sgd

    from labkit.scaling.ops import Constraint
    from labkit.scaling.umup import lr_scale

    model, _, _ = build_for_run(RunConfig(scaling="u-mup", width=width, depth=2), vocab_size=70)
    theirs_model = graphcore_transformer(70, width, 2, RunConfig().seq_len)
    rule = lr_scale_func_sgd(readout_constraint="to_output_scale")
    for (name, ours), (_, theirs) in zip(model.named_parameters(), theirs_model.named_parameters(), strict=True):
        scale, _ = lr_scale(ours, Optimizer.SGD, Constraint.TO_OUTPUT_SCALE)
        assert scale == pytest.approx(rule(theirs), rel=1e-12), name


def test_umup_rules_read_tags_not_names():
    """A model labkit did not write: tagged by hand, its factors follow the tags whatever its names."""
    from labkit.models.roles import Role, tag, tag_residual_depth

    model = torch.nn.Sequential(torch.nn.Embedding(50, 32), torch.nn.Linear(32, 64), torch.nn.Linear(64, 50))
    tag(model[0].weight, Role.EMBEDDING)
    tag(model[1].weight, Role.WEIGHT), tag(model[1].bias, Role.BIAS)
    tag(model[2].weight, Role.WEIGHT), tag(model[2].bias, Role.BIAS)  # not the readout, though it is last
    tag_residual_depth(model[1], 4)
    groups = {g["name"]: g["lr_scale"] for g in get_method("u-mup").param_groups(model, 1.0, Optimizer.ADAMW)}
    assert groups == pytest.approx({"0.weight": 32**-0.5, "1.weight": 32**-0.5 * 4**-0.5, "1.bias": 4**-0.5,
                                    "2.weight": 64**-0.5, "2.bias": 1.0})
    untagged = torch.nn.Linear(3, 3)
    with pytest.raises(ValueError, match="no role tag"):
        get_method("u-mup").param_groups(untagged, 1.0, Optimizer.ADAMW)


def test_umup_residual_rule_matches_graphcore():
    from unit_scaling.core.functional import transformer_residual_scaling_rule

    theirs = transformer_residual_scaling_rule()
    for layers in (2, 4, 8):
        for index in range(layers):
            assert residual_tau(index, layers) == pytest.approx(theirs(index, layers))


@pytest.mark.parametrize("scaling", list(Scaling))
def test_every_method_has_a_default_lr_per_optimizer(scaling):
    method = get_method(scaling)
    assert set(method.default_lr) == {"sgd", "adamw"}
    assert method.name is scaling
