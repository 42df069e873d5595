"""Every layer rule against a plain per-sample loop in float64 (1e-8), per-layer and flat clipping."""

import pytest
import torch
from torch import nn

from dpplat.engine.rules import matmul
from tests.engine.reference import check_rule


@pytest.fixture(params=["one_chunk", "tiny_chunks"])
def chunking(request, monkeypatch):
    """Run each case with the default chunk size and with chunks of a few samples."""
    if request.param == "tiny_chunks":
        monkeypatch.setattr(matmul, "CHUNK_FLOATS", 64)
    return request.param


CLIPPINGS = ["per_layer", "flat"]
# Small C so that some samples are clipped and some are not.
BOUNDS = [0.05, 1e3]


def seq(*layers):
    return nn.Sequential(*layers)


LINEAR_CASES = {
    "2d": (lambda: seq(nn.Linear(7, 3)), (6, 7)),
    "2d_nobias": (lambda: seq(nn.Linear(7, 5, bias=False)), (4, 7)),
    "seq_ghost": (lambda: seq(nn.Linear(9, 8)), (5, 2, 9)),          # T(p+q) = 34 < 72: ghost norm (flat)
    "seq_instantiate": (lambda: seq(nn.Linear(3, 2)), (5, 6, 3)),     # T(p+q) = 30 > 6: instantiation
    "seq_4d": (lambda: seq(nn.Linear(4, 3)), (3, 2, 5, 4)),
    "two_layers": (lambda: seq(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)), (7, 6)),
}


@pytest.mark.parametrize("case", LINEAR_CASES)
@pytest.mark.parametrize("clipping", CLIPPINGS)
@pytest.mark.parametrize("C", BOUNDS)
def test_linear(case, clipping, C, chunking):
    make, shape = LINEAR_CASES[case]
    torch.manual_seed(0)
    check_rule(make(), torch.randn(shape), clipping=clipping, C=C)


CONV2D_CASES = {
    "plain": dict(in_channels=3, out_channels=4, kernel_size=3),
    "stride_pad": dict(in_channels=2, out_channels=3, kernel_size=3, stride=2, padding=1),
    "dilation": dict(in_channels=2, out_channels=3, kernel_size=(3, 2), dilation=2, padding=(1, 2)),
    "groups": dict(in_channels=4, out_channels=6, kernel_size=3, groups=2, padding=1),
    "depthwise": dict(in_channels=3, out_channels=3, kernel_size=3, groups=3),
    "same_reflect": dict(in_channels=2, out_channels=2, kernel_size=4, padding="same", padding_mode="reflect"),
    "same_zeros": dict(in_channels=2, out_channels=3, kernel_size=2, padding="same"),
    "nobias": dict(in_channels=2, out_channels=3, kernel_size=3, bias=False),
    "tiny_spatial_ghost": dict(in_channels=8, out_channels=8, kernel_size=3, padding=1),
}


@pytest.mark.parametrize("case", CONV2D_CASES)
@pytest.mark.parametrize("clipping", CLIPPINGS)
@pytest.mark.parametrize("C", BOUNDS)
def test_conv2d(case, clipping, C, chunking):
    kwargs = CONV2D_CASES[case]
    torch.manual_seed(0)
    size = 2 if case == "tiny_spatial_ghost" else 7
    check_rule(seq(nn.Conv2d(**kwargs)), torch.randn(5, kwargs["in_channels"], size, size + 1), clipping=clipping, C=C)


@pytest.mark.parametrize("kwargs", [dict(kernel_size=3), dict(kernel_size=3, stride=2, padding=2, dilation=2, groups=2)])
@pytest.mark.parametrize("clipping", CLIPPINGS)
def test_conv1d(kwargs, clipping, chunking):
    torch.manual_seed(0)
    check_rule(seq(nn.Conv1d(4, 6, **kwargs)), torch.randn(5, 4, 11), clipping=clipping, C=0.05)


@pytest.mark.parametrize("clipping", CLIPPINGS)
@pytest.mark.parametrize("shape", [(5, 6, 4, 3), (5, 6), (5, 6, 7)])
def test_group_norm(clipping, shape):
    torch.manual_seed(0)
    gn = nn.GroupNorm(3, 6)
    with torch.no_grad():
        gn.weight.normal_()
        gn.bias.normal_()
    check_rule(seq(gn), torch.randn(shape), clipping=clipping, C=0.5)


