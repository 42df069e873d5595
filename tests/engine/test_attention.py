"""nn.MultiheadAttention under the engine: the rule's forward is PyTorch's, its clipped sums match the per-sample
loop in float64, pad tokens leave each sample's norm alone, and unsupported settings are refused in one line."""

import copy

import pytest
import torch
from torch import nn

from dpplat.engine import DPModule
from tests.engine.reference import check_rule

CLIPPINGS = ["per_layer", "flat"]


class SelfAttention(nn.Module):
    """Attention over a sequence, then a per-position head; ``lengths`` (if given) pads the tail of each row."""

    def __init__(self, batch_first=True, lengths=None, **kwargs):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=batch_first, **kwargs)
        self.head = nn.Linear(8, 3)
        self.batch_first, self.lengths = batch_first, lengths

    def forward(self, x):
        padding = None
        if self.lengths is not None:
            padding = torch.arange(x.shape[1])[None, :] >= torch.as_tensor(self.lengths[:len(x)])[:, None]
        h = x if self.batch_first else x.transpose(0, 1)
        out, _ = self.attn(h, h, h, key_padding_mask=padding, need_weights=False)
        out = out if self.batch_first else out.transpose(0, 1)
        return self.head(out)


class CrossAttention(nn.Module):
    """Queries from the first 4 features of each position, keys and values from the rest (kdim, vdim != embed_dim)."""

    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(4, 2, kdim=3, vdim=5, batch_first=True)

    def forward(self, x):
        causal = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool).triu(1)
        out, _ = self.attn(x[..., :4], x[..., 4:7], x[..., 3:8], attn_mask=causal)
        return out


@pytest.mark.parametrize("clipping", CLIPPINGS)
@pytest.mark.parametrize("batch_first", [True, False])
def test_self_attention_matches_the_per_sample_loop(clipping, batch_first):
    torch.manual_seed(0)
    check_rule(SelfAttention(batch_first), torch.randn(5, 6, 8), clipping=clipping, C=0.3)


@pytest.mark.parametrize("clipping", CLIPPINGS)
def test_cross_attention_with_other_key_and_value_sizes(clipping):
    torch.manual_seed(0)
    got, _ = check_rule(CrossAttention(), torch.randn(4, 5, 8), clipping=clipping, C=0.2)
    assert {"attn.q_proj_weight", "attn.k_proj_weight", "attn.v_proj_weight", "attn.in_proj_bias"} <= set(got)


@pytest.mark.parametrize("clipping", CLIPPINGS)
def test_a_transformer_encoder_layer(clipping):
    """PyTorch's own block: attention, feed-forward and LayerNorms, trained through the attention rule."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True),
                          nn.Linear(8, 2))
    check_rule(model, torch.randn(4, 5, 8), clipping=clipping, C=0.5)


def test_frozen_projections_are_left_out():
    torch.manual_seed(0)
    model = CrossAttention()
    model.attn.k_proj_weight.requires_grad_(False)
    got, _ = check_rule(model, torch.randn(4, 5, 8), C=0.2)
    assert "attn.k_proj_weight" not in got and "attn.q_proj_weight" in got


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("need_weights,average", [(True, True), (True, False), (False, True)])
def test_the_rules_forward_is_pytorchs(batch_first, need_weights, average):
    """Outputs and attention weights, with a key-padding mask and an attention mask per head (both float, as PyTorch
    wants them alike; boolean masks are in the other tests)."""
    torch.manual_seed(0)
    attn = nn.MultiheadAttention(8, 2, batch_first=batch_first).double()
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    x = x if batch_first else x.transpose(0, 1)
    padding = torch.tensor([[False] * 5, [False] * 3 + [True] * 2, [False] * 4 + [True]])
    padding = torch.zeros(3, 5, dtype=torch.float64).masked_fill(padding, float("-inf"))  # as the float mask is
    mask = torch.randn(3 * 2, 5, 5, dtype=torch.float64)
    kwargs = dict(key_padding_mask=padding, attn_mask=mask, need_weights=need_weights, average_attn_weights=average)
    expected = attn(x, x, x, **kwargs)
    dp = DPModule(copy.deepcopy(attn), max_grad_norm=1.0)
    got = dp(x, x, x, **kwargs)
    assert torch.allclose(got[0], expected[0], atol=1e-12)
    assert (got[1] is None) == (expected[1] is None)
    if need_weights:
        assert torch.allclose(got[1], expected[1], atol=1e-12)


def test_pad_tokens_leave_each_samples_clipped_gradient_alone():
    """Two sequences padded to 7 positions, the pads masked from attention and from the loss, give the same clipped
    sum as each sequence trained alone at its own length: a pad changes no sample's norm."""
    torch.manual_seed(0)
    lengths = [7, 4]
    model = SelfAttention(lengths=lengths).double()
    x = torch.randn(2, 7, 8, dtype=torch.float64)
    weights = torch.randn(2, 7, 3, dtype=torch.float64)
    keep = (torch.arange(7)[None, :] < torch.tensor(lengths)[:, None]).double()[..., None]

    def clipped_sum(inputs, row_weights, row_keep, lengths):
        dp = DPModule(copy.deepcopy(model), max_grad_norm=0.05, loss_reduction="sum")
        dp._module.lengths = lengths
        (torch.tanh(dp(inputs)) * row_weights * row_keep).sum().backward()
        return {name: p.grad for name, p in dp._module.named_parameters()}

    together = clipped_sum(x, weights, keep, lengths)
    alone = [clipped_sum(x[i:i + 1, :n], weights[i:i + 1, :n], keep[i:i + 1, :n], None) for i, n in enumerate(lengths)]
    for name, grad in together.items():
        assert torch.allclose(grad, alone[0][name] + alone[1][name], atol=1e-12), name


