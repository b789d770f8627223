import threading

import numpy as np
import pytest
import torch

from labkit.config import RunConfig
from labkit.data import Corpus
from labkit.runs import RunStatus
from labkit.train import ResourceError, Trainer, estimate_memory, learning_rate, train


@pytest.mark.parametrize("arch", ["transformer", "lstm"])
def test_loss_falls_below_unigram_entropy_on_shakespeare(arch):
    """200 steps at the default size: validation loss ends clearly below the unigram entropy."""
    run = train(RunConfig(arch=arch, steps=200, eval_every=100))
    corpus = Corpus.load("shakespeare")
    metrics = run.metrics
    assert run.status is RunStatus.FINISHED
    assert metrics["train_loss"].iloc[:10].mean() > metrics["train_loss"].iloc[-10:].mean() + 1.0
    assert metrics["val_loss"].dropna().iloc[-1] < corpus.unigram_entropy() - 0.5


def test_same_seed_same_curve_other_seed_other_curve(make_config):
    a = train(make_config(seed=3)).metrics["train_loss"].to_numpy()
    b = train(make_config(seed=3)).metrics["train_loss"].to_numpy()
    c = train(make_config(seed=4)).metrics["train_loss"].to_numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_records_hold_every_metric(make_config):
    run = train(make_config(steps=10, log_every=2, eval_every=5))
    df = run.metrics
    assert df["step"].tolist() == [2, 4, 5, 6, 8, 10]
    assert df["val_loss"].notna().tolist() == [False, False, True, False, False, True]
    for column in ["tokens", "lr", "grad_norm", "param_norm", "mem_params", "mem_grads", "mem_optimizer",
                   "mem_activations", "rss", "step_time", "tokens_per_s"]:
        assert df[column].notna().all(), column
    assert any(c.startswith("norm/") for c in df)
    assert (df["tokens"] == df["step"] * 8 * 32).all()


def test_learning_rate_schedule():
    config = RunConfig(steps=100, warmup_steps=10, schedule="cosine")
    lrs = [learning_rate(config, 1.0, s) for s in range(1, 101)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))
    assert learning_rate(config.replace(schedule="constant"), 0.5, 77) == 0.5


def test_sgd_trains_like_the_seed(make_config):
    run = train(make_config(optimizer="sgd", lr=1.0, steps=40, arch="lstm"))
    losses = run.metrics["train_loss"]
    assert losses.iloc[-5:].mean() < losses.iloc[:5].mean() - 0.3


def test_divergence_stops_with_history(make_config, store):
    run = Trainer(make_config(lr=1e4, optimizer="sgd", steps=50), store=store).train()
    assert run.status is RunStatus.DIVERGED
    assert not np.isfinite(run.metrics["train_loss"].iloc[-1])
    assert run.metrics["step"].tolist() == list(range(1, run.last_step + 1))  # every step before it
    assert "lower the learning rate" in run.error
    assert store.load(run.id).status is RunStatus.DIVERGED


def test_stop_from_another_thread_keeps_the_steps(make_config, store):
    config = make_config(steps=10_000, eval_every=10_000)
    trainer = Trainer(config, store=store)
    stepped = threading.Event()
    trainer.callbacks.append(lambda run, record: stepped.set() if record["step"] >= 5 else None)
    thread = threading.Thread(target=trainer.train)
    thread.start()
    assert stepped.wait(60)
    trainer.stop()
    thread.join(30)
    run = trainer.run
    assert run.status is RunStatus.STOPPED
    assert 5 <= run.last_step < 10_000
    saved = store.load(run.id)
    assert saved.status is RunStatus.STOPPED and saved.last_step == run.last_step


def test_too_short_corpus_fails_before_training(tmp_path, make_config, store):
    path = tmp_path / "tiny.txt"
    path.write_text("to be or not to be\n" * 2, encoding="utf-8")
    with pytest.raises(ValueError, match="seq_len"):
        Trainer(make_config(corpus=str(path), seq_len=64), store=store).train()


def test_width_that_exhausts_memory_is_refused(make_config):
    with pytest.raises(ResourceError, match="reduce width"):
        Trainer(make_config(width=65536, depth=48, heads=1)).train()


def test_errors_are_saved_as_failed_runs(make_config, store):
    trainer = Trainer(make_config(), store=store)

    def explode(run, record):
        raise RuntimeError("chart exploded")

    trainer.callbacks.append(explode)
    with pytest.raises(RuntimeError, match="chart exploded"):
        trainer.train()
    saved = store.load(trainer.run.id)
    assert saved.status is RunStatus.FAILED and "chart exploded" in saved.error
    assert saved.last_step == 1


