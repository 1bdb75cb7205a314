"""Parameter-free spatial self-attention of the study's "+ Attention" variant.

Tokens are the ``H * W`` positions of a feature map, ``Q = K = V = x``, one head of width ``C``:
``y = x + Dropout(p)(softmax(Q K^T / sqrt(C)) V)``. The dropout acts on the attention's output,
before the residual, as in the study's ``FeatureFusionWithSelfAttention._self_attention``
(``return x + self.dropout(attn_output)``), not on the attention weights.

The attention itself is one ``scaled_dot_product_attention`` call without ``dropout_p``, so that
its fused kernels (flash, memory-efficient; on the CPU too) apply in training as in inference,
and FLOP counters that handle SDPA see the two matrix products (about ``2 * (H * W)**2 * C``
MACs). Under autocast SDPA runs in the lower precision and the residual sum promotes to the
dtype of ``x``.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SpatialSelfAttention"]


class SpatialSelfAttention(nn.Module):
    """Single-head self-attention over spatial positions, no projections, dropout, residual.

    Args:
        dropout: Probability of zeroing an element of the attention output (training mode
            only; the kept ones are scaled by ``1 / (1 - dropout)``).
    """

    def __init__(self, dropout: float = 0.1) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"attention dropout must be in [0, 1), got {dropout}")
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        # (B, 1, H*W, C), contiguous: the fused SDPA kernels need a unit stride on C
        tokens = x.flatten(2).transpose(1, 2).unsqueeze(1).contiguous()
        out = F.scaled_dot_product_attention(tokens, tokens, tokens)
        # Dropout on the (B, C, H, W) view, as the study's module applies it: the same shape and
        # strides, hence the same mask for the same seed.
        return x + self.dropout(out.squeeze(1).transpose(1, 2).reshape(b, c, h, w))
