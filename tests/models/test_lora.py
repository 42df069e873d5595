"""LoRA adapters: only the adapters are trained and clipped; the frozen base costs no per-sample work."""

import pytest
import torch
from torch import nn

from dpplat.engine import DPModule
from dpplat.engine.rules.linear import LinearRule
from dpplat.models.lora import LoRALinear, add_lora, freeze_bases
from tests.engine.reference import check_rule


def pretrained():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 16), nn.LayerNorm(16), nn.Tanh(), nn.Linear(16, 4))


@pytest.mark.parametrize("clipping", ["per_layer", "flat"])
def test_the_adapters_clipped_sum_matches_the_per_sample_loop(clipping):
    model = add_lora(pretrained(), rank=3)
    with torch.no_grad():  # a trained adapter: B away from its zero start, so every gradient is non-trivial
        for module in model.modules():
            if isinstance(module, LoRALinear):
                module.lora_b.weight.normal_()
    got, _ = check_rule(model, torch.randn(6, 5, 12), clipping=clipping, C=0.2)
    assert sorted(got) == ["0.lora_a.weight", "0.lora_b.weight", "3.lora_a.weight", "3.lora_b.weight"]


def test_the_frozen_base_gets_no_per_sample_work(monkeypatch):
    model = add_lora(pretrained(), rank=2)
    seen = []
    norm_sq = LinearRule.norm_sq
    monkeypatch.setattr(LinearRule, "norm_sq", lambda self, ctx: seen.append(ctx.module) or norm_sq(self, ctx))
    dp = DPModule(model, max_grad_norm=1.0)
    assert dp.clipping_groups == ["0.lora_a", "0.lora_b", "3.lora_a", "3.lora_b"]
    dp(torch.randn(8, 12)).square().sum().backward()
    adapters = {id(m) for m in model.modules() if isinstance(m, nn.Linear) and m.weight.requires_grad}
    assert len(seen) == 4 and {id(m) for m in seen} == adapters
    assert all(p.grad is None for n, p in model.named_parameters() if "lora" not in n)


def test_an_adapted_model_starts_as_the_pretrained_one_and_refuses_bad_input():
    base = pretrained()
    x = torch.randn(3, 12)
    expected = base(x)
    assert torch.allclose(add_lora(base)(x), expected)
    with pytest.raises(ValueError, match="rank must be at least 1"):
        LoRALinear(nn.Linear(2, 2), rank=0)


class TransposedLinear(nn.Module):
    """A linear layer with its weight stored (in, out), as Hugging Face GPT-2's Conv1D."""

    def __init__(self, nx, nf):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(nx, nf) / nx**0.5)
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x):
        return x @ self.weight + self.bias


def test_adapters_wrap_a_transposed_linear_layer_too():
    from dpplat.engine.rules.conv1d_hf import register_conv1d

    register_conv1d(TransposedLinear)
    torch.manual_seed(0)
    model = add_lora(nn.Sequential(TransposedLinear(12, 16), nn.Tanh(), nn.Linear(16, 4)), rank=3)
    assert isinstance(model[0], LoRALinear) and model[0].lora_b.weight.shape == (16, 3)
    with torch.no_grad():
        model[0].lora_b.weight.normal_()
    got, _ = check_rule(model, torch.randn(6, 5, 12), C=0.2)
    assert sorted(got) == ["0.lora_a.weight", "0.lora_b.weight", "2.lora_a.weight", "2.lora_b.weight"]
    with pytest.raises(ValueError, match="adapts an nn.Linear or a transposed linear layer"):
        LoRALinear(nn.Conv2d(2, 2, 3))


def test_a_trainable_base_is_refused_with_the_count_and_frozen_again_by_freeze_bases():
    model = add_lora(pretrained(), rank=2)
    model[0].base.requires_grad_(True)  # 12 x 16 weights and 16 biases made trainable by mistake
    with pytest.raises(ValueError) as err:
        DPModule(model, max_grad_norm=1.0)
    message = str(err.value)
    assert "208 unexpected trainable parameters" in message and "0.base.weight" in message
    assert "freeze_bases" in message
    assert DPModule(freeze_bases(model), max_grad_norm=1.0).clipping_groups == [
        "0.lora_a", "0.lora_b", "3.lora_a", "3.lora_b"]
    model[1].requires_grad_(True)  # a trainable layer outside the adapters' bases is the user's choice
    assert "1" in DPModule(model, max_grad_norm=1.0).clipping_groups
