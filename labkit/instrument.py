"""Cheap measurements taken every step: parameter and gradient norms, memory, FLOPs.

Everything here runs inside the training loop, so each measurement is one fused call or a sum over a
list computed without Python-side tensor reads: ``torch._foreach_norm`` for all norms at once and a
single ``.tolist()`` to bring them to Python; byte counts from ``numel × bytes per value``.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Mapping

import psutil
import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from labkit.devices import cuda_memory
from labkit.models.layers import LSTM, runs_fused_kernel

_PROCESS = psutil.Process(os.getpid())


def layer_of(param_name: str) -> str:
    """The layer a parameter belongs to: its name without the last part (``blocks.0.attn.qkv.weight`` ->
    ``blocks.0.attn.qkv``); parametrised tensors (``...parametrizations.weight.original``) map to the
    module that owns them."""
    name = param_name.replace(".parametrizations.", ".").removesuffix(".original")
    return name.rsplit(".", 1)[0] if "." in name else name


def clean_name(param_name: str) -> str:
    """A parameter's name as the user knows it, without parametrisation plumbing."""
    return param_name.replace(".parametrizations.", ".").removesuffix(".original")


class NormMeter:
    """L2 norms of every parameter tensor and of the whole gradient, in one fused call.

    ``measure()`` returns ``{"param_norm": global, "grad_norm": global, "norm/<name>": per tensor}``.
    The norms are of the stored tensors (for a parametrised weight, the free tensor the optimizer
    updates); ``used_norms`` gives the norms of the tensors the forward pass actually uses.
    """

    def __init__(self, model: nn.Module) -> None:
        named = [(clean_name(n), p) for n, p in model.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.keys = [f"norm/{n}" for n in self.names]

    def measure(self) -> dict[str, float]:
        grads = [p.grad for p in self.params if p.grad is not None]
        norms = torch._foreach_norm(self.params)
        grad_norms = torch._foreach_norm(grads) if grads else []
        values = torch.stack([*norms, *grad_norms]).double().tolist()
        per_param = values[: len(norms)]
        record = dict(zip(self.keys, per_param, strict=True))
        record["param_norm"] = math.sqrt(sum(v * v for v in per_param))
        record["grad_norm"] = math.sqrt(sum(v * v for v in values[len(norms):])) if grads else math.nan
        return record


@torch.no_grad()
def used_norms(model: nn.Module) -> dict[str, float]:
    """Norm of each weight as the forward pass sees it (through parametrisations such as w/||w||)."""
    result = {}
    for module_name, module in model.named_modules():
        names = [n for n, _ in module.named_parameters(recurse=False)] + list(getattr(module, "parametrizations", {}))
        for name in names:
            result[f"{module_name}.{name}".lstrip(".")] = float(torch.linalg.vector_norm(getattr(module, name)))
    return {k: v for k, v in result.items() if ".parametrizations." not in k}


class ActivationMeter:
    """Bytes of the tensors autograd saves for the backward pass, counted as they are saved.

    Used as a context manager around the forward pass. Each storage is counted once (views share
    storage) and parameters are excluded (they are counted as parameters). ``bytes_per_value``
    overrides the element size, to count activations as a simulated number format would store them.
    ``measured``: whether a forward pass has been tracked yet (the trainer tracks one only when it needs
    a new figure: the hooks cost ~2 % of a small model's step, and the figure is the same at every
    training step, whose shapes do not change).
    """

    def __init__(self, model: nn.Module, bytes_per_value: float | None = None) -> None:
        self.bytes_per_value = bytes_per_value
        self._param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self._seen: dict[int, int] = {}
        self.measured = False

    def _pack(self, t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in self._param_ptrs and ptr not in self._seen:
            size = storage.nbytes()
            if self.bytes_per_value is not None and t.is_floating_point():
                size = int(size // t.element_size() * self.bytes_per_value)
            self._seen[ptr] = size
        return t

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        self._seen = {}
        with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t):
            yield
        self.measured = True

    @property
    def bytes(self) -> int:
        return sum(self._seen.values())


def tensor_bytes(tensors: list[Tensor], bytes_per_value: float | None = None) -> int:
    """Sum of ``numel × element size`` (or × ``bytes_per_value`` when given)."""
    if bytes_per_value is None:
        return sum(t.numel() * t.element_size() for t in tensors)
    return int(sum(t.numel() for t in tensors) * bytes_per_value)


def optimizer_state_tensors(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    """Every tensor the optimizer keeps per parameter (momentum, Adam's moments, step counters)."""
    return [v for state in optimizer.state.values() for v in state.values() if isinstance(v, Tensor)]


class MemoryMeter:
    """Memory of a training step, broken down the way the lab charts it (all in bytes).

    ``mem_params``, ``mem_grads``, ``mem_optimizer``, ``mem_activations`` (saved for backward) and
    ``mem_total`` (their sum), plus the process resident set size ``rss`` and, on CUDA, the allocator's
    ``mem_cuda_allocated``, ``mem_cuda_reserved`` and ``mem_cuda_peak`` (:func:`labkit.devices.cuda_memory`).
    ``value_bytes`` maps a category to bytes per value when a simulated format stores it narrower.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 value_bytes: Mapping[str, float] | None = None) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = optimizer
        self.value_bytes = dict(value_bytes or {})
        self.activations = ActivationMeter(model, self.value_bytes.get("activations"))
        self.cuda = self.params[0].device if self.params and self.params[0].is_cuda else None
        self._sizes: tuple[tuple[int, int], dict[str, int]] | None = None

    def measure(self) -> dict[str, float]:
        grads = [p.grad for p in self.params if p.grad is not None]
        # Parameters, gradients and optimizer state only change size when a gradient or a parameter's
        # state appears (the first steps): summed again then, reused otherwise.
        key = (len(grads), len(self.optimizer.state))
        if self._sizes is None or self._sizes[0] != key:
            self._sizes = key, {"mem_params": tensor_bytes(self.params, self.value_bytes.get("params")),
                                "mem_grads": tensor_bytes(grads, self.value_bytes.get("grads")),
                                "mem_optimizer": tensor_bytes(optimizer_state_tensors(self.optimizer))}
        record = {**self._sizes[1], "mem_activations": self.activations.bytes}
        record["mem_total"] = sum(record.values())
        record["rss"] = _PROCESS.memory_info().rss
        if self.cuda is not None:
            record.update(cuda_memory(self.cuda))
        return record


def flops_per_step(model: nn.Module, ids: Tensor, loss_fn) -> int:
    """FLOPs of one forward + backward pass on ``ids`` (counted by PyTorch's FlopCounterMode).

    ``loss_fn(logits, targets)`` is applied with the ids as their own targets; the optimizer update is
    not counted (it is O(parameters), negligible next to the matmuls). PyTorch's fused LSTM kernel is
    invisible to the counter, so its matmuls are added by formula: per token and layer, forward
    2 · 4H · (fan_in + H), and the backward pass twice that.
    """
    with FlopCounterMode(display=False) as counter:
        logits = model(ids)
        loss_fn(logits.flatten(0, 1), ids.flatten()).backward()
    model.zero_grad(set_to_none=True)
    lstm_flops = sum(_fused_lstm_flops(m, ids.numel()) for m in model.modules() if isinstance(m, LSTM))
    return counter.get_total_flops() + lstm_flops


def _fused_lstm_flops(lstm: LSTM, tokens: int) -> int:
    if not runs_fused_kernel(lstm.op):
        return 0  # written-out LSTMs (the unit-scaled reference loop) are counted by FlopCounterMode
    h = lstm.hidden_size
    fan_ins = [lstm.input_size] + [h] * (lstm.num_layers - 1)
    return 3 * sum(2 * 4 * h * (fan_in + h) for fan_in in fan_ins) * tokens
