"""Kernel normaliser of FreqFusion: per-pixel softmax over the k*k filter logits, optionally
shaped by a 2-D Hamming window, in mmcv's CARAFE layout (channel ``g * k * k + tap``)."""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["hamming_window_2d", "normalize_kernel"]


def hamming_window_2d(kernel_size: int, dtype: torch.dtype = torch.float32,
                      device: torch.device | str | None = None) -> Tensor:
    """Outer product of two symmetric 1-D Hamming windows of length ``kernel_size`` (``np.hamming``)."""
    window = torch.hamming_window(kernel_size, periodic=False, dtype=torch.float64, device=device)
    return torch.outer(window, window).to(dtype)


def normalize_kernel(logits: Tensor, kernel_size: int, window: Tensor | None = None) -> Tensor:
    """Turn filter logits into normalised CARAFE kernels.

    Softmax over the ``k * k`` taps of each pixel and group; with ``window`` the kernel is
    multiplied by it and renormalised to sum 1. Both happen in one softmax, because
    ``softmax(l) * w / sum(softmax(l) * w) == softmax(l + log w)`` for a positive window.

    Args:
        logits: ``(B, G * k * k, H, W)``.
        kernel_size: ``k``.
        window: Optional positive ``(k, k)`` window (anything with ``k * k`` elements).

    Returns:
        Kernels of the shape of ``logits``, summing to 1 over each group's taps; float32 for
        16-bit logits (bfloat16, float16), else the dtype of ``logits``.
    """
    b, c, h, w = logits.shape
    taps = kernel_size * kernel_size
    if c % taps:
        raise ValueError(f"kernel logits have {c} channels, not a multiple of {kernel_size}**2")
    # In float32, as CUDA autocast runs softmax (CPU autocast would keep bfloat16): in 16 bits
    # the window's log would be rounded into the logits and the kernels to 8 bits each.
    dtype = torch.promote_types(logits.dtype, torch.float32)
    logits = logits.reshape(b, c // taps, taps, h, w).to(dtype)
    if window is not None:
        if window.numel() != taps:
            raise ValueError(f"window has {window.numel()} elements, expected {taps}")
        logits = logits + window.reshape(1, 1, taps, 1, 1).to(dtype).log()
    return logits.softmax(dim=2).view(b, c, h, w)
