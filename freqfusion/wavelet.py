"""Fixed one-level 2-D Haar DWT, equal to ``pywt.dwt2(x, 'haar', mode='zero')`` per channel.

The filters are persistent buffers named and shaped as in ``pytorch_wavelets.DWTForward``
(``h0_col``, ``h1_col``: ``(1, 1, 2, 1)``; ``h0_row``, ``h1_row``: ``(1, 1, 1, 2)``, time-reversed
for cross-correlation), the module the study's DWT-FF code used, so its checkpoints load by name.
They are not parameters: the transform learns nothing.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["HaarDWT"]


class HaarDWT(nn.Module):
    """Orthonormal Haar analysis: ``x (B, C, H, W)`` -> ``(low (B, C, h, w), high (B, C, 3, h, w))``.

    ``h = ceil(H / 2)``, ``w = ceil(W / 2)``: odd sizes are zero-padded at the end, as PyWavelets'
    ``mode='zero'`` does for a length-2 filter. ``high[:, :, 0:3]`` are pywt's ``cH, cV, cD``.
    """

    def __init__(self) -> None:
        super().__init__()
        s = 1.0 / math.sqrt(2.0)
        low, high = torch.tensor([s, s]), torch.tensor([s, -s])  # reversed dec_lo, dec_hi
        self.register_buffer("h0_col", low.view(1, 1, 2, 1))
        self.register_buffer("h1_col", high.view(1, 1, 2, 1))
        self.register_buffer("h0_row", low.view(1, 1, 1, 2))
        self.register_buffer("h1_row", high.view(1, 1, 1, 2))

    def filters(self) -> Tensor:
        """The four 2x2 correlation filters ``(4, 1, 2, 2)`` in the order cA, cH, cV, cD."""
        return torch.cat([self.h0_col * self.h0_row,   # low rows, low columns
                          self.h1_col * self.h0_row,   # high along H: horizontal detail
                          self.h0_col * self.h1_row,   # high along W: vertical detail
                          self.h1_col * self.h1_row])  # diagonal detail

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        b, c, height, width = x.shape
        x = F.pad(x, (0, width % 2, 0, height % 2))
        weight = self.filters().to(x.dtype).repeat(c, 1, 1, 1)  # (4C, 1, 2, 2), tiny
        bands = F.conv2d(x, weight, stride=2, groups=c)
        bands = bands.reshape(b, c, 4, bands.shape[-2], bands.shape[-1])
        return bands[:, :, 0], bands[:, :, 1:]
