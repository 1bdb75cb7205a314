"""Parameter-free spatial self-attention of the study's "+ Attention" variant.

Tokens are the ``H * W`` positions of a feature map, ``Q = K = V = x``, one head of width ``C``:
``x + dropout(softmax(Q K^T / sqrt(C))) V``, through ``scaled_dot_product_attention`` so that the
fused kernels (flash, memory-efficient) apply and FLOP counters that handle SDPA see the two
matrix products (about ``2 * (H * W)**2 * C`` MACs).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SpatialSelfAttention"]


class SpatialSelfAttention(nn.Module):
    """Single-head self-attention over spatial positions, no projections, plus the residual.

    Args:
        dropout: Dropout on the attention weights, applied in training mode only.
    """

    def __init__(self, dropout: float = 0.1) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"attention dropout must be in [0, 1), got {dropout}")
        self.dropout = dropout

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        # (B, 1 head, H*W, C), contiguous: the fused SDPA kernels need a unit stride on C
        tokens = x.flatten(2).transpose(1, 2).contiguous().unsqueeze(1)
        out = F.scaled_dot_product_attention(
            tokens, tokens, tokens, dropout_p=self.dropout if self.training else 0.0)
        return x + out.squeeze(1).transpose(1, 2).reshape(b, c, h, w)

    def extra_repr(self) -> str:
        return f"dropout={self.dropout}"
