"""A real Hugging Face GPT-2 block (its own Conv1D, LayerNorm and attention code) clipped by the engine, against the
float64 per-sample loop: the Conv1D rule is checked on the class ``transformers`` defines, not on a look-alike."""

import pytest
import torch
from torch import nn
from transformers import GPT2Config
from transformers.models.gpt2.modeling_gpt2 import GPT2Block

from dpplat.engine.rules import matmul
from tests.engine.reference import check_rule


class OneBlock(nn.Module):
    """A GPT-2 block (d = 12, two heads, eager attention, no dropout) from (B, T, d) to (B, T, d)."""

    def __init__(self) -> None:
        super().__init__()
        config = GPT2Config(n_embd=12, n_head=2, n_layer=1, n_positions=8, attn_pdrop=0.0, resid_pdrop=0.0,
                            embd_pdrop=0.0)
        config._attn_implementation = "eager"
        self.block = GPT2Block(config)

    def forward(self, x):
        out = self.block(x)
        return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("clipping", ["per_layer", "flat"])
@pytest.mark.parametrize("chunk_floats", [matmul.CHUNK_FLOATS, 64])
def test_a_gpt2_block_matches_the_per_sample_loop(clipping, chunk_floats, monkeypatch):
    monkeypatch.setattr(matmul, "CHUNK_FLOATS", chunk_floats)
    torch.manual_seed(0)
    model = OneBlock()
    assert sum(type(m).__name__ == "Conv1D" for m in model.modules()) == 4
    got, _ = check_rule(model, torch.randn(5, 6, 12), clipping=clipping, C=0.5)
    assert len(got) == 12  # 2 LayerNorms and 4 Conv1Ds, a weight and a bias each
