"""Parameter-free spatial self-attention of the study's "+ Attention" variant.

Tokens are the ``H * W`` positions of a feature map, ``Q = K = V = x``, one head of width ``C``:
``x + dropout(softmax(Q K^T / sqrt(C))) V``, through ``scaled_dot_product_attention`` so that the
fused kernels (flash, memory-efficient) apply and FLOP counters that handle SDPA see the two
matrix products (about ``2 * (H * W)**2 * C`` MACs).

One case has no fused kernel: training on the CPU with attention dropout, where SDPA falls back
to its math path and keeps several ``(H*W) x (H*W)`` matrices for backward (about 280 MiB for the
64x64 maps of a 512x512 input). There :class:`_BlockwiseDropoutAttention` computes the same
function a block of query rows at a time and keeps only the tokens, the output, each row's
log-sum-exp and the dropout mask (one byte per weight); backward recomputes each block's
weights from the log-sum-exp (flash attention's scheme, in plain PyTorch ops). Peak memory
drops about 6x and the time slightly (``benchmarks/freqfusion.py``, ``attention`` rows). The
mask is drawn from torch's default generator in one call, so ``torch.manual_seed`` fixes it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

__all__ = ["SpatialSelfAttention", "blockwise_dropout_attention"]

# Attention weights computed at once per block of query rows (batch included): 4 MiB in float32.
_BLOCK_ELEMENTS = 1 << 20


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
        # (B, H*W, C), contiguous: the fused SDPA kernels need a unit stride on C
        tokens = x.flatten(2).transpose(1, 2).contiguous()
        dropout = self.dropout if self.training else 0.0
        if dropout > 0.0 and x.device.type == "cpu":
            out = blockwise_dropout_attention(tokens, dropout)
        else:
            heads = tokens.unsqueeze(1)  # one head
            out = F.scaled_dot_product_attention(heads, heads, heads, dropout_p=dropout).squeeze(1)
        return x + out.transpose(1, 2).reshape(b, c, h, w)

    def extra_repr(self) -> str:
        return f"dropout={self.dropout}"


def blockwise_dropout_attention(tokens: Tensor, dropout: float, block_rows: int | None = None) -> Tensor:
    """``(softmax(T T^T / sqrt(C)) * M / (1 - dropout)) T`` for tokens ``T`` of shape ``(B, L, C)``.

    ``M`` keeps each attention weight with probability ``1 - dropout``. ``block_rows`` query rows
    are computed at a time (default: about a million weights per block).
    """
    b, length, _ = tokens.shape
    if block_rows is None:
        block_rows = max(1, _BLOCK_ELEMENTS // (b * length))
    return _BlockwiseDropoutAttention.apply(tokens, dropout, block_rows)


class _BlockwiseDropoutAttention(torch.autograd.Function):
    """Self-attention with dropout on the weights, a block of query rows at a time.

    With ``S = T T^T * scale``, ``A = softmax(S)``, ``D = A * M / keep`` and ``O = D T``, the
    gradient for an output gradient ``G`` is the sum over the token's three roles::

        dV = D^T G;   dA = (G T^T) * M / keep;   dS = A * (dA - rowsum(G * O))
        dQ = dS T * scale;   dK = dS^T T * scale

    (``rowsum(dA * A) = rowsum(G * O)``, so no full matrix is needed for the softmax backward.)
    """

    @staticmethod
    def forward(ctx, tokens: Tensor, dropout: float, block_rows: int) -> Tensor:
        b, length, c = tokens.shape
        scale, keep = 1.0 / math.sqrt(c), 1.0 - dropout
        mask = torch.empty((b, length, length), dtype=torch.bool, device=tokens.device).bernoulli_(keep)
        out = torch.empty_like(tokens)
        logsumexp = torch.empty((b, length, 1), dtype=tokens.dtype, device=tokens.device)
        keys = tokens.transpose(1, 2)
        for rows in _blocks(length, block_rows):
            weights = torch.bmm(tokens[:, rows], keys).mul_(scale)
            row_max = weights.amax(-1, keepdim=True)
            weights.sub_(row_max).exp_()
            row_sum = weights.sum(-1, keepdim=True)
            logsumexp[:, rows] = row_max + row_sum.log()
            weights.mul_(mask[:, rows]).div_(row_sum * keep)
            out[:, rows] = torch.bmm(weights, tokens)
        ctx.save_for_backward(tokens, out, logsumexp, mask)
        ctx.scale, ctx.keep, ctx.block_rows = scale, keep, block_rows
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        tokens, out, logsumexp, mask = ctx.saved_tensors
        scale, keep = ctx.scale, ctx.keep
        grad_out = grad_out.contiguous()
        out_dot_grad = (grad_out * out).sum(-1, keepdim=True)  # rowsum(G * O)
        grad = torch.zeros_like(tokens)
        keys = tokens.transpose(1, 2)
        for rows in _blocks(tokens.shape[1], ctx.block_rows):
            probs = torch.bmm(tokens[:, rows], keys).mul_(scale).sub_(logsumexp[:, rows]).exp_()  # A
            block_mask, block_grad = mask[:, rows], grad_out[:, rows]
            grad.baddbmm_((probs * block_mask).transpose(1, 2), block_grad, alpha=1.0 / keep)  # dV
            grad_scores = torch.bmm(block_grad, keys).mul_(block_mask).div_(keep)  # dA
            grad_scores.sub_(out_dot_grad[:, rows]).mul_(probs)  # dS
            grad[:, rows].baddbmm_(grad_scores, tokens, alpha=scale)  # dQ
            grad.baddbmm_(grad_scores.transpose(1, 2), tokens[:, rows], alpha=scale)  # dK
        return grad, None, None


def _blocks(length: int, block_rows: int):
    return (slice(start, min(length, start + block_rows)) for start in range(0, length, block_rows))
