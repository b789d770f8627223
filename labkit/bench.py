"""Benchmarks that print ratios measured in one process: ``python -m labkit.bench [--steps N]``.

1. engine overhead: a bare PyTorch loop vs the instrumented ``Trainer`` on the same config, their steps
   taking turns (target: the engine keeps ≥ 0.90× the bare loop's throughput);
2. the machine's FP32 matmul rate (one large ``torch.mm``) and the model's FLOP utilisation;
3. scaling methods and simulated formats vs ``standard`` FP32 on the same model;
4. the peer: Graphcore's ``unit-scaling`` library's u-μP decoder vs its plain counterpart and its FP8
   simulation vs the plain model, same size and batches, timed in the same rotation as 3 (Transformer).

``--profile VARIANT`` prints instead where one variant's extra time goes, op by op (:func:`profile_extra`).

Contenders alternate step by step so that a slow spell of a shared machine hits them alike. A ratio is the
median, over turns, of one contender's step time over the reference's in the same turn (a paired
comparison): on this machine the CPU runs slower by up to a third for spells of a second or so, which moves
medians of separate steps by several percent, but leaves the ratio of two steps taken a few milliseconds
apart nearly unchanged.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from labkit.config import Arch, RunConfig
from labkit.peer import PEER, peer_steps, peer_version
from labkit.scaling import get_method
from labkit.train import Trainer, build_for_run, learning_rate, load_corpus, make_optimizer, peak_learning_rate


def bare_step(config: RunConfig) -> Callable[[], None]:
    """One training step of ``config``'s model in a plain PyTorch loop (batch, forward, loss, backward,
    optimizer step), nothing measured: the baseline. Returned as a closure over its model and optimizer."""
    corpus = load_corpus(config.corpus, config.tokenizer.value, config.val_fraction)
    model, ops, method = build_for_run(config, corpus.tokenizer.vocab_size)
    peak = peak_learning_rate(config, method)
    optimizer = make_optimizer(config, method.param_groups(model, peak, config.optimizer))
    generator = torch.Generator().manual_seed(config.seed + 1)
    step = 0

    def run_step() -> None:
        nonlocal step
        step += 1
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, peak, step) * group.get("lr_scale", 1.0)
        x, y = corpus.get_batch("train", config.batch_size, config.seq_len, generator)
        loss = ops.cross_entropy(model(x).flatten(0, 1), y.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()

    return run_step


def interleaved_step_times(contenders: dict[str, RunConfig | Callable[[], None]], steps: int,
                           warmup: int = 3, clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Seconds per step of each contender (a config, run as its :func:`bare_step`, or a step function), the
    contenders taking turns step by step in a rotating order, so a busy spell of a shared machine slows all
    of them alike; ``warmup`` turns are not counted. ``clock``: wall time by default; ``time.thread_time``
    (CPU time of this thread) is steadier on a machine shared with other processes."""
    functions = {label: bare_step(c) if isinstance(c, RunConfig) else c for label, c in contenders.items()}
    labels = list(functions)
    times: dict[str, list[float]] = {label: [] for label in labels}
    for turn in range(warmup + steps):
        for label in labels[turn % len(labels):] + labels[:turn % len(labels)]:
            elapsed = _timed(functions[label], clock)
            if turn >= warmup:
                times[label].append(elapsed)
    return times


