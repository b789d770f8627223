"""The torch versions labkit declares (pyproject.toml) against the torch API it calls.

What this proves, and what it does not:

* ``AUDITED`` is every torch name labkit's source uses (found by parsing it, imports resolved). A new use
  of any torch API fails ``test_labkit_uses_only_audited_torch_apis`` until it is added here, with its
  version in ``RECENT`` if it appeared (or changed) after 2.0. So no API reaches labkit unreviewed.
* ``RECENT`` records, from the PyTorch release notes as we read them (not by installing each release),
  when each newer API appeared; ``test_recent_apis_are_older_than_the_lower_bound`` checks each is at or
  below the declared lower bound, so nothing needs a version guard.
* ``test_every_audited_api_exists_in_this_torch`` resolves every name in the installed torch. Here that is
  2.13. Run this file under the lower bound to check it there (the GPU machine has torch 2.11 and pytest):
  ``python -m pytest -o addopts="" -p no:cacheprovider tests/test_torch_api.py``.
* None of this checks *behaviour* on 2.11 (a changed default, a kernel missing on one device): that is the
  device check's job (``python -m labkit.devicecheck``), on the GPU machine.
"""

from __future__ import annotations

import ast
import importlib
import pathlib
import re
import tomllib

import pytest
import torch
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = pathlib.Path(__file__).resolve().parents[1]

AUDITED = {
    "torch.is_grad_enabled",
    "torch.ops",
    "torch.ops.aten",
    "torch.ops.aten.gelu_backward",
    "torch._foreach_mul",
    "torch._foreach_sub",
    "torch.enable_grad",
    "torch.get_rng_state",
    "torch.load",
    "torch.save",
    "torch.set_rng_state",
    "torch.unique",
    "torch.empty_like",  # torch 1.x
    "torch.empty_strided",
    "torch.int8",
    "torch.profiler.profile",  # torch 1.8.1 (the bench's --profile)
    "torch.profiler.ProfilerActivity",
    "torch.profiler.ProfilerActivity.CPU",
    "torch.addmm",  # torch 1.x (alpha/beta scale the fast unit-scaled linear)
    "torch.broadcast_shapes",  # torch 1.8
    "torch.native_layer_norm",  # torch 1.x, with its backward (the unit-scaled layer norm in one node)
    "torch.ops.aten.native_layer_norm_backward",
    "torch.ops.aten.native_layer_norm_backward.default",
    "torch.Size",
    "torch._foreach_copy_",  # the UpdateMeter's buffers; torch 2.1 (see RECENT)
    "torch.is_autocast_enabled",  # with a device type: torch 2.4 (see RECENT)
    "torch.get_autocast_dtype",
    "torch._foreach_sub_",
    "torch.Generator",
    "torch.Tensor",
    "torch.__version__",
    "torch._amp_foreach_non_finite_check_and_unscale_",
    "torch._foreach_norm",
    "torch._scaled_mm",
    "torch.add",
    "torch.aminmax",
    "torch.arange",
    "torch.autocast",
    "torch.autograd",
    "torch.autograd.Function",
    "torch.autograd.grad",
    "torch.autograd.graph",
    "torch.autograd.graph.saved_tensors_hooks",
    "torch.backends",
    "torch.backends.mps",
    "torch.backends.mps.is_available",
    "torch.bfloat16",
    "torch.bincount",
    "torch.bitwise_and",
    "torch.cat",
    "torch.count_nonzero",
    "torch.cuda",
    "torch.cuda.device_count",
    "torch.cuda.get_device_name",
    "torch.cuda.is_available",
    "torch.cuda.max_memory_allocated",
    "torch.cuda.memory_allocated",
    "torch.cuda.memory_reserved",
    "torch.cuda.reset_peak_memory_stats",
    "torch.cuda.set_device",
    "torch.cuda.synchronize",
    "torch.cumsum",
    "torch.device",
    "torch.dtype",
    "torch.empty",
    "torch.exp",
    "torch.finfo",
    "torch.float16",
    "torch.float32",
    "torch.float64",
    "torch.float8_e4m3fn",
    "torch.float8_e5m2",
    "torch.floor",
    "torch.frombuffer",
    "torch.full",
    "torch.get_num_threads",
    "torch.int32",
    "torch.int64",
    "torch.linalg",
    "torch.linalg.vector_norm",
    "torch.linspace",
    "torch.log2",
    "torch.log_softmax",
    "torch.long",
    "torch.lstm",
    "torch.manual_seed",
    "torch.mm",
    "torch.multinomial",
    "torch.nextafter",
    "torch.nn",
    "torch.nn.Embedding",
    "torch.nn.LayerNorm",
    "torch.nn.Linear",
    "torch.nn.Module",
    "torch.nn.ModuleList",
    "torch.nn.Parameter",
    "torch.nn.functional",
    "torch.nn.functional.cross_entropy",
    "torch.nn.functional.embedding",
    "torch.nn.functional.gelu",
    "torch.nn.functional.layer_norm",
    "torch.nn.functional.linear",
    "torch.nn.functional.pad",
    "torch.nn.functional.relu",
    "torch.nn.functional.rms_norm",
    "torch.nn.functional.scaled_dot_product_attention",
    "torch.nn.functional.silu",
    "torch.nn.functional.softmax",
    "torch.nn.init",
    "torch.nn.init.normal_",
    "torch.nn.init.ones_",
    "torch.nn.init.uniform_",
    "torch.nn.init.zeros_",
    "torch.nn.utils",
    "torch.nn.utils.clip_grad_norm_",
    "torch.nn.utils.parametrize",
    "torch.nn.utils.parametrize.register_parametrization",
    "torch.no_grad",
    "torch.norm",
    "torch.ones",
    "torch.ones_like",
    "torch.optim",
    "torch.optim.AdamW",
    "torch.optim.Optimizer",
    "torch.optim.SGD",
    "torch.randint",
    "torch.randn",
    "torch.random",
    "torch.random.fork_rng",
    "torch.set_num_threads",
    "torch.sigmoid",
    "torch.softmax",
    "torch.stack",
    "torch.tanh",
    "torch.tensor",
    "torch.trapezoid",
    "torch.uint8",
    "torch.utils.flop_counter.FlopCounterMode",
    "torch.version",
    "torch.version.cuda",
    "torch.where",
    "torch.zeros",
}

