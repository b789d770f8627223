"""The fast unit-scaled ops (fused autograd nodes, the LSTM in PyTorch's fused kernel) compute the same
numbers as the literal reference ops (:mod:`labkit.scaling.reference`): forward output, loss and every
parameter's gradient, for unit and u-μP, Transformer and LSTM."""

from __future__ import annotations

import pytest
import torch

from labkit.config import RunConfig
from labkit.models import build_model
from labkit.models.layers import Ops
from labkit.scaling import get_method
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