def matmul_flops_per_s(n: int = 2048, repeats: int = 3) -> float:
    """FP32 rate of one n×n×n ``torch.mm`` (best of ``repeats``): the machine's practical peak."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * n**3 / best


def _timed(fn: Callable[[], object], clock: Callable[[], float] = time.perf_counter) -> float:
    start = clock()
    fn()
    return clock() - start


def compare_engine(config: RunConfig, steps: int, rounds: int) -> dict[str, float]:
    """The instrumented engine (a ``Trainer`` run, every metric on every step) against a bare loop on the same
    config, their steps taking turns: between two engine steps (inside the engine's callback) one bare step is
    timed, and the throughput ratio is the median of paired ratios (bare step / the engine step next to it)."""
    bare = bare_step(config)
    bare_times: list[float] = []
    engine_times: list[float] = []
    resumed = [0.0]  # when the engine took over again after the last bare step

    def take_turns(run: object, record: dict) -> None:
        now = time.perf_counter()
        if resumed[0]:
            engine_times.append(now - resumed[0])
        bare_times.append(_timed(bare))
        resumed[0] = time.perf_counter()

    total = steps * rounds
    trainer = Trainer(config.replace(steps=total + 1, log_every=1, eval_every=total + 2), callbacks=[take_turns])
    trainer.train()
    warmup = min(5, (total - 1) // 2)
    bare_times, engine_times = bare_times[warmup:len(engine_times)], engine_times[warmup:]
    bare_median, engine_median = statistics.median(bare_times), statistics.median(engine_times)
    tokens = config.batch_size * config.seq_len
    flops = trainer.run.info["flops_per_step"]
    return {"bare_step_ms": 1e3 * bare_median, "engine_step_ms": 1e3 * engine_median,
            "throughput_ratio": paired_ratio(bare_times, engine_times), "tokens_per_s": tokens / engine_median,
            "model_flops_per_step": flops, "model_flops_per_s": flops / engine_median}


def compare_configs(configs: dict[str, RunConfig], steps: int,
                    others: dict[str, Callable[[], None]] | None = None,
                    clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Bare step times (seconds, one per turn) of each config and of each of ``others`` (step functions),
    all measured interleaved in one rotation; read them with :func:`median_ms` and :func:`paired_ratio`."""
    return interleaved_step_times({**configs, **(others or {})}, steps, clock=clock)


def median_ms(times: list[float]) -> float:
    """The median of step times in seconds, in milliseconds."""
    return 1e3 * statistics.median(times)


def paired_ratio(times: list[float], reference: list[float]) -> float:
    """Median over turns of ``times[i] / reference[i]`` (step times taken in the same turn of a rotation)."""
    return statistics.median(t / r for t, r in zip(times, reference, strict=True))


def profile_extra(config: RunConfig, reference: RunConfig, steps: int = 20, rows: int = 15) -> list[dict]:
    """What ``config``'s step spends beyond ``reference``'s: PyTorch's profiler on both bare loops (after 5
    warm-up steps each; then one profiled step of each in turn, so a slow spell of the machine hits both),
    self CPU time per op name in ms per step, the ``rows`` largest differences first. The profiler adds its
    own overhead to every op, so the totals read a little higher than the timed steps; the differences are
    what to read. Custom autograd nodes (``Quantise``, ...) include the work they do outside PyTorch ops
    (the FP8 rounding kernel)."""
    from torch.profiler import ProfilerActivity, profile

    contenders = [bare_step(config), bare_step(reference)]
    for step in contenders:
        for _ in range(5):
            step()
    ours: dict[str, tuple[float, float]] = {}
    base: dict[str, tuple[float, float]] = {}
    for _ in range(steps):
        for step, table in zip(contenders, (ours, base), strict=True):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                step()
            for e in prof.key_averages():
                name = _SAME_WORK.get(e.key, e.key)
                ms, calls = table.get(name, (0.0, 0.0))
                table[name] = (ms + e.self_cpu_time_total / 1e3 / steps, calls + e.count / steps)
    names = sorted(set(ours) | set(base), key=lambda n: -(ours.get(n, (0, 0))[0] - base.get(n, (0, 0))[0]))
    table = [{"op": n, "reference_ms": base.get(n, (0.0, 0))[0], "ms": ours.get(n, (0.0, 0))[0],
              "extra_ms": ours.get(n, (0.0, 0))[0] - base.get(n, (0.0, 0))[0],
              "calls": ours.get(n, (0.0, 0))[1], "reference_calls": base.get(n, (0.0, 0))[1]} for n in names]
    total = {"op": "total", "reference_ms": sum(v[0] for v in base.values()), "ms": sum(v[0] for v in ours.values()),
             "calls": sum(v[1] for v in ours.values()), "reference_calls": sum(v[1] for v in base.values())}
    total["extra_ms"] = total["ms"] - total["reference_ms"]
    return [total, *table[:rows]]


#: Ops that do the same work under another name: one row each in :func:`profile_extra` (a unit-scaled linear
#: computes with ``addmm`` and a scale where ``F.linear``'s backward calls ``mm``).
_SAME_WORK = {"aten::mm": "aten::mm + aten::addmm", "aten::addmm": "aten::mm + aten::addmm"}


def _print_profile(name: str, reference: str, table: list[dict]) -> None:
    print(f"\n== profile: what {name} adds to {reference} (self CPU ms per step under the profiler)")
    print(f"{'op':52s}{'reference':>10s}{name:>14s}{'extra':>9s}{'calls':>13s}")
    for row in table:
        calls = f"{row['reference_calls']:.0f} → {row['calls']:.0f}"
        print(f"{row['op'][:51]:52s}{row['reference_ms']:10.2f}{row['ms']:14.2f}{row['extra_ms']:+9.2f}{calls:>13s}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m labkit.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="transformer", choices=["transformer", "lstm", "mlp"])
    parser.add_argument("--steps", type=_at_least_two, default=40, help="steps per round and contender (≥ 2)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="time the scaling/format/peer steps by wall clock (default) or by the CPU time of "
                             "the training thread (steadier when other processes load the machine)")
    parser.add_argument("--profile", metavar="VARIANT", choices=list(_variants()),
                        help="instead of the tables: where VARIANT's extra step time goes, op by op, against the "
                             "variant it is compared with (standard fp32; an FP8 variant: its own FP32)")
    parser.add_argument("--no-peer", dest="peer", action="store_false",
                        help=f"skip the comparison with Graphcore's {PEER} (Transformer only)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = RunConfig(arch=args.arch, threads=args.threads)
    print(f"model: {config.arch.value}, width {config.width}, depth {config.depth}, "
          f"batch {config.batch_size}×{config.seq_len}, {args.threads} thread(s)")
    if args.profile:
        reference = _reference_of(args.profile)
        table = profile_extra(config.replace(**_variants()[args.profile]),
                              config.replace(**_variants()[reference]), steps=args.steps)
        _print_profile(args.profile, reference, table)
        return

    result = compare_engine(config, args.steps, args.rounds)
    peak = matmul_flops_per_s()
    print("\n== engine overhead (bare PyTorch loop vs instrumented Trainer)")
    print(f"bare loop step        {result['bare_step_ms']:8.2f} ms")
    print(f"engine step           {result['engine_step_ms']:8.2f} ms")
    print(f"throughput ratio      {result['throughput_ratio']:8.3f}×   (target ≥ 0.90)")
    print(f"tokens/s (engine)     {result['tokens_per_s']:8.0f}")
    print("\n== FLOP rate")
    print(f"matmul 2048³ FP32     {peak / 1e9:8.1f} GFLOP/s")
    print(f"model fwd+bwd         {result['model_flops_per_s'] / 1e9:8.2f} GFLOP/s "
          f"({result['model_flops_per_step'] / 1e9:.2f} GFLOP/step)")
    print(f"model FLOP utilisation{100 * result['model_flops_per_s'] / peak:8.1f} %")

    variants = {name: config.replace(**changes) for name, changes in _variants().items()}
    available = {name: c for name, c in variants.items() if _implemented(c)}
    peer, why_no_peer = _peer_steps(config, args.peer)
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    times = compare_configs(available, args.steps * args.rounds, {f"peer {n}": f for n, f in peer.items()}, clock)
    reference = times["standard fp32"]
    print("\n== scaling methods and simulated formats (bare loop, vs standard fp32; × is the median of paired "
          "ratios)" + (", CPU time of the training thread" if args.clock == "cpu" else ""))
    for name in available:
        own = _reference_of(name)
        vs_own = f"   {paired_ratio(times[name], times[own]):5.2f}× vs {own}" if own != "standard fp32" else ""
        print(f"{name:28s}{median_ms(times[name]):8.2f} ms  {paired_ratio(times[name], reference):6.2f}×{vs_own}")
    for name in sorted(set(variants) - set(available)):
        print(f"{name:28s}    (not implemented)")
    version = peer_version()
    print(f"\n== peer: Graphcore's {PEER}" + (f" {version}, timed in the same rotation as above" if version else ""))
    if why_no_peer:
        print(why_no_peer)
    else:
        _print_peer({n: times[f"peer {n}"] for n in peer}, times)


def _at_least_two(text: str) -> int:
    if not text.isdigit() or int(text) < 2:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of steps, at least 2")
    return int(text)


def _peer_steps(config: RunConfig, wanted: bool) -> tuple[dict[str, Callable[[], None]], str | None]:
    """The peer library's step functions, or none and the reason why (printed in their place)."""
    if not wanted:
        return {}, "not measured (--no-peer)"
    if config.arch is not Arch.TRANSFORMER:
        return {}, "not measured: the library has no LSTM or MLP model; run with --arch transformer"
    if peer_version() is None:
        return {}, (f"not measured: {PEER} is not installed (a development dependency: "
                    "pip install -e '.[dev]', or make .venv/.installed)")
    return peer_steps(config), None


def _print_peer(peer: dict[str, list[float]], ours: dict[str, list[float]]) -> None:
    """The library's ratios (u-μP decoder vs its plain counterpart, ``simulate_format`` FP8 vs the same
    model in FP32) beside labkit's for the same comparison."""
    print("its TransformerDecoder (RMS norm, SwiGLU) vs the same model in plain PyTorch; same size and batches;")
    print("its FP8 is simulate_fp8 (E4M3 fwd, E5M2 bwd, stochastic rounding)")
    comparisons = [  # peer row, its reference row, labkit's row, labkit's reference row
        ("plain fp32", "plain fp32", "standard fp32", "standard fp32"),
        ("u-mup fp32", "plain fp32", "u-mup fp32", "standard fp32"),
        ("plain fp8 (simulate_format)", "plain fp32", "standard fp8", "standard fp32"),
        ("u-mup fp8 (simulate_format)", "u-mup fp32", "u-mup fp8", "u-mup fp32"),
    ]
    print(f"{'':28s}{'step':>11s}  {'peer':>6s}   {'labkit, same comparison':s}")
    for row, row_ref, ours_row, ours_ref in comparisons:
        mine = (f"{paired_ratio(ours[ours_row], ours[ours_ref]):6.2f}×  ({ours_row} vs {ours_ref})"
                if ours_row in ours and ours_ref in ours else "")
        print(f"{row:28s}{median_ms(peer[row]):8.2f} ms  {paired_ratio(peer[row], peer[row_ref]):6.2f}×   {mine}")


def _variants() -> dict[str, dict[str, str]]:
    return {
        "standard fp32": {},
        "seed-l2-always fp32": {"scaling": "seed-l2-always"},
        "unit fp32": {"scaling": "unit"},
        "u-mup fp32": {"scaling": "u-mup"},
        "standard fp8": {"format": "fp8-e4m3"},
        "unit fp8": {"scaling": "unit", "format": "fp8-e4m3"},
        "u-mup fp8": {"scaling": "u-mup", "format": "fp8-e4m3"},
    }


def _reference_of(variant: str) -> str:
    """The variant a ratio compares ``variant`` with: its own FP32 for the FP8 ones of unit and u-mup (as the
    targets state them), else standard FP32."""
    scaling, fmt = variant.split()
    return f"{scaling} fp32" if fmt != "fp32" and scaling != "standard" else "standard fp32"


def _implemented(config: RunConfig) -> bool:
    try:
        get_method(config.scaling)
    except NotImplementedError:
        return False
    return True


if __name__ == "__main__":
    main()
