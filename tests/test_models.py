import pytest
import torch
from torch import nn

from labkit.build import build_for_run
from labkit.config import Arch, RunConfig
from labkit.instrument import flops_per_step
from labkit.models import LSTMLanguageModel, build_model, count_parameters


@pytest.mark.parametrize("arch", list(Arch))
def test_every_arch_maps_tokens_to_logits(arch):
    model = build_model(RunConfig(arch=arch, width=32, depth=2, heads=2, seq_len=16).model_config(50))
    logits = model(torch.randint(0, 50, (3, 16)))
    assert logits.shape == (3, 16, 50)


@pytest.mark.parametrize("arch", list(Arch))
def test_default_sizes_are_tiny_but_real(arch):
    n = count_parameters(build_model(RunConfig(arch=arch).model_config(70)))
    assert 100_000 <= n <= 1_000_000


def test_seed_lstm_matches_torch_nn_lstm():
    """The seed's model written with nn.Embedding/nn.LSTM/nn.Linear gives the same logits."""
    torch.manual_seed(0)
    ours = LSTMLanguageModel(vocab_size=40, width=24, depth=2)

    class SeedLanguageModel(nn.Module):  # the seed article's section 5 class, verbatim in structure
        def __init__(self, vocab_size, embedding_dim, hidden_dim):
            super().__init__()
            self.embedding = nn.Embedding(vocab_size, embedding_dim)
            self.rnn = nn.LSTM(embedding_dim, hidden_dim, num_layers=2, batch_first=True)
            self.fc = nn.Linear(hidden_dim, vocab_size)

        def forward(self, x):
            output, _ = self.rnn(self.embedding(x))
            return self.fc(output)

    seed = SeedLanguageModel(40, 24, 24)
    seed.load_state_dict(ours.state_dict())  # same parameter names and shapes
    ids = torch.randint(0, 40, (4, 12))
    torch.testing.assert_close(ours(ids), seed(ids), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scaling", ["standard", "unit", "u-mup"])
def test_transformer_is_causal(scaling):
    model, _, _ = build_for_run(RunConfig(scaling=scaling, width=32, heads=2, seq_len=16), vocab_size=30)
    ids = torch.randint(0, 30, (1, 16), generator=torch.Generator().manual_seed(0))
    changed = ids.clone()
    changed[0, 10] = (ids[0, 10] + 1) % 30
    a, b = model(ids), model(changed)
    torch.testing.assert_close(a[0, :10], b[0, :10])  # the past does not see the change
    assert (a[0, 10:] - b[0, 10:]).abs().amax(dim=-1).min() > 1e-4  # every later position does


@pytest.mark.parametrize("scaling", ["standard", "unit", "u-mup"])
def test_prefix_conditionals_do_not_depend_on_what_follows(scaling):
    """P(w_t | w_<t) from a prefix alone equals the same position's inside any longer text."""
    model, _, _ = build_for_run(RunConfig(scaling=scaling, width=64, heads=4, seq_len=64), vocab_size=40)
    with torch.no_grad():  # move off the initialisation, so attention is not flat
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5 * p.std().nan_to_num(0.0))
    ids = torch.randint(0, 40, (2, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = torch.log_softmax(model(ids), dim=-1)
        for length in (1, 2, 9, 33, 63):
            prefix = torch.log_softmax(model(ids[:, :length]), dim=-1)
            torch.testing.assert_close(prefix, full[:, :length], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", [Arch.TRANSFORMER, Arch.LSTM, Arch.MLP])
def test_flops_per_step_is_about_six_flops_per_weight_per_token(arch):
    """Training costs ≈ 6·N FLOPs per token for the weights that multiply every token."""
    config = RunConfig(arch=arch, width=64, depth=2, heads=2, seq_len=32)
    model = build_model(config.model_config(60))
    ids = torch.randint(0, 60, (4, 32))
    matmul_weights = sum(p.numel() for n, p in model.named_parameters()
                         if p.dim() == 2 and "embedding" not in n)
    flops = flops_per_step(model, ids, nn.functional.cross_entropy)
    ratio = flops / (6 * matmul_weights * ids.numel())
    assert 0.95 < ratio < 1.5, ratio  # attention scores add a little for the Transformer
