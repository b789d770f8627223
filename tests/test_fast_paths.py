"""The fast unit-scaled ops (fused autograd nodes, the LSTM in PyTorch's fused kernel) compute the same
numbers as the literal reference ops (:mod:`labkit.scaling.reference`): forward output, loss and every
parameter's gradient, for unit and u-μP, Transformer and LSTM."""

from __future__ import annotations

import functools

import pytest
import torch

from labkit.config import RunConfig
from labkit.models import build_model
from labkit.models.layers import Ops
from labkit.scaling import get_method, unit
from labkit.scaling import ops as U
from labkit.scaling import reference as R
from labkit.scaling.reference import reference_ops

VOCAB = 37
# float64: the two paths are the same function (differences are rounding, ~1e-15); float32: what runs.
TOLERANCES = {torch.float64: {"rtol": 1e-10, "atol": 1e-10}, torch.float32: {"rtol": 1e-4, "atol": 2e-5}}


def _forward_backward(config: RunConfig, ops: Ops, dtype: torch.dtype) -> tuple[torch.Tensor, dict]:
    torch.manual_seed(config.seed)
    model = build_model(config.model_config(VOCAB), ops)
    get_method(config.scaling).prepare(model)
    model.to(dtype)
    ids = torch.randint(0, VOCAB, (3, config.seq_len), generator=torch.Generator().manual_seed(1))
    logits = model(ids)
    loss = ops.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    return torch.cat([logits.detach().flatten(), loss.detach().reshape(1)]), dict(model.named_parameters())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("scaling", ["unit", "u-mup"])
@pytest.mark.parametrize("arch", ["transformer", "lstm"])
def test_fast_ops_equal_reference_ops(arch: str, scaling: str, dtype: torch.dtype) -> None:
    config = RunConfig(arch=arch, scaling=scaling, width=32, depth=2, heads=2, seq_len=12)
    fast_ops = get_method(scaling).ops()
    out, params = _forward_backward(config, fast_ops, dtype)
    ref_out, ref_params = _forward_backward(config, reference_ops(fast_ops), dtype)
    tol = TOLERANCES[dtype]
    torch.testing.assert_close(out, ref_out, **tol)
    assert params.keys() == ref_params.keys()
    for name, p in params.items():
        assert p.grad is not None and ref_params[name].grad is not None, name
        torch.testing.assert_close(p.grad, ref_params[name].grad, **tol, msg=lambda m, n=name: f"{n}: {m}")


def test_reference_lstm_is_the_python_loop() -> None:
    """The reference table really swaps the loop in (and FLOP counting sees it as written out)."""
    from labkit.models.layers import runs_fused_kernel

    ops = get_method("unit").ops()
    assert runs_fused_kernel(ops.lstm) and not runs_fused_kernel(reference_ops(ops).lstm)


def _grads(fn, *inputs: torch.Tensor) -> list[torch.Tensor]:
    """Output and the gradient of every input for a fixed random upstream gradient (float64)."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    out.backward(torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(7)))
    return [out.detach(), *(leaf.grad for leaf in leaves)]


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("constraint", list(U.Constraint))
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("layout", ["3d", "2d", "transposed"])
def test_fast_linear_equals_literal_rules(constraint: U.Constraint, bias: bool, layout: str) -> None:
    """The one-node linear (scales as BLAS alpha/beta) against the literal scale_fwd/scale_bwd version:
    output and gradients of x, weight and bias, for each constraint, with and without bias, and for
    inputs that are 2-d, 3-d and non-contiguous."""
    x = {"3d": _randn(3, 5, 8, seed=1), "2d": _randn(15, 8, seed=1),
         "transposed": _randn(3, 8, 5, seed=1).transpose(1, 2)}[layout]
    w, b = _randn(6, 8, seed=2), _randn(6, seed=3)
    for fast, literal in [(U.linear, R.linear),
                          (U.linear_readout, functools.partial(R.linear, output_power=1.0))]:
        if bias:
            got = _grads(lambda x, w, b, f=fast: f(x, w, b, constraint), x, w, b)
            want = _grads(lambda x, w, b, f=literal: f(x, w, b, constraint), x, w, b)
        else:
            got = _grads(lambda x, w, f=fast: f(x, w, None, constraint), x, w)
            want = _grads(lambda x, w, f=literal: f(x, w, None, constraint), x, w)
        for g, r in zip(got, want, strict=True):
            torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)


def test_fast_layer_norm_and_add_equal_literal_rules() -> None:
    x, w, b = _randn(4, 5, 8, seed=1), _randn(8, seed=2), _randn(8, seed=3)
    got = _grads(lambda x, w, b: U.layer_norm(x, 8, w, b), x, w, b)
    want = _grads(lambda x, w, b: R.layer_norm(x, 8, w, b), x, w, b)
    for g, r in zip(got, want, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)
    pos = _randn(5, 8, seed=4)
    for a, c in [(x, pos), (pos, x), (x, x * 2)]:  # b broadcast over a, a over b, no broadcast
        got, want = _grads(unit.add, a, c), _grads(R.add, a, c)
        for g, r in zip(got, want, strict=True):
            torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)
    # The rule, not just agreement: a broadcast input's gradient is the sum over the batch × sqrt(5·8 / 4·5·8).
    grads = _grads(unit.add, x, pos)
    upstream = torch.randn((4, 5, 8), dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(grads[2], upstream.sum(0) * 4**-0.5)
    torch.testing.assert_close(grads[1], upstream)
