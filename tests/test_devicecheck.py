"""The GPU path, tested on the CPU: the device check's refusal and smoke mode, BF16 autocast, CUDA
memory metrics, MFU's peak table and the one-worker-per-GPU sweep executor."""

import subprocess
import sys

import pytest
import torch

import labkit.devices as devices
from labkit import devicecheck
from labkit.config import ConfigError, RunConfig
from labkit.sweep.executors import LocalExecutor, make_executor
from labkit.train import Trainer


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_devicecheck_refuses_without_cuda():
    done = subprocess.run([sys.executable, "-m", "labkit.devicecheck"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "needs a CUDA GPU" in done.stderr and "--cpu-smoke" in done.stderr
    assert "Speed" not in done.stdout  # nothing measured, nothing pretended


def test_devicecheck_cpu_smoke_runs_every_section(capsys):
    assert devicecheck.main(["--cpu-smoke"]) == 0
    out = capsys.readouterr().out
    for title in ("## Speed", "## Real vs simulated FP8", "## LR transfer", "## Best log2 learning rate"):
        assert title in out
    for scaling in ("standard", "unit", "u-mup"):
        assert scaling in out


def test_devicecheck_agreement_table_on_the_cpu():
    table = devicecheck.agreement_table(devicecheck.SMOKE)
    diff = table.set_index("run")["max |Δ loss|"]
    assert diff["standard real"] == 0.0  # scale 1: the real products are the simulated ones
    assert diff["unit real"] < 0.05  # measured 0.008 (6 steps, width 32)
    assert len(table) == 4 and table["grad underflow %"].between(0, 100).all()


def test_best_lrs_picks_the_lowest_loss_per_width():
    import pandas as pd

    table = pd.DataFrame({"scaling": ["u-mup"] * 4, "width": [256, 256, 512, 512], "log2 lr": [-2, 0, -2, 0],
                          "loss": [3.0, 2.5, 2.4, float("inf")]})
    assert devicecheck.best_lrs(table).loc["u-mup"].tolist() == [0, -2]


@pytest.mark.parametrize("scaling", ["standard", "unit", "u-mup"])
def test_bf16_autocast_path_trains_where_bf16_is_native(monkeypatch, make_config, scaling):
    """On CUDA, BF16 runs under autocast instead of being simulated. The same code runs on the CPU when
    the CPU is declared native (slow there, so only in tests); the unit-scaled linear's backward then
    meets BF16 gradients and FP32 weights."""
    monkeypatch.setattr(devices, "REAL_BF16_DEVICES", frozenset({"cuda", "cpu"}))
    trainer = Trainer(make_config(scaling=scaling, format="bf16", steps=8))
    run = trainer.train()
    assert run.info["precision"] == "bf16"
    assert not any(c.startswith("fmt_") for c in run.metrics)  # nothing simulated, nothing counted
    assert all(p.grad.dtype == torch.float32 for p in trainer.model.parameters())  # master weights stay FP32
    losses = run.metrics["train_loss"]
    assert losses.iloc[-1] < losses.iloc[0]


def test_bf16_stays_simulated_on_the_cpu(make_config):
    run = Trainer(make_config(format="bf16", steps=2)).train()
    assert run.info["precision"] == "fp32" and "fmt_values_fwd" in run.metrics


def test_peak_flops_table(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    cuda = torch.device("cuda")
    assert devices.peak_flops(cuda, "bf16") == 989e12 and devices.peak_flops(cuda, "fp8") == 1979e12
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 PCIe")
    assert devices.peak_flops(cuda, "bf16") == 756e12  # the PCIe card, not the SXM one
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    assert devices.peak_flops(cuda, "fp8") is None  # no FP8 tensor cores: no MFU rather than a guess
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some Future GPU")
    assert devices.peak_flops(cuda, "bf16") is None
    assert devices.peak_flops(torch.device("cpu"), "fp32") is None


def test_compute_precision():
    cpu = torch.device("cpu")
    assert devices.compute_precision(RunConfig(format="fp8-e4m3", fp8_backend="real"), cpu) == "fp8"
    assert devices.compute_precision(RunConfig(format="bf16"), cpu) == "fp32"
    assert devices.compute_precision(RunConfig(format="bf16"), torch.device("cuda")) == "bf16"


def test_cuda_memory_reports_the_three_agreed_metrics(monkeypatch):
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 10)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 20)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 15)
    assert devices.cuda_memory(torch.device("cuda")) == {
        "mem_cuda_allocated": 10, "mem_cuda_reserved": 20, "mem_cuda_peak": 15}


def test_gpu_executor_has_one_worker_per_gpu(monkeypatch):
    executor = LocalExecutor(gpus=[0, 1, 2])
    assert executor.workers == 3 and [executor._gpu_of(i) for i in range(4)] == [0, 1, 2, 0]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert make_executor("gpu").workers == 2
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(ConfigError, match="one worker per CUDA GPU"):
        make_executor("gpu")


def test_devicecheck_reports_a_failing_run_and_goes_on(monkeypatch, capsys):
    class FailingFp8(Trainer):
        def _train(self):
            if self.config.fp8_backend.value == "real":
                raise RuntimeError("no FP8 here")
            return super()._train()

    monkeypatch.setattr(devicecheck, "Trainer", FailingFp8)
    speed = devicecheck.speed_table(devicecheck.SMOKE)
    failed = speed[speed["format"] == "fp8"]
    assert len(failed) == 3 and failed["runs in"].str.contains("no FP8 here").all()
    assert speed[speed["format"] == "fp32"]["step ms"].gt(0).all()
    agreement = devicecheck.agreement_table(devicecheck.SMOKE)
    assert agreement["failed"].notna().sum() == 4  # every pair has a real run
    assert "a run failed" in capsys.readouterr().err
