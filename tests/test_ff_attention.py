"""Parameter-free spatial self-attention (freqfusion.attention): SDPA against the explicit formula."""
import math

import pytest
import torch

from freqfusion.attention import SpatialSelfAttention, blockwise_dropout_attention


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


def explicit_with_mask(tokens: torch.Tensor, mask: torch.Tensor, dropout: float) -> torch.Tensor:
    weights = torch.softmax(tokens @ tokens.transpose(1, 2) / math.sqrt(tokens.shape[-1]), dim=-1)
    return (weights * mask / (1 - dropout)) @ tokens


@pytest.mark.parametrize("block_rows", [1, 7, 40, None])
def test_blockwise_dropout_attention_is_the_formula_with_a_mask_from_the_seed(block_rows):
    tokens = torch.randn(2, 40, 12, dtype=torch.float64)
    torch.manual_seed(5)
    out = blockwise_dropout_attention(tokens, 0.3, block_rows)
    torch.manual_seed(5)  # the mask is one draw from the default generator
    mask = torch.empty(2, 40, 40, dtype=torch.bool).bernoulli_(0.7)
    assert 0.6 < mask.double().mean() < 0.8
    assert torch.allclose(out, explicit_with_mask(tokens, mask, 0.3), atol=1e-12)


@pytest.mark.parametrize("block_rows", [3, 13])
def test_blockwise_dropout_attention_gradients(block_rows):
    tokens = torch.randn(2, 13, 5, dtype=torch.float64, requires_grad=True)

    def seeded(t):
        torch.manual_seed(11)
        return blockwise_dropout_attention(t, 0.25, block_rows)

    assert torch.autograd.gradcheck(seeded, (tokens,))
    grad = torch.randn(2, 13, 5, dtype=torch.float64)
    (ours,) = torch.autograd.grad(seeded(tokens), tokens, grad)
    torch.manual_seed(11)
    mask = torch.empty(2, 13, 13, dtype=torch.bool).bernoulli_(0.75)
    (expected,) = torch.autograd.grad(explicit_with_mask(tokens, mask, 0.25), tokens, grad)
    assert torch.allclose(ours, expected, atol=1e-10)


def test_cpu_training_with_dropout_takes_the_blockwise_path():
    x = torch.randn(2, 6, 5, 4, dtype=torch.float64)
    torch.manual_seed(2)
    out = SpatialSelfAttention(dropout=0.2).train()(x)
    torch.manual_seed(2)
    tokens = x.flatten(2).transpose(1, 2)
    mask = torch.empty(2, 20, 20, dtype=torch.bool).bernoulli_(0.8)
    expected = x + explicit_with_mask(tokens, mask, 0.2).transpose(1, 2).reshape(x.shape)
    assert torch.allclose(out, expected, atol=1e-12)