@pytest.mark.parametrize("clipping", CLIPPINGS)
@pytest.mark.parametrize("shape,normalized", [((5, 8), 8), ((4, 3, 8), 8), ((4, 3, 2, 5), (2, 5))])
def test_layer_norm(clipping, shape, normalized):
    torch.manual_seed(0)
    check_rule(seq(nn.LayerNorm(normalized)), torch.randn(shape), clipping=clipping, C=0.5)


@pytest.mark.parametrize("clipping", CLIPPINGS)
@pytest.mark.parametrize("padding_idx", [None, 0])
def test_embedding(clipping, padding_idx, chunking):
    torch.manual_seed(0)
    tokens = torch.randint(0, 6, (5, 7))
    check_rule(seq(nn.Embedding(6, 4, padding_idx=padding_idx)), tokens, clipping=clipping, C=0.3)


class TinyTransformerBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(11, 8)
        self.norm = nn.LayerNorm(8)
        self.mlp = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, tokens):
        h = self.embed(tokens)
        h = h + torch.relu(self.mlp(self.norm(h)))
        return self.head(h.mean(1))


def small_cnn():
    return seq(
        nn.Conv2d(3, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.ReLU(),
        nn.Conv2d(4, 6, 3, stride=2), nn.Tanh(), nn.Flatten(), nn.Linear(6 * 3 * 3, 5),
    )


@pytest.mark.parametrize("clipping", CLIPPINGS)
@pytest.mark.parametrize("views", [1, 3])
def test_models_and_augmentation_multiplicity(clipping, views):
    """Several layers together, and K views per sample averaged before clipping."""
    torch.manual_seed(0)
    check_rule(small_cnn(), torch.randn(4 * views, 3, 7, 7), clipping=clipping, C=0.2, views=views)
    check_rule(TinyTransformerBlock(), torch.randint(0, 11, (4 * views, 6)), clipping=clipping, C=0.2, views=views)


@pytest.mark.parametrize("clipping", CLIPPINGS)
def test_empty_batch(clipping):
    torch.manual_seed(0)
    got, _ = check_rule(small_cnn(), torch.randn(0, 3, 7, 7), clipping=clipping)
    assert all((g == 0).all() for g in got.values())


def test_frozen_parameters_are_not_clipped_or_updated():
    torch.manual_seed(0)
    model = seq(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    model[0].bias.requires_grad_(False)
    got, _ = check_rule(model, torch.randn(6, 5), C=0.1)
    assert "0.bias" not in got


class LlamaStyleRMSNorm(nn.Module):
    """An RMSNorm as Llama models write it: a weight and ``variance_epsilon``, computed in float32."""

    def __init__(self, size, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size) + 0.1 * torch.randn(size))
        self.variance_epsilon = eps

    def forward(self, x):
        variance = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(variance + self.variance_epsilon))


@pytest.mark.parametrize("clipping", CLIPPINGS)
@pytest.mark.parametrize("shape", [(5, 8), (4, 3, 8)])
def test_rms_norm(clipping, shape):
    torch.manual_seed(0)
    norm = nn.RMSNorm(8, eps=1e-6)
    with torch.no_grad():
        norm.weight.add_(0.1 * torch.randn(8))
    check_rule(seq(nn.Linear(8, 8), norm, nn.Linear(8, 3)), torch.randn(shape), clipping=clipping, C=0.5)


@pytest.mark.parametrize("clipping", CLIPPINGS)
def test_a_llama_style_rms_norm_registered_by_its_class(clipping):
    from dpplat.engine.rules.rms_norm import register_rms_norm

    register_rms_norm(LlamaStyleRMSNorm)
    torch.manual_seed(0)
    check_rule(seq(nn.Linear(8, 8), LlamaStyleRMSNorm(8), nn.Linear(8, 3)), torch.randn(4, 3, 8), clipping=clipping,
               C=0.5)


class Conv1D(nn.Module):
    """Hugging Face GPT-2's Conv1D as that library defines it: weight (in, out), y = x @ W + b."""

    def __init__(self, nf, nx):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.2)
        self.bias = nn.Parameter(torch.randn(nf) * 0.1)

    def forward(self, x):
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).reshape(*x.shape[:-1], -1)


Conv1D.__module__ = "transformers.pytorch_utils"  # the name dpplat knows it by, without importing transformers


@pytest.mark.parametrize("clipping", CLIPPINGS)
@pytest.mark.parametrize("shape", [(5, 6), (4, 3, 6)])
def test_gpt2_conv1d_is_known_by_name_and_clipped_as_a_transposed_linear(clipping, shape, chunking):
    torch.manual_seed(0)
    check_rule(seq(Conv1D(7, 6), nn.Tanh(), Conv1D(3, 7)), torch.randn(shape), clipping=clipping, C=0.3)