def test_unsupported_settings_are_refused_in_one_line():
    with pytest.raises(ValueError, match="add_bias_kv=True is not supported"):
        DPModule(nn.MultiheadAttention(8, 2, add_bias_kv=True), max_grad_norm=1.0)
    with pytest.raises(ValueError, match="add_zero_attn=True is not supported"):
        DPModule(nn.MultiheadAttention(8, 2, add_zero_attn=True), max_grad_norm=1.0)
    dp = DPModule(nn.MultiheadAttention(8, 2), max_grad_norm=1.0)
    x = torch.randn(5, 8)
    with pytest.raises(ValueError, match="needs batched input"):
        dp(x, x, x)


class PositionEmbedding(nn.Module):
    """Token and position embeddings; ``shared`` positions are one (1, T) row for the whole batch, as Hugging Face
    models make them by default."""

    def __init__(self, shared):
        super().__init__()
        self.tokens, self.positions, self.head = nn.Embedding(11, 8), nn.Embedding(6, 8), nn.Linear(8, 2)
        self.shared = shared

    def forward(self, ids):
        positions = torch.arange(ids.shape[1])[None, :]
        if not self.shared:
            positions = positions.expand(ids.shape[0], -1)
        return self.head(self.tokens(ids) + self.positions(positions))


def test_an_input_shared_by_the_batch_is_refused_and_exact_once_expanded():
    """Position ids of shape (1, T) reach the position embedding as one row for the whole batch: its output gradient
    arrives summed over the samples, and no per-sample norm can be taken. The engine refuses it, naming the fix."""
    torch.manual_seed(0)
    ids = torch.randint(0, 11, (4, 6))
    with pytest.raises(RuntimeError, match=r"module .positions. got an input of 1 rows where module .tokens. got 4.*expand"):
        check_rule(PositionEmbedding(shared=True), ids)
    check_rule(PositionEmbedding(shared=False), ids, C=0.3)


class AttentionWeightsInTheLoss(nn.Module):
    """Self-attention whose returned weights (need_weights=True, per head) feed the output as well."""

    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x):
        out, weights = self.attn(x, x, x, need_weights=True, average_attn_weights=False)
        return torch.cat([out, weights.transpose(1, 2).flatten(2)], dim=-1)  # (B, T, 8 + heads * T)


@pytest.mark.parametrize("clipping", CLIPPINGS)
def test_gradients_through_the_returned_attention_weights_match_the_per_sample_loop(clipping):
    torch.manual_seed(0)
    check_rule(AttentionWeightsInTheLoss(), torch.randn(4, 5, 8), clipping=clipping, C=0.3)
