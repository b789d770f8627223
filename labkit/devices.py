"""What the device a run trains on can do: native BF16 (autocast), CUDA memory, peak FLOP/s for MFU.

The lab simulates narrow formats on the CPU (:mod:`labkit.formats`), which has no fast BF16 arithmetic.
A CUDA GPU has it, so there BF16 is *real*: the forward pass runs under ``torch.autocast`` (matmuls in
BF16, weights and optimizer state in FP32, as mixed-precision training does) instead of being simulated.

Model FLOP utilisation (MFU) is the model's FLOPs per second divided by the device's peak. The peaks are
the dense (no sparsity) tensor-core figures of NVIDIA's datasheets, per precision; a device not in the
table gets no MFU rather than a guess.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from labkit.config import Fp8Backend, NumberFormat, RunConfig

#: Devices where BF16 is computed natively (autocast) rather than simulated. Tests add "cpu" to run the
#: same code path on the CPU (correct, but far slower than FP32 there).
REAL_BF16_DEVICES = frozenset({"cuda"})

#: Dense peak FLOP/s by device-name fragment (first match wins, so specific names come first) and
#: precision. Sources: NVIDIA H100 datasheet (H100 SXM: BF16 989 TFLOP/s, FP8 1979, FP32 67; H100 NVL:
#: 835 / 1671 / 60; H100 PCIe: 756 / 1513 / 51), H200 datasheet (same tensor cores as H100 SXM: 989 /
#: 1979 / 67), A100 datasheet (BF16 312, FP32 19.5, no FP8), L40S (362 / 733 / 91.6), L4 (121 / 242 /
#: 30.3). "fp32" is the non-tensor-core FP32 rate (PyTorch's default matmul precision does not use TF32).
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989e12, "fp8": 1979e12, "fp32": 67e12},
    "H100 NVL": {"bf16": 835e12, "fp8": 1671e12, "fp32": 60e12},
    "H100 PCIe": {"bf16": 756e12, "fp8": 1513e12, "fp32": 51e12},
    "H100": {"bf16": 989e12, "fp8": 1979e12, "fp32": 67e12},
    "A100": {"bf16": 312e12, "fp32": 19.5e12},
    "L40S": {"bf16": 362e12, "fp8": 733e12, "fp32": 91.6e12},
    "L4": {"bf16": 121e12, "fp8": 242e12, "fp32": 30.3e12},
}


def autocast_dtype(config: RunConfig, device: torch.device) -> torch.dtype | None:
    """``torch.bfloat16`` when the run's BF16 format is computed natively on ``device`` (autocast), else None."""
    bf16 = config.format is NumberFormat.BF16 and config.effective_grad_format is NumberFormat.BF16
    return torch.bfloat16 if bf16 and device.type in REAL_BF16_DEVICES else None


def autocast(config: RunConfig, device: torch.device) -> AbstractContextManager:
    """The context to run a forward pass in: ``torch.autocast`` for a native BF16 run, else a no-op."""
    dtype = autocast_dtype(config, device)
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def compute_precision(config: RunConfig, device: torch.device) -> str:
    """The precision the run's matmuls really execute in: ``fp8``, ``bf16`` or ``fp32`` (simulated formats)."""
    if config.fp8_backend is Fp8Backend.REAL:
        return "fp8"
    return "bf16" if autocast_dtype(config, device) is not None else "fp32"


def peak_flops(device: torch.device, precision: str) -> float | None:
    """Dense peak FLOP/s of a CUDA ``device`` in ``precision`` (see :data:`PEAK_FLOPS`); None if unknown."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, peaks in PEAK_FLOPS.items():
        if fragment in name:
            return peaks.get(precision)
    return None


def cuda_memory(device: torch.device) -> dict[str, int]:
    """``mem_cuda_allocated`` (tensors now), ``mem_cuda_reserved`` (held by the caching allocator) and
    ``mem_cuda_peak`` (most allocated since the run started), in bytes."""
    return {"mem_cuda_allocated": torch.cuda.memory_allocated(device),
            "mem_cuda_reserved": torch.cuda.memory_reserved(device),
            "mem_cuda_peak": torch.cuda.max_memory_allocated(device)}
