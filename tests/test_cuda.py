"""On a CUDA GPU only (skipped elsewhere, so never in CI): the engine, real FP8, BF16 autocast, CUDA memory
metrics, MFU and the one-worker-per-GPU sweep, each for a few steps. Run on the GPU machine with
``python -m pytest -o addopts="" -p no:cacheprovider tests/test_cuda.py``."""

import pytest
import torch

from labkit.config import NumberFormat, RunConfig
from labkit.formats import quantise
from labkit.fp8 import Fp8Matmul, cast_to_fp8
from labkit.runs import RunStatus
from labkit.train import Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def cuda_config(**overrides) -> RunConfig:
    base = dict(width=64, depth=1, heads=2, seq_len=32, batch_size=8, steps=6, eval_every=6, eval_batches=1,
                device="cuda", corpus="pydoc", tokenizer="byte")
    base.update(overrides)
    return RunConfig(**base)


def test_scaled_mm_on_cuda_equals_the_cpu_product_of_the_same_fp8_values():
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(100, 72, generator=g), torch.randn(40, 72, generator=g)  # padded to 112×80 and 48×80
    kernel = Fp8Matmul()
    y = kernel.linear(x.cuda(), w.cuda()).cpu()
    reference = quantise(x, NumberFormat.FP8_E4M3).double() @ quantise(w, NumberFormat.FP8_E4M3).double().t()
    torch.testing.assert_close(y.double(), reference, rtol=1e-5, atol=1e-5)
    assert kernel.stats["scaled_mm"] == 1 and kernel.stats["fallback"] == 0, kernel.stats
    q, _ = cast_to_fp8(x.cuda(), NumberFormat.FP8_E4M3, pad_to=16)
    assert q.shape == (112, 80)


@pytest.mark.parametrize("fields", [{}, {"format": "bf16"}, {"format": "fp8-e4m3"},
                                    {"format": "fp8-e4m3", "fp8_backend": "real"},
                                    {"format": "fp8-e4m3", "fp8_backend": "real", "fp8_scaling": "amax"}])
@pytest.mark.parametrize("scaling", ["standard", "u-mup"])
def test_engine_trains_on_cuda(fields, scaling):
    run = Trainer(cuda_config(scaling=scaling, **fields)).train()
    assert run.status is RunStatus.FINISHED, run.error
    last = run.metrics.iloc[-1]
    assert last["mem_cuda_peak"] >= last["mem_cuda_allocated"] > 0 and last["mem_cuda_reserved"] > 0
    assert run.info["device"].startswith("cuda")
    if fields.get("format") == "bf16":
        assert run.info["precision"] == "bf16" and "fmt_values_fwd" not in run.metrics
    if fields.get("fp8_backend") == "real":
        assert run.info["fp8"]["scaled_mm"] > 0
    if run.info["peak_flops"]:
        assert 0 < last["mfu"] < 1


def test_sweep_with_one_worker_per_gpu(tmp_path):
    from labkit.sweep import Sweep

    configs = [cuda_config(seed=s, steps=3) for s in range(2)]
    table = Sweep(configs, name="gpu", root=tmp_path).run("gpu", progress=False)
    assert (table["status"] == "finished").all()
