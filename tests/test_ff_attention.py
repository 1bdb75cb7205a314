"""Parameter-free spatial self-attention (freqfusion.attention): SDPA against the explicit formula."""
import math

import pytest
import torch

from freqfusion.attention import SpatialSelfAttention


def attention_explicit(x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    tokens = x.flatten(2).transpose(1, 2)  # (B, HW, C)
    weights = torch.softmax(tokens @ tokens.transpose(1, 2) / math.sqrt(c), dim=-1)
    return x + (weights @ tokens).transpose(1, 2).reshape(b, c, h, w)


@pytest.mark.parametrize("shape", [(2, 8, 5, 7), (1, 64, 4, 4), (1, 3, 1, 9)])
def test_attention_matches_explicit_in_eval(shape):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    attn = SpatialSelfAttention().eval()
    err = (attn(x) - attention_explicit(x)).abs().max().item()
    assert err < 1e-5, f"max abs err {err}"
    assert list(attn.parameters()) == [] and attn.state_dict() == {}


def test_attention_dropout_only_in_training():
    x = torch.randn(2, 16, 6, 6)
    attn = SpatialSelfAttention(dropout=0.1)
    attn.eval()
    assert torch.equal(attn(x), attn(x))
    attn.train()
    torch.manual_seed(0)
    first = attn(x)
    torch.manual_seed(1)
    second = attn(x)
    assert not torch.allclose(first, second) and not torch.allclose(first, attention_explicit(x))
    assert torch.allclose(SpatialSelfAttention(dropout=0.0).train()(x), attention_explicit(x), atol=1e-5)


def test_attention_gradients_and_bad_dropout():
    x = torch.randn(1, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: SpatialSelfAttention().eval()(t), (x,))
    with pytest.raises(ValueError, match="dropout"):
        SpatialSelfAttention(dropout=1.5)
