"""Virtual batches: micro-batches add up to the logical batch's clipped sum, the noise comes once per logical step,
and a run trained with them matches one trained without."""

import pytest
import torch
from torch import nn

import dpplat.engine.optimizer as optimizer_module
from dpplat.cli import main
from dpplat.engine import DPModule, DPOptimizer
from dpplat.engine.virtual import micro_batches
from dpplat.store import RunStore
from tests.engine.reference import row_losses


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 4 * 4, 5)).double()


@pytest.mark.parametrize("clipping", ["per_layer", "flat"])
def test_micro_batches_add_up_to_the_logical_batchs_clipped_sum(clipping):
    x, w = torch.randn(10, 1, 6, 6, dtype=torch.float64), torch.randn(10, 5, dtype=torch.float64)
    sums = []
    for rows in (None, 3):
        m = model()
        dp = DPModule(m, max_grad_norm=0.05, clipping=clipping)
        for xb, wb in micro_batches(x, w, max_rows=rows):
            row_losses(dp(xb), wb).mean().backward()
        dp.finish_flat_clipping()
        sums.append(torch.cat([p.grad.reshape(-1) for p in m.parameters()]))
    torch.testing.assert_close(sums[0], sums[1], rtol=1e-12, atol=1e-14)


def test_the_noise_is_drawn_once_per_logical_step(monkeypatch):
    calls = []
    draw = optimizer_module.add_gaussian_noise_all_
    monkeypatch.setattr(optimizer_module, "add_gaussian_noise_all_", lambda grads, std, **kw: calls.append(
                        [g.shape for g in grads]) or draw(grads, std, **kw))
    m = model()
    dp = DPModule(m, max_grad_norm=1.0)
    opt = DPOptimizer(torch.optim.SGD(m.parameters(), lr=0.1), dp, noise_multiplier=1.0, expected_batch_size=10)
    x, w = torch.randn(10, 1, 6, 6, dtype=torch.float64), torch.randn(10, 5, dtype=torch.float64)
    for xb, wb in micro_batches(x, w, max_rows=2):
        row_losses(dp(xb), wb).mean().backward()
    opt.step()
    assert calls == [[p.shape for p in m.parameters()]]  # one draw per logical step, not one per micro-batch


def test_an_empty_batch_is_one_micro_batch_and_bad_sizes_are_refused():
    empty = torch.zeros(0, 3)
    assert [b[0].shape[0] for b in micro_batches(empty, max_rows=2)] == [0]
    with pytest.raises(ValueError, match="max_rows must be at least 1"):
        list(micro_batches(empty, max_rows=0))


def test_training_with_virtual_batches_matches_training_without(tmp_path):
    args = ["train", "--dataset", "mnist", "--model", "mlp", "--epsilon", "4", "--epochs", "1", "--batch-size", "128",
            "--subset", "512", "--test-subset", "200", "--accountant", "rdp", "--quiet", "--store", str(tmp_path / "s.db")]
    assert main(args) == 0
    assert main([*args, "--max-physical-batch-size", "32"]) == 0
    plain, virtual = RunStore(tmp_path / "s.db").runs()
    assert virtual.config["max_physical_batch_size"] == 32
    assert virtual.epsilon == pytest.approx(plain.epsilon) and virtual["steps"] == plain["steps"]
    assert virtual.accuracy == pytest.approx(plain.accuracy, abs=0.01)
