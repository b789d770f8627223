"""The training engine: one loop used by the lab's panel, the notebooks, the CLI and sweeps.

    run = Trainer(RunConfig(arch="lstm", steps=200)).train()
    run.metrics  # a DataFrame, one row per record

Each record (every ``log_every`` steps, and at every evaluation and the last step) holds: ``step``,
``tokens``, ``train_loss``, ``val_loss`` (NaN between evaluations), ``lr``, ``grad_norm``,
``param_norm``, ``norm/<parameter>``, per optimizer group ``eff_lr/<group>`` (base LR × schedule × the
group's factor) and ``rel_update/<group>`` (‖ΔW‖/‖W‖ of that step's update; ``labkit.coord.UpdateMeter``),
memory (``mem_*`` bytes and ``rss``), ``step_time`` (seconds of the training step itself), ``tokens_per_s``
and ``instr_time`` (seconds spent measuring).

A run ends ``finished``; ``stopped`` when :meth:`Trainer.stop` is called (from any thread, e.g. a Stop
button) or on Ctrl-C; ``diverged`` at the first step whose loss is NaN or infinite or once the smoothed loss
has risen well above where it started (``labkit.divergence``: the step and the reason are in
``run.info["divergence"]`` and ``run.error``); ``failed`` on an error. A finished run that ended no better
than a uniform guess carries ``run.info["did_not_learn"]``. In every case the records so far are kept and, with
a store, saved.
An error found before training starts (no corpus, no CUDA, not enough memory or time) is raised without
saving anything.

With a store, a checkpoint (:mod:`labkit.checkpoint`) is written at every evaluation and when the run stops,
and :meth:`Trainer.resuming` / :func:`resume` continue a finished, stopped or interrupted run from it. The
learning-rate schedule is defined by the run's *final* total of steps: resuming to N steps continues the
schedule of an N-step run. So a run of N planned steps that is stopped or killed and then resumed gives the
same losses as an uninterrupted one; extending a finished cosine run restarts the decay from where an N-step
schedule would be (a constant schedule extends exactly).
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
import traceback
from collections.abc import Callable, Iterable

import psutil
import torch
import torch.nn.functional as F
from torch import nn

from labkit.budget import check_time
from labkit.build import ResourceError, build_for_run, load_corpus, resolve_device, rounding_generator
from labkit.checkpoint import TrainingState, checkpoint_path, load_checkpoint
from labkit.config import ConfigError, LossScaling, NumberFormat, Optimizer, RunConfig, Schedule
from labkit.coord import UpdateMeter
from labkit.data import Corpus
from labkit.devices import autocast, autocast_dtype, compute_precision, peak_flops
from labkit.divergence import DivergenceDetector
from labkit.formats import LossScaler, OverflowCounter, bytes_per_value
from labkit.instrument import MemoryMeter, NormMeter, flops_per_step
from labkit.models import build_model, count_parameters
from labkit.runs import HEARTBEAT_INTERVAL, Run, RunStatus, RunStore
from labkit.scales import ScaleRecorder
from labkit.scaling import ScalingMethod, get_method

Callback = Callable[[Run, dict[str, float]], None]


def learning_rate(config: RunConfig, peak: float, step: int) -> float:
    """Learning rate at ``step`` (1-based): constant, or linear warm-up then cosine decay to 10%."""
    if config.schedule is Schedule.CONSTANT:
        return peak
    if step <= config.warmup_steps:
        return peak * step / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


def peak_learning_rate(config: RunConfig, method: ScalingMethod | None = None) -> float:
    """The run's peak LR: ``config.lr`` if set, else the scaling method's default for the optimizer."""
    if config.lr is not None:
        return config.lr
    method = method or get_method(config.scaling)
    return method.default_lr[config.optimizer]


#: Devices where PyTorch's optimizers have a fused kernel that labkit uses.
FUSED_OPTIMIZER_DEVICES = ("cpu", "cuda")


def make_optimizer(config: RunConfig, groups: list[dict]) -> torch.optim.Optimizer:
    """The run's optimizer over a method's parameter groups (:func:`merge_param_groups` first).

    Fused (one kernel per parameter, ``fused=True``) where every parameter is on a device in
    :data:`FUSED_OPTIMIZER_DEVICES`, else ``foreach``. Fused AdamW takes 0.5 ms a step on the default
    Transformer where ``foreach`` takes 1.6 ms (2-core CPU); the numbers agree to float rounding.
    """
    groups = merge_param_groups(groups)
    fused = all(p.device.type in FUSED_OPTIMIZER_DEVICES for group in groups for p in group["params"])
    kind = {"fused": True} if fused else {"foreach": True}
    if config.optimizer is Optimizer.SGD:
        return torch.optim.SGD(groups, lr=groups[0]["lr"], weight_decay=config.weight_decay, **kind)
    return torch.optim.AdamW(groups, lr=groups[0]["lr"], weight_decay=config.weight_decay, **kind)


def merge_param_groups(groups: list[dict]) -> list[dict]:
    """Parameter groups that share a ``group`` label and the same learning rate, factor and rule become one
    optimizer group named by the label, listing its parameters' names under ``members``; groups without
    a label stay as they are. The numbers do not change (every parameter keeps its learning rate, and the
    optimizer's arithmetic is elementwise); the optimizer runs its fused kernel (or ``foreach`` ops) once per
    group instead of once per parameter (u-μP on the default Transformer: 8 groups instead of 30)."""
    merged: dict[tuple, dict] = {}
    out = []
    for group in groups:
        label = group.get("group")
        if label is None:
            out.append(group)
            continue
        key = (label, group["lr"], group.get("lr_scale", 1.0), group.get("rule"))
        if key not in merged:
            name = label if all(g.get("name") != label for g in out) else f"{label} #{len(out)}"
            merged[key] = {**group, "params": [], "name": name, "members": []}
            out.append(merged[key])
        merged[key]["params"] += group["params"]
        merged[key]["members"].append(group.get("name", f"parameter {len(merged[key]['members'])}"))
    return out


def estimate_memory(config: RunConfig, vocab_size: int) -> dict[str, int]:
    """Bytes a run will need, estimated before anything is allocated.

    Parameters are counted exactly on PyTorch's ``meta`` device (no memory used); activations saved for
    backward by a per-architecture rule of thumb, checked against the measured figure in the tests.
    """
    with torch.device("meta"):
        model = build_model(config.model_config(vocab_size))
    n = count_parameters(model)
    optimizer_copies = 2 if config.optimizer is Optimizer.ADAMW else 0
    tokens, d = config.batch_size * config.seq_len, config.width
    per_token = {"transformer": config.depth * (26 * d + 2 * config.heads * config.seq_len),
                 "lstm": config.depth * 12 * d, "mlp": 8 * d + config.depth * 2 * d}[config.arch.value]
    activations = 4 * tokens * (per_token + 3 * vocab_size)
    return {"parameters": n, "param_bytes": 4 * n, "grad_bytes": 4 * n,
            "optimizer_bytes": 4 * n * optimizer_copies, "activation_bytes": activations,
            "total_bytes": 4 * n * (2 + optimizer_copies) + activations}


def check_memory(config: RunConfig, vocab_size: int, headroom: float = 0.8) -> dict[str, int]:
    """Raise :class:`ResourceError` when the estimate exceeds ``headroom`` × free RAM."""
    estimate = estimate_memory(config, vocab_size)
    free = psutil.virtual_memory().available
    if estimate["total_bytes"] > headroom * free:
        raise ResourceError(
            f"width={config.width}, depth={config.depth}, batch_size={config.batch_size} × seq_len="
            f"{config.seq_len} needs about {estimate['total_bytes'] / 2**30:.1f} GiB "
            f"({estimate['parameters']:,} parameters) but only {free / 2**30:.1f} GiB is free; "
            "reduce width, depth or batch size")
    return estimate


def format_counts(snapshot: dict[str, int]) -> dict[str, int]:
    """Counter snapshot -> record keys ``fmt_values_fwd``, ``fmt_underflow_fwd``, ``fmt_overflow_bwd``, ..."""
    return {f"fmt_{'values' if what == 'total' else what}_{kind}": n
            for kind, what, n in ((*key.split("_"), n) for key, n in snapshot.items())}


class Trainer:
    """Trains one model as ``config`` says, emitting metrics records to ``callbacks``.

    ``callbacks`` are called as ``callback(run, record)`` from the training thread after each record.
    With a ``store``, the run is saved at its start, at every evaluation and at its end.
    """

    def __init__(self, config: RunConfig, *, callbacks: Iterable[Callback] = (), store: RunStore | None = None,
                 corpus: Corpus | None = None) -> None:
        self.config = config
        self.callbacks = list(callbacks)
        self.store = store
        self.corpus = corpus
        self.run = Run(config)
        self._stop = threading.Event()
        self.started = False  # the run was saved once: an error after this is a "failed" run, before it none
        self.interrupted = False  # ended by Ctrl-C (KeyboardInterrupt)
        self._resume_from: dict | None = None  # a checkpoint to continue from (see resuming())
        self._state: TrainingState | None = None
        self._last_beat = 0.0

    @classmethod
    def resuming(cls, run_id: str, *, store: RunStore, steps: int | None = None, threads: int | None = None,
                 callbacks: Iterable[Callback] = ()) -> Trainer:
        """A Trainer that continues saved run ``run_id`` from its last checkpoint to ``steps`` steps in total
        (default: the run's own), under the same id. The run must be finished, stopped or interrupted."""
        run = store.load(run_id)
        if run.status not in (RunStatus.FINISHED, RunStatus.STOPPED, RunStatus.INTERRUPTED):
            raise ConfigError(f"run {run_id} is {run.status.value}; only finished, stopped or interrupted runs "
                              "can be resumed" + (" (stop it first)" if run.status is RunStatus.RUNNING else ""))
        checkpoint = load_checkpoint(store, run_id)
        changes = {k: v for k, v in (("steps", steps), ("threads", threads)) if v is not None}
        config = run.config.replace(**changes)
        if config.steps <= checkpoint["step"]:
            raise ConfigError(f"run {run_id} has a checkpoint at step {checkpoint['step']}; give steps larger than "
                              f"that (the new total), got {config.steps}")
        trainer = cls(config, callbacks=callbacks, store=store)
        run.config = config
        trainer.run, trainer._resume_from = run, checkpoint
        return trainer

    def stop(self) -> None:
        """Ask the run to stop before its next step (safe from any thread)."""
        self._stop.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def train(self) -> Run:
        """Run to the end (or to a stop, divergence or error) and return the run record.

        Errors are recorded on the run (status ``failed``, ``run.error``), saved, then raised again.
        """
        run = self.run
        try:
            self._train()
        except KeyboardInterrupt:
            run.status = RunStatus.STOPPED
            self.interrupted = True
        except BaseException as exc:
            run.status = RunStatus.FAILED
            run.error = f"{type(exc).__name__}: {exc}"
            run.info["traceback"] = traceback.format_exc()
            if self.started:
                self._save()
            raise
        if self.started:
            self._save()
        return run

    def _save(self) -> None:
        if self.store is not None:
            self.store.save(self.run)
            self._last_beat = time.monotonic()

    def _beat(self) -> None:
        """Keep the saved run's heartbeat fresh between saves (a cheap touch, at most every 30 s)."""
        if self.store is not None and time.monotonic() - self._last_beat > HEARTBEAT_INTERVAL:
            self.store.beat(self.run)
            self._last_beat = time.monotonic()

    def _checkpoint(self, step: int) -> None:
        """Save model, optimizer, loss scaler and RNG state after ``step`` (with a store)."""
        if self.store is None or self._state is None or step < 1:
            return
        start = time.perf_counter()
        size = self._state.save(checkpoint_path(self.store, self.run.id), step)
        self.run.info.update(checkpoint_step=step, checkpoint_bytes=size,
                             checkpoint_seconds=time.perf_counter() - start)

    def _train(self) -> None:
        cfg, run = self.config, self.run
        torch.set_num_threads(cfg.threads)
        device = resolve_device(cfg.device)
        corpus = self.corpus or load_corpus(cfg.corpus, cfg.tokenizer.value, cfg.val_fraction)
        corpus.check_seq_len(cfg.seq_len)  # fail before building anything if the text is too short
        vocab = corpus.tokenizer.vocab_size
        run.info["step_seconds_estimate"] = check_time(cfg, vocab, device.type)
        run.info["memory_estimate"] = check_memory(cfg, vocab)

        simulated = cfg.format is not NumberFormat.FP32 or cfg.effective_grad_format is not NumberFormat.FP32
        simulated = simulated and autocast_dtype(cfg, device) is None  # BF16 on CUDA is real (autocast)
        counter = OverflowCounter() if simulated else None
        rounding = rounding_generator(cfg)
        model, ops, method = build_for_run(cfg, vocab, counter, device, rounding)
        peak_lr = peak_learning_rate(cfg, method)
        model.to(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        groups = method.param_groups(model, peak_lr, cfg.optimizer)
        optimizer = make_optimizer(cfg, groups)
        batches = torch.Generator().manual_seed(cfg.seed + 1)

        run.info.update(parameters=count_parameters(model), peak_lr=peak_lr, device=str(device),
                        vocab_size=vocab, corpus=corpus.name)
        sample, _ = corpus.get_batch("train", cfg.batch_size, cfg.seq_len, torch.Generator().manual_seed(0))
        run.info["flops_per_step"] = flops_per_step(model, sample.to(device), ops.cross_entropy)
        if counter is not None:
            counter.snapshot_and_reset()  # forget the FLOP count's pass
        precision = compute_precision(cfg, device)
        peak = peak_flops(device, precision)
        run.info.update(precision=precision, peak_flops=peak)
        if getattr(model, "fp8_kernel", None) is not None:
            run.info["fp8"] = model.fp8_kernel.stats  # _scaled_mm calls and FP32 fallbacks, updated live
        self.model, self.optimizer, self.ops = model, optimizer, ops
        value_bytes = ({"params": bytes_per_value(cfg.format), "activations": bytes_per_value(cfg.format),
                        "grads": bytes_per_value(cfg.effective_grad_format)} if simulated else None)
        norms, memory = NormMeter(model), MemoryMeter(model, optimizer, value_bytes)
        params = [p for p in model.parameters() if p.requires_grad]
        scaler = LossScaler(cfg.loss_scaling, cfg.loss_scale) if cfg.loss_scaling is not LossScaling.NONE else None
        self._state = TrainingState(model, optimizer, scaler, {"batches": batches, "rounding": rounding},
                                    corpus.tokenizer)
        first_step = self._restore() + 1
        scales = ScaleRecorder(model, sink=run.scales)
        updates = UpdateMeter(optimizer)
        self._save()
        self.started = True

        tokens_per_step = cfg.batch_size * cfg.seq_len
        divergence = DivergenceDetector(vocab)
        model.train()  # validation_loss() switches to eval mode and back; nothing else changes the mode
        for step in range(first_step, cfg.steps + 1):
            if self._stop.is_set():
                run.status = RunStatus.STOPPED
                self._save()  # records first, then the checkpoint: a kill in between only repeats steps
                self._checkpoint(step - 1)
                return
            evaluate = step % cfg.eval_every == 0 or step == cfg.steps
            record_now = evaluate or step % cfg.log_every == 0
            if record_now:
                updates.before_step()  # a copy of the weights, outside the timed step
            start = time.perf_counter()
            lr = learning_rate(cfg, peak_lr, step)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            x, y = corpus.get_batch("train", cfg.batch_size, cfg.seq_len, batches)
            x, y = x.to(device), y.to(device)
            sample_scales = cfg.scales_every and (step == 1 or step % cfg.scales_every == 0)
            with scales.recording(step) if sample_scales else contextlib.nullcontext():
                # The bytes saved for backward are the same at every step (same shapes): tracked on the first
                # logged step and at evaluations, and reported from there.
                track = record_now and (evaluate or not memory.activations.measured)
                with memory.activations.track() if track else contextlib.nullcontext(), autocast(cfg, device):
                    logits = model(x)
                    loss = ops.cross_entropy(logits.flatten(0, 1), y.flatten())
                loss_value = loss.item()
                diverged = divergence.update(step, loss_value)
                if diverged:
                    run.records.append({"step": step, "tokens": step * tokens_per_step, "train_loss": loss_value,
                                        "lr": lr})
                    run.status = RunStatus.DIVERGED
                    run.error = f"{diverged}: lower the learning rate (was {lr:.3g})"
                    run.info["divergence"] = {"step": step, "reason": diverged}
                    return
                optimizer.zero_grad(set_to_none=True)
                (scaler.scale(loss) if scaler else loss).backward()
            skip = scaler.update(scaler.unscale_(params)) if scaler else False
            if cfg.grad_clip is not None:
                nn.utils.clip_grad_norm_(params, cfg.grad_clip, foreach=True)
            if not skip:
                optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # the step's kernels are queued: time them, not their launch
            step_time = time.perf_counter() - start
            self._beat()
            if not record_now:
                continue
            record = {"step": step, "tokens": step * tokens_per_step, "train_loss": loss_value,
                      "val_loss": self.validation_loss(model, corpus, device) if evaluate else math.nan,
                      "lr": lr, "step_time": step_time, "tokens_per_s": tokens_per_step / step_time}
            if peak:  # model FLOP utilisation against the device's peak in the run's precision
                record["mfu"] = run.info["flops_per_step"] / step_time / peak
            measure_start = time.perf_counter()
            record.update(norms.measure())
            record.update(updates.after_step())
            record.update(memory.measure())
            if counter is not None:
                record.update(format_counts(counter.snapshot_and_reset()))
            if scaler is not None:
                record.update(loss_scale=scaler.scale_value, skipped_steps=scaler.skipped_steps)
            record["instr_time"] = time.perf_counter() - measure_start
            run.records.append(record)
            for callback in self.callbacks:
                callback(run, record)
            if evaluate:
                self._save()  # records first, then the checkpoint: a kill in between only repeats steps
                self._checkpoint(step)
        run.status = RunStatus.FINISHED
        if (not_learned := divergence.did_not_learn()) is not None:
            run.info["did_not_learn"] = not_learned

    def _restore(self) -> int:
        """Continue from the checkpoint given to :meth:`resuming`: restore the training state, drop records
        after its step (they are trained again, identically); returns that step (0 for a new run)."""
        if self._resume_from is None or self._state is None:
            return 0
        step = self._state.restore(self._resume_from)
        run = self.run
        run.records = [r for r in run.records if r["step"] <= step]
        run.scales[:] = [r for r in run.scales if r["step"] <= step]
        run.status, run.error = RunStatus.RUNNING, None
        run.info.setdefault("resumed", []).append({"from_step": step, "to_steps": self.config.steps,
                                                   "at": time.time()})
        return step

    @torch.no_grad()
    def validation_loss(self, model: nn.Module, corpus: Corpus, device: torch.device) -> float:
        """Mean cross-entropy (nats/token) over ``eval_batches`` fixed validation batches."""
        cfg = self.config
        generator = torch.Generator().manual_seed(cfg.seed + 2)  # the same batches at every evaluation
        model.eval()
        total = 0.0
        for _ in range(cfg.eval_batches):
            x, y = corpus.get_batch("val", cfg.batch_size, cfg.seq_len, generator)
            with autocast(cfg, device):
                logits = model(x.to(device))
            total += F.cross_entropy(logits.flatten(0, 1).float(), y.to(device).flatten()).item()
        model.train()
        return total / cfg.eval_batches


def train(config: RunConfig | None = None, *, callbacks: Iterable[Callback] = (), store: RunStore | None = None,
          **overrides: object) -> Run:
    """Train one run: ``train(arch="lstm", steps=100)`` or ``train(RunConfig(...))``."""
    config = (config or RunConfig()).replace(**overrides) if overrides else (config or RunConfig())
    return Trainer(config, callbacks=callbacks, store=store).train()


def resume(run_id: str, steps: int | None = None, *, store: RunStore | None = None,
           callbacks: Iterable[Callback] = (), threads: int | None = None) -> Run:
    """Continue saved run ``run_id`` to ``steps`` steps in total (see :meth:`Trainer.resuming`)."""
    return Trainer.resuming(run_id, store=store or RunStore(), steps=steps, threads=threads,
                            callbacks=callbacks).train()
