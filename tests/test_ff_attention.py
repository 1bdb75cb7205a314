"""Parameter-free spatial self-attention (freqfusion.attention) against the study's module, written out.

The reference is the study's ``FeatureFusionWithSelfAttention._self_attention``: explicit
softmax attention, then ``nn.Dropout`` on its output, then the residual.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from freqfusion.attention import SpatialSelfAttention


def explicit_softmax_attention(x: torch.Tensor) -> torch.Tensor:
    """``softmax(T T^T / sqrt(C)) T`` over the tokens ``T (B, H*W, C)``, back as ``(B, C, H, W)``.

    Returned as the transpose of the ``(B, H*W, C)`` product, the layout the study's module
    drops out (its ``attn_output.transpose(1, 2).view(B, C, H, W)``).
    """
    b, c, h, w = x.shape
    tokens = x.flatten(2).transpose(1, 2)
    weights = torch.softmax(tokens @ tokens.transpose(1, 2) / math.sqrt(c), dim=-1)
    return (weights @ tokens).transpose(1, 2).reshape(b, c, h, w)


def study_attention(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    return x + F.dropout(explicit_softmax_attention(x), p, training=training)


@pytest.mark.parametrize("shape", [(2, 8, 5, 7), (1, 64, 4, 4), (1, 3, 1, 9)])
def test_attention_matches_explicit_in_eval(shape):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    attn = SpatialSelfAttention().eval()
    err = (attn(x) - study_attention(x, 0.1, training=False)).abs().max().item()
    assert err < 1e-5, f"max abs err {err}"
    assert list(attn.parameters()) == [] and attn.state_dict() == {}


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_attention_in_training_is_the_study_module_with_the_same_seed(p):
    x = torch.randn(2, 12, 6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    attn = SpatialSelfAttention(p).train()
    torch.manual_seed(7)
    ours = attn(x)
    torch.manual_seed(7)  # both draw one dropout mask of the output's shape, nothing else
    expected = study_attention(x, p, training=True)
    err = (ours - expected).abs().max().item()
    assert err < 1e-12, f"max abs err {err}"
    torch.manual_seed(8)
    assert not torch.equal(attn(x), ours)  # another seed, another mask


@pytest.mark.parametrize("p", [0.1, 0.3])
def test_training_zeroes_output_entries_with_probability_p_and_scales_the_rest(p):
    x = torch.randn(2, 32, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    attn = SpatialSelfAttention(p)
    eval_out = attn.eval()(x) - x
    torch.manual_seed(3)
    train_out = attn.train()(x) - x
    dropped = train_out == 0
    n = dropped.numel()
    # Binomial(n, p) zeros: 5 standard deviations, a false alarm about once in 2 million seeds.
    # (Dropout on the attention weights instead would leave almost no exact zeros.)
    tolerance = 5 * math.sqrt(p * (1 - p) / n)
    fraction = dropped.double().mean().item()
    assert abs(fraction - p) < tolerance, f"zeros {fraction:.4f}, expected {p} +- {tolerance:.4f}"
    assert not (eval_out == 0).any()  # so every zero above was dropped, none was there before
    kept_err = (train_out[~dropped] - eval_out[~dropped] / (1 - p)).abs().max().item()
    assert kept_err < 1e-12, f"kept entries: max abs err {kept_err}"


def test_attention_dropout_off_in_eval_and_at_zero():
    x = torch.randn(2, 16, 6, 6)
    attn = SpatialSelfAttention(dropout=0.1).eval()
    assert torch.equal(attn(x), attn(x))
    assert torch.allclose(SpatialSelfAttention(dropout=0.0).train()(x), study_attention(x, 0.0, False), atol=1e-5)


def test_training_runs_the_fused_cpu_kernel():
    # Dropout outside SDPA leaves it free to use the flash kernel, forward and backward.
    x = torch.randn(1, 16, 8, 8, requires_grad=True)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # raises if the call cannot use it
        SpatialSelfAttention(0.1).train()(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_attention_gradients_and_bad_dropout():
    x = torch.randn(1, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: SpatialSelfAttention().eval()(t), (x,))
    attn = SpatialSelfAttention(0.3).train()

    def seeded(t):
        torch.manual_seed(4)  # the same mask on every call gradcheck makes
        return attn(t)

    assert torch.autograd.gradcheck(seeded, (x,))
    with pytest.raises(ValueError, match="dropout"):
        SpatialSelfAttention(dropout=1.5)