@pytest.mark.parametrize("arch", ["transformer", "lstm", "mlp"])
def test_memory_estimate_is_close_to_measured(arch, make_config):
    config = make_config(arch=arch, width=64, steps=2)
    run = train(config)
    estimate = estimate_memory(config, run.info["vocab_size"])
    measured = run.metrics.iloc[-1]
    assert estimate["parameters"] == run.info["parameters"]
    assert estimate["param_bytes"] == measured["mem_params"]
    assert 0.5 < estimate["activation_bytes"] / measured["mem_activations"] < 2.0


def test_instrumentation_costs_under_ten_percent_of_a_step():
    run = train(RunConfig(steps=30, eval_every=1000))
    df = run.metrics.iloc[5:]  # skip warm-up steps
    assert df["instr_time"].median() / df["step_time"].median() < 0.10


def test_memory_figures_equal_the_bytes_of_the_tensors(make_config):
    trainer = Trainer(make_config(steps=3))
    run = trainer.train()
    model, optimizer = trainer.model, trainer.optimizer
    last = run.metrics.iloc[-1]
    params = list(model.parameters())
    assert last["mem_params"] == sum(p.numel() * 4 for p in params)
    assert last["mem_grads"] == sum(p.grad.numel() * p.grad.element_size() for p in params)
    adam_state = sum(s["exp_avg"].nbytes + s["exp_avg_sq"].nbytes + s["step"].nbytes
                     for s in optimizer.state.values())
    assert last["mem_optimizer"] == adam_state


def test_saved_activation_bytes_match_autograd(make_config):
    """Independent count: every tensor autograd saves, deduplicated by storage, parameters excluded."""
    trainer = Trainer(make_config(steps=1, arch="mlp"))
    run = trainer.train()
    model = trainer.model
    x = torch.randint(0, run.info["vocab_size"], (8, 32))
    y = torch.randint(0, run.info["vocab_size"], (8, 32))
    param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in param_ptrs:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(x)
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
    assert run.metrics["mem_activations"].iloc[-1] == sum(seen.values())


def test_saved_activations_are_tracked_once_and_at_evaluations(make_config, monkeypatch):
    """The figure is the same at every training step, so the hooks run on the first logged step and at each
    evaluation only; every record still reports it."""
    from labkit.instrument import ActivationMeter

    tracked = []
    real = ActivationMeter.track
    monkeypatch.setattr(ActivationMeter, "track", lambda self: tracked.append(1) or real(self))
    run = train(make_config(steps=7, eval_every=3))
    assert len(tracked) == 4  # step 1, the evaluations at steps 3 and 6, and the last step (7), also one
    figures = run.metrics["mem_activations"]
    assert len(figures) == 7 and figures.nunique() == 1 and figures.iloc[0] > 0


def test_scales_are_recorded_every_n_steps(make_config):
    run = train(make_config(steps=10, scales_every=5))
    table = run.scales_table
    assert sorted(table["step"].unique()) == [1, 5, 10]
    assert set(table["kind"]) == {"activation", "gradient", "weight"}
    assert (table["rms"] > 0).all()


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_optimizer_groups_merged_by_rule_train_exactly_like_one_group_per_parameter(optimizer):
    """make_optimizer gives u-μP one optimizer group per rule (8, not 30, on this model): the same numbers."""
    from labkit.train import build_for_run, make_optimizer, merge_param_groups

    config = RunConfig(scaling="u-mup", width=32, depth=2, heads=2, seq_len=16, optimizer=optimizer, lr=0.05)
    model, ops, method = build_for_run(config, vocab_size=20)
    twin, _, _ = build_for_run(config, vocab_size=20)  # the same seed: the same initial weights
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters(), strict=True))
    groups = method.param_groups(model, config.lr, config.optimizer)
    merged = make_optimizer(config, groups)
    assert len(groups) == 30 and len(merged.param_groups) == 8
    assert sorted(n for g in merged.param_groups for n in g["members"]) == sorted(g["name"] for g in groups)
    singles = method.param_groups(twin, config.lr, config.optimizer)
    for g in singles:
        del g["group"]  # unlabelled groups stay one per parameter
    separate = make_optimizer(config, singles)
    assert len(separate.param_groups) == 30 and merge_param_groups(singles) == singles
    ids = torch.randint(0, 20, (4, 17), generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        for m, opt in ((model, merged), (twin, separate)):
            opt.zero_grad()
            ops.cross_entropy(m(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten()).backward()
            opt.step()
    for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q), name
