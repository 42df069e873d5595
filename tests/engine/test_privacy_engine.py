"""PrivacyEngine semantics: exact update, noise scale, accounting, budget stop, checkpoints, bad inputs."""

import copy
import math

import pytest
import torch
from opacus.accountants import create_accountant
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dpplat import PrivacyEngine
from dpplat.engine import DPModule, PrivacyBudgetExceeded
from tests.engine.reference import expected_clipped_sum, row_losses


def make_data(n=64, d=6, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, d, generator=g), torch.randint(0, classes, (n,), generator=g))


def make_model(d=6, classes=3):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(d, 8), nn.Tanh(), nn.Linear(8, classes))


@pytest.mark.parametrize("clipping", ["per_layer", "flat"])
def test_one_sgd_step_is_minus_the_mean_clipped_gradient(clipping):
    """noise 0, no Poisson, SGD(lr=1): the update is exactly -mean_i clip(g_i)."""
    data = make_data()
    model = make_model().double()
    reference = copy.deepcopy(model)
    loader = DataLoader(data, batch_size=16, shuffle=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    engine = PrivacyEngine(accountant="rdp")
    C = 0.3
    dp_model, dp_opt, dp_loader = engine.make_private(
        module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=0.0,
        max_grad_norm=C, clipping=clipping, poisson_sampling=False,
    )
    x, _ = next(iter(dp_loader))
    x = x.double()
    weights = torch.randn(16, 3, dtype=torch.float64)
    before = {n: p.detach().clone() for n, p in reference.named_parameters()}
    dp_opt.zero_grad()
    row_losses(dp_model(x), weights).mean().backward()
    dp_opt.step()
    bounds = {"0": C / math.sqrt(2), "2": C / math.sqrt(2)} if clipping == "per_layer" else C
    expected = expected_clipped_sum(reference, x, weights, bounds)
    for name, p in dp_model._module.named_parameters():
        assert torch.allclose(p - before[name], -expected[name] / 16, atol=1e-12), name


def test_per_layer_list_of_bounds_sets_total_sensitivity():
    engine = PrivacyEngine()
    model = make_model()
    dp_model, dp_opt, _ = engine.make_private(
        module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        data_loader=DataLoader(make_data(), batch_size=8), noise_multiplier=1.0, max_grad_norm=[3.0, 4.0],
    )
    assert dp_model.per_layer_bounds == [3.0, 4.0]
    assert dp_model.sensitivity == pytest.approx(5.0)
    assert dp_opt.noise_std == pytest.approx(5.0)


@pytest.mark.parametrize("secure", [False, True])
def test_noise_std_matches_sigma_C_over_expected_batch(secure):
    """Gradients of a zero loss are zero, so .grad after step() is pure noise / expected batch size."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(50, 40))
    data = make_data(n=1000, d=50)
    engine = PrivacyEngine(secure_mode=secure)
    sigma, C = 1.3, 2.0
    dp_model, dp_opt, dp_loader = engine.make_private(
        module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
        data_loader=DataLoader(data, batch_size=50), noise_multiplier=sigma, max_grad_norm=C,
    )
    expected_batch = dp_loader.sample_rate * len(data)
    assert expected_batch == pytest.approx(50)
    samples = []
    for _ in range(5):
        dp_opt.zero_grad()
        x, _ = next(iter(dp_loader))
        (dp_model(x) * 0).sum().backward()
        dp_opt.step()
        samples.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    noise = torch.cat(samples).double()
    n = noise.numel()  # 10,200 draws: the std's relative standard error is 1/sqrt(2n) ~ 0.7%
    target = sigma * C / expected_batch
    assert abs(noise.std().item() / target - 1) < 5 / math.sqrt(2 * n)
    assert abs(noise.mean().item()) < 5 * target / math.sqrt(n)


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_epsilon_equals_opacus(accountant):
    model = make_model()
    data = make_data(n=200)
    engine = PrivacyEngine(accountant=accountant)
    dp_model, dp_opt, dp_loader = engine.make_private(
        module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        data_loader=DataLoader(data, batch_size=20), noise_multiplier=1.1, max_grad_norm=1.0,
    )
    for x, y in dp_loader:
        dp_opt.zero_grad()
        nn.functional.cross_entropy(dp_model(x), y).backward()
        dp_opt.step()
    reference = create_accountant(accountant)
    reference.history = [(1.1, 0.1, 10)]
    assert engine.steps_taken == 10
    assert engine.get_epsilon(1e-5) == pytest.approx(reference.get_epsilon(delta=1e-5), rel=1e-9)


def test_make_private_with_epsilon_meets_target_and_budget_stops_before_exceeding():
    model = make_model()
    data = make_data(n=200)
    engine = PrivacyEngine(accountant="rdp")
    dp_model, dp_opt, dp_loader = engine.make_private_with_epsilon(
        module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        data_loader=DataLoader(data, batch_size=40), target_epsilon=2.0, target_delta=1e-3, epochs=2,
        max_grad_norm=1.0,
    )
    allowed = engine.steps_remaining
    assert allowed >= 10  # 2 epochs x 5 batches were planned
    taken = 0
    with pytest.raises(PrivacyBudgetExceeded):
        for _ in range(allowed + 1):
            dp_opt.zero_grad()
            x, y = next(iter(dp_loader))
            nn.functional.cross_entropy(dp_model(x), y).backward()
            dp_opt.step()
            taken += 1
    assert taken == allowed
    assert engine.get_epsilon(1e-3) <= 2.0
    probe = create_accountant("rdp")
    probe.history = [(dp_opt.noise_multiplier, 0.2, allowed + 1)]
    assert probe.get_epsilon(delta=1e-3) > 2.0  # the refused step really would have exceeded it


def test_checkpoint_resume_continues_accountant(tmp_path):
    data = make_data(n=100)

    def fresh():
        engine = PrivacyEngine(accountant="rdp")
        model = make_model()
        triple = engine.make_private(
            module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
            data_loader=DataLoader(data, batch_size=10), noise_multiplier=1.0, max_grad_norm=1.0,
            target_epsilon=5.0, target_delta=1e-3,
        )
        return engine, triple

    def train(triple, steps):
        dp_model, dp_opt, dp_loader = triple
        for _, (x, y) in zip(range(steps), dp_loader):
            dp_opt.zero_grad()
            nn.functional.cross_entropy(dp_model(x), y).backward()
            dp_opt.step()

    engine, triple = fresh()
    train(triple, 7)
    remaining = engine.steps_remaining
    engine.save_checkpoint(tmp_path / "ckpt.pt", extra={"epoch": 0})
    eps = engine.get_epsilon(1e-3)

    resumed, triple2 = fresh()
    assert resumed.load_checkpoint(tmp_path / "ckpt.pt") == {"epoch": 0}
    assert resumed.steps_taken == 7
    assert resumed.get_epsilon(1e-3) == pytest.approx(eps)
    assert resumed.steps_remaining == remaining
    for a, b in zip(triple[0].parameters(), triple2[0].parameters()):
        assert torch.equal(a, b)
    train(triple2, 3)
    assert resumed.steps_taken == 10


def test_empty_poisson_batch_still_steps_with_noise():
    model = make_model()
    engine = PrivacyEngine()
    dp_model, dp_opt, dp_loader = engine.make_private(
        module=model, optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
        data_loader=DataLoader(make_data(n=10), batch_size=1), noise_multiplier=1.0, max_grad_norm=1.0,
    )
    dp_loader.batch_sampler.sample_rate = 1e-9  # force empty batches
    x, y = next(iter(dp_loader))
    assert x.shape == (0, 6) and y.shape == (0,)
    before = [p.detach().clone() for p in model.parameters()]
    dp_opt.zero_grad()
    nn.functional.cross_entropy(dp_model(x), y, reduction="sum").backward()
    dp_opt.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert engine.steps_taken == 1


class Holder(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return self.inner(x) * self.scale


@pytest.mark.parametrize(
    "model,message",
    [
        (nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4)), "GroupNorm"),
        (nn.Sequential(nn.Linear(6, 4), nn.PReLU()), "no DP clipping rule"),
        (Holder(nn.Linear(6, 3)), "'<root>' (Holder)"),
        (nn.Sequential(nn.Embedding(5, 3, sparse=True)), "sparse=False"),
        (nn.Sequential(nn.Embedding(5, 3, scale_grad_by_freq=True)), "scale_grad_by_freq"),
    ],
)
def test_unsupported_models_are_refused_with_the_module_named(model, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        PrivacyEngine().make_private(
            module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            data_loader=DataLoader(make_data(), batch_size=8), noise_multiplier=1.0, max_grad_norm=1.0,
        )


def test_shared_weights_are_refused():
    lin = nn.Linear(6, 6)
    model = nn.Sequential(lin, nn.Tanh(), lin)
    dp_model, _, _ = PrivacyEngine().make_private(
        module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        data_loader=DataLoader(make_data(), batch_size=8), noise_multiplier=1.0, max_grad_norm=1.0,
    )
    with pytest.raises(RuntimeError, match="ran twice"):
        dp_model(torch.randn(3, 6))


class TiedLanguageModel(nn.Module):
    """An input embedding and an output layer sharing one weight, as GPT-2's do."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(11, 6)
        self.mix = nn.Linear(6, 6)
        self.head = nn.Linear(6, 11, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens):
        return self.head(torch.tanh(self.mix(self.embed(tokens)))).mean(1)


def test_tied_weights_are_refused_with_the_fix_and_train_once_untied():
    """Each module is its own clipping group, so a tied weight would take two clipped contributions per sample (up
    to C_embed + C_head in the same coordinates) where the accountant assumes sqrt(C_embed^2 + C_head^2)."""
    model = TiedLanguageModel()
    with pytest.raises(ValueError, match=r"parameter 'head.weight' is the same tensor as 'embed.weight' \(tied "
                                         r"weights\).*model.head.weight = nn.Parameter\(model.head.weight"):
        DPModule(model, max_grad_norm=1.0)
    model.head.weight = nn.Parameter(model.head.weight.detach().clone())  # the fix the message gives
    assert DPModule(model, max_grad_norm=1.0).clipping_groups == ["embed", "mix", "head"]
    tied = TiedLanguageModel()
    tied.embed.weight.requires_grad_(False)  # the other fix: the shared weight frozen
    assert DPModule(tied, max_grad_norm=1.0).clipping_groups == ["mix"]


@pytest.mark.parametrize(
    "kwargs,error",
    [
        (dict(target_epsilon=0.0, target_delta=1e-5), "epsilon must be a positive"),
        (dict(target_epsilon=-1.0, target_delta=1e-5), "epsilon must be a positive"),
        (dict(target_epsilon=1.0, target_delta=0.0), "delta must be in"),
        (dict(target_epsilon=1.0, target_delta=1.0), "delta must be in"),
    ],
)
def test_bad_budgets(kwargs, error):
    model = make_model()
    with pytest.raises(ValueError, match=error):
        PrivacyEngine().make_private_with_epsilon(
            module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            data_loader=DataLoader(make_data(), batch_size=8), epochs=1, max_grad_norm=1.0, **kwargs,
        )


def test_delta_at_or_above_one_over_n_is_refused_unless_allowed():
    model = make_model()
    common = dict(module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                  data_loader=DataLoader(make_data(n=64), batch_size=8), epochs=1, max_grad_norm=1.0,
                  target_epsilon=3.0)
    for delta in (0.05, 1 / 64):
        with pytest.raises(ValueError, match="is at least 1/N"):
            PrivacyEngine().make_private_with_epsilon(**common, target_delta=delta)
    with pytest.warns(UserWarning, match="is at least 1/N"):
        PrivacyEngine().make_private_with_epsilon(**common, target_delta=0.05, allow_large_delta=True)


def test_privacy_statement_names_the_guarantee():
    model = make_model()
    engine = PrivacyEngine(accountant="rdp")
    dp_model, dp_opt, dp_loader = engine.make_private(
        module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        data_loader=DataLoader(make_data(n=100), batch_size=10), noise_multiplier=1.0, max_grad_norm=1.0,
    )
    for x, y in dp_loader:
        dp_opt.zero_grad()
        nn.functional.cross_entropy(dp_model(x), y).backward()
        dp_opt.step()
    text = str(engine.privacy_statement(1e-5))
    assert "add/remove-one" in text and "N): 100" in text and "Steps: 10" in text
    assert f"({engine.get_epsilon(1e-5):.3f}, 1.0e-05)" in text


def test_views_are_translations_of_their_example():
    from dpplat.augment import make_views

    x = torch.randn(3, 1, 8, 8)
    views = make_views(x, 4, pad=2, flip=False, generator=torch.Generator().manual_seed(0))
    assert views.shape == (12, 1, 8, 8)
    for i in range(12):  # each view's centre 4x4 block appears in its own example, shifted by at most 2
        centre = views[i, 0, 2:6, 2:6]
        src = torch.nn.functional.pad(x[i // 4], (2, 2, 2, 2), mode="reflect")[0]
        assert any(torch.equal(centre, src[dy + 2 : dy + 6, dx + 2 : dx + 6]) for dy in range(5) for dx in range(5))