RECENT = {
    "torch._scaled_mm": ("2.5", "private; labkit.fp8 calls it with required keyword scales and one output tensor "
                         "(the form since 2.5) inside scaled_matmul(), which falls back to FP32 if it raises"),
    "torch.float8_e4m3fn": ("2.1", "FP8 dtypes"),
    "torch.float8_e5m2": ("2.1", "FP8 dtypes"),
    "torch.nn.functional.rms_norm": ("2.4", "unit-scaled rms_norm"),
    "torch.utils.flop_counter.FlopCounterMode": ("2.1", "public module since 2.1"),
    "torch.nn.functional.scaled_dot_product_attention": ("2.0", "attention"),
    "torch._foreach_norm": ("1.13", "private; instrument.NormMeter"),
    "torch._foreach_copy_": ("2.1", "private; coord.UpdateMeter copies the weights into its buffers"),
    "torch.is_autocast_enabled": ("2.4", "with a device_type argument: the unit-scaled linear and layer norm "
                                  "follow autocast as F.linear and F.layer_norm do"),
    "torch.get_autocast_dtype": ("2.4", "the autocast dtype of a device type"),
    "torch._amp_foreach_non_finite_check_and_unscale_": ("1.6", "private; LossScaler; CUDA kernel since 1.6 "
                                                          "(its CPU kernel is newer, version not checked)"),
}


def torch_names_used(root: pathlib.Path = ROOT / "labkit") -> dict[str, set[str]]:
    """Every dotted torch name the source under ``root`` uses (``F.linear`` -> ``torch.nn.functional.linear``),
    with the files that use it."""
    names: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text())
        alias: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name == "torch" or a.name.startswith("torch."):
                        alias[a.asname or "torch"] = a.name if a.asname else "torch"
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "torch":
                for a in node.names:
                    alias[a.asname or a.name] = f"{node.module}.{a.name}"
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                parts, current = [], node
                while isinstance(current, ast.Attribute):
                    parts.append(current.attr)
                    current = current.value
                if isinstance(current, ast.Name) and current.id in alias:
                    names.setdefault(".".join([alias[current.id], *reversed(parts)]), set()).add(path.name)
            elif isinstance(node, ast.Name) and node.id in alias and alias[node.id] != node.id:
                names.setdefault(alias[node.id], set()).add(path.name)
    return names


def resolve(name: str) -> object:
    """The object a dotted torch name refers to (importing submodules as needed)."""
    parts = name.split(".")
    obj: object = importlib.import_module(parts[0])
    for i, part in enumerate(parts[1:], start=1):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            obj = importlib.import_module(".".join(parts[: i + 1]))
    return obj


def declared_torch() -> Requirement:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(Requirement(d) for d in deps if re.match(r"torch\b", d))


def lower_bound(requirement: Requirement) -> Version:
    return min(Version(s.version) for s in requirement.specifier if s.operator == ">=")


def test_the_scan_sees_aliased_and_from_imports():
    used = torch_names_used()
    assert "torch.nn.functional.linear" in used  # import torch.nn.functional as F; F.linear
    assert "torch.utils.flop_counter.FlopCounterMode" in used  # from torch.utils.flop_counter import ...
    assert "fp8.py" in used["torch._scaled_mm"]


def test_labkit_uses_only_audited_torch_apis():
    new = sorted(set(torch_names_used()) - AUDITED)
    assert not new, (f"labkit now uses torch APIs nobody has checked against the declared range: {new}. "
                     "Find when each appeared; add it to AUDITED (and to RECENT if after 2.0).")


def test_recent_apis_are_older_than_the_lower_bound():
    bound = lower_bound(declared_torch())
    too_new = {name: v for name, (v, _) in RECENT.items() if Version(v) > bound}
    assert not too_new, f"these need a version guard or a higher lower bound than {bound}: {too_new}"
    assert set(RECENT) <= AUDITED


@pytest.mark.parametrize("name", sorted(AUDITED))
def test_every_audited_api_exists_in_this_torch(name):
    resolve(name)  # raises AttributeError / ImportError when the installed torch lacks it


def test_declared_range_keeps_the_gpu_machines_and_this_machines_torch():
    spec = declared_torch().specifier
    for kept in ("2.11.0+cu130", "2.12.1", "2.13.0+cpu", torch.__version__):
        assert spec.contains(kept), kept
    for refused in ("2.10.0", "2.14.0", "3.0.0"):  # older than audited; newer than anything tested
        assert not spec.contains(refused), refused
