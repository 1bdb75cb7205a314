"""CARAFE, content-aware reassembly of features, in pure PyTorch and through mmcv's CUDA op.

Output pixel ``(i, j)`` of ``carafe(x, mask, k, group, up)`` is the weighted sum of the ``k x k``
neighbourhood of input pixel ``(i // up, j // up)`` (zero padding), weighted by that output
pixel's kernel. ``mask`` has ``group * k * k`` channels at the output resolution, laid out as in
mmcv: channel ``g * k * k + dy * k + dx`` weighs the tap ``(dy, dx)`` for the channels of group
``g`` (input channels split into ``group`` contiguous blocks).

Two pure-torch strategies give the same numbers:

* **taps**: a custom autograd function that loops over the ``k * k`` taps and accumulates
  shifted views of the low-resolution input in place, for all ``up * up`` sub-pixel phases at
  once (backward: per phase and tap). The input is zero-padded above and below and flattened
  per channel, so that a tap is one contiguous slice and every elementwise op runs over whole
  planes rather than rows of ``w`` values; taps that would wrap around a row's end get weight
  0. Nothing larger than the output is ever allocated (backward: nothing larger than the
  input), and only ``x`` and ``mask`` are kept for backward. Used on CPU, and on CUDA while the
  (phase, tap) pairs, each a kernel launch or three, are few.
* **unfold**: the low-resolution input is unfolded once and one batched matrix product serves
  all sub-pixel phases: a handful of kernels, one ``k * k``-sized copy of the input. Used on CUDA
  for many (phase, tap) pairs (FreqFusion's 5x5 upsampling: 100).

Neither builds the ``up * up`` times larger unfolded tensor that the textbook version
(unfold, then nearest upsampling) needs. ``impl="auto"`` uses mmcv's op for CUDA tensors when
full mmcv is installed and its op works here (:func:`has_full_mmcv`, checked once, on the first
CUDA tensor); ``FREQFUSION_CARAFE_IMPL=torch|mmcv`` decides what ``auto`` means, like timm's
``TIMM_FUSED_ATTN``.

Every call runs inside the profiler region ``carafe`` (``torch.profiler.record_function``), which
names CARAFE's work in profiler traces and lets a FLOP counter book it by name (a dispatch mode
sees the region's start and end as operators). Outside a profiler the region costs two dispatcher
calls, 10-80 us on a busy CPU: ~0.1% of a smoke training step, less at the paper's sizes.
"""
from __future__ import annotations

import importlib
import logging
import os

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["carafe", "has_full_mmcv", "mmcv_carafe_status"]

IMPL_ENV = "FREQFUSION_CARAFE_IMPL"
_IMPLS = ("auto", "torch", "mmcv")
# On CUDA, past this many (phase, tap) pairs the launches of "taps" cost more than "unfold"'s copy.
_MAX_CUDA_TAPS = 25
# The profiler region every call runs in: traces and FLOP counters find CARAFE's work by this name.
REGION = "carafe"

_log = logging.getLogger(__name__)
# (usable, why) for mmcv's op; found by the first mmcv_carafe_status() call and kept for the process.
_mmcv_status: tuple[bool, str] | None = None
_LITE = "mmcv-lite: no compiled ops (mmcv._ext)"  # the expected case: nothing to report


def has_full_mmcv() -> bool:
    """Whether ``impl="auto"`` uses mmcv's compiled CARAFE op for CUDA tensors (see :func:`mmcv_carafe_status`)."""
    return mmcv_carafe_status()[0]


def mmcv_carafe_status() -> tuple[bool, str]:
    """``(usable, why)``: whether mmcv's CARAFE op can serve CUDA tensors here, and why (not).

    Found once per process, when first asked (``carafe`` asks on its first CUDA tensor): mmcv's
    compiled extension must import (mmcv-lite has none; a build for another torch fails to load)
    and its op must run on a small CUDA input and agree with the pure-PyTorch path, forward and
    backward (a build for another GPU architecture fails only then). Full mmcv that is installed
    but unusable is reported in one logged line, and CARAFE runs in pure PyTorch.
    """
    global _mmcv_status
    if _mmcv_status is None:
        error = mmcv_ext_error()
        if error is None and not torch.cuda.is_available():
            _mmcv_status = False, "no CUDA device (mmcv's CARAFE op is CUDA-only)"
        else:
            if error is None:
                from mmcv.ops import carafe as mmcv_op  # lazy: only present with full mmcv

                error = _op_error(mmcv_op, torch.device("cuda"))
            if error not in (None, _LITE):  # full mmcv is there but does not work: say so, once
                _log.warning("freqfusion: full mmcv is installed but unusable: %s; CARAFE runs in pure PyTorch",
                             error)
            _mmcv_status = error is None, error or "mmcv._ext loads and its CARAFE op agrees with ours here"
    return _mmcv_status


def mmcv_ext_error() -> str | None:
    """None when mmcv's compiled extension ``mmcv._ext`` imports; else why not, in one line.

    Importing is the test, not finding the file: a build for another torch is found but fails to
    load (undefined symbols). ``freqfusion._mmcv_guard`` and ``ablate.compat`` decide by the same
    test whether mmseg needs a stand-in ``mmcv.ops``.
    """
    try:
        importlib.import_module("mmcv._ext")  # torch is loaded: the extension links against its libraries
    except Exception as exc:  # noqa: BLE001  (missing, or a foreign binary that fails to load: ImportError, OSError)
        if isinstance(exc, ModuleNotFoundError) and exc.name == "mmcv._ext":
            return _LITE
        return f"mmcv._ext does not import ({_one_line(exc)})"
    return None


def _op_error(op, device: torch.device) -> str | None:
    """None when ``op`` (mmcv's ``carafe`` signature) matches ours on a small input, forward and backward; else why."""

    def run(fn) -> tuple[Tensor, ...]:
        # Own generator: the check must not move the global RNG, or seeded runs would depend on it.
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(2, 4, 5, 6, generator=gen)
        mask = torch.randn(2, 2, 9, 10, 12, generator=gen).softmax(2).view(2, 18, 10, 12)
        x, mask = x.to(device).requires_grad_(), mask.to(device).requires_grad_()
        out = fn(x, mask, 3, 2, 2)
        return (out, *torch.autograd.grad(out.square().sum(), (x, mask)))

    # Whatever context the first call comes from (no_grad, inference mode, autocast) stays outside.
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
        try:
            theirs = run(op)
        except Exception as exc:  # noqa: BLE001  (a foreign binary: any failure means "do not use it")
            return f"its CARAFE op fails here ({_one_line(exc)})"
        ours = run(_CarafeTaps.apply)
    err = max((a - b).abs().max().item() for a, b in zip(theirs, ours))
    if not err < 1e-4:  # `not <` also catches nan
        return f"its CARAFE op disagrees with the pure-PyTorch one (max abs err {err:.2g})"
    return None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def carafe(x: Tensor, mask: Tensor, kernel_size: int, group: int = 1, up: int = 1,
           impl: str = "auto") -> Tensor:
    """Reassemble ``x`` with per-pixel kernels ``mask``, upsampling by ``up``.

    Args:
        x: Features ``(B, C, h, w)``; ``C`` divisible by ``group``.
        mask: Normalised kernels ``(B, group * kernel_size**2, up * h, up * w)``, mmcv layout.
        kernel_size: Odd reassembly kernel size ``k``.
        group: Channel groups sharing one kernel.
        up: Integer upsampling factor (1 for filtering at the same resolution).
        impl: ``"torch"``, ``"mmcv"`` (CUDA tensors and full mmcv only) or ``"auto"``: the
            ``FREQFUSION_CARAFE_IMPL`` environment variable if set, else mmcv for CUDA tensors
            when full mmcv is installed, else torch.

    Returns:
        ``(B, C, up * h, up * w)`` in the dtype of ``x``. With a 16-bit ``x`` or ``mask``
        (bfloat16, float16) "taps" sums in float32 and mmcv's op runs in float32, both rounding
        only the result; "unfold"'s matrix product takes ``mask`` cast to the dtype of ``x``
        and follows autocast, as any ``bmm`` (its GEMM accumulates in float32).
    """
    _check_shapes(x, mask, kernel_size, group, up)
    with torch.profiler.record_function(REGION):
        if _resolve_impl(impl, x) == "mmcv":
            return _carafe_mmcv(x, mask, kernel_size, group, up)
        if x.is_cuda and (kernel_size * up) ** 2 > _MAX_CUDA_TAPS:
            return _carafe_unfold(x, mask, kernel_size, group, up)
        return _CarafeTaps.apply(x, mask, kernel_size, group, up)


def _resolve_impl(impl: str, x: Tensor) -> str:
    if impl not in _IMPLS:
        raise ValueError(f"carafe impl must be one of {_IMPLS}, got {impl!r}")
    if impl == "auto":
        impl = os.environ.get(IMPL_ENV, "auto") or "auto"
        if impl not in _IMPLS:
            raise ValueError(f"{IMPL_ENV} must be one of {_IMPLS[1:]}, got {impl!r}")
    if impl == "auto":
        return "mmcv" if x.is_cuda and has_full_mmcv() else "torch"
    if impl == "mmcv" and not x.is_cuda:
        raise RuntimeError(f"carafe impl 'mmcv' needs CUDA tensors and full mmcv; got a {x.device.type} tensor")
    if impl == "mmcv" and not has_full_mmcv():
        raise RuntimeError(f"carafe impl 'mmcv' needs CUDA tensors and full mmcv; {mmcv_carafe_status()[1]}")
    return impl


def _check_shapes(x: Tensor, mask: Tensor, k: int, group: int, up: int) -> None:
    if x.dim() != 4 or mask.dim() != 4:
        raise ValueError(f"carafe expects 4-D x and mask, got {tuple(x.shape)} and {tuple(mask.shape)}")
    if k < 1 or k % 2 == 0:
        raise ValueError(f"carafe kernel_size must be odd and positive, got {k}")
    if up < 1 or group < 1 or x.shape[1] % group:
        raise ValueError(f"carafe needs up >= 1 and channels ({x.shape[1]}) divisible by group ({group})")
    b, _, h, w = x.shape
    expected = (b, group * k * k, up * h, up * w)
    if tuple(mask.shape) != expected:
        raise ValueError(f"carafe mask must have shape {expected} for x {tuple(x.shape)}, "
                         f"kernel {k}, group {group}, up {up}; got {tuple(mask.shape)}")


def _carafe_mmcv(x: Tensor, mask: Tensor, k: int, group: int, up: int) -> Tensor:
    from mmcv.ops import carafe as mmcv_carafe  # lazy: only present with full mmcv

    dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    with torch.autocast(device_type="cuda", enabled=False):  # the op takes no bfloat16; run it in float32
        out = mmcv_carafe(x.to(dtype).contiguous(), mask.to(dtype).contiguous(), k, group, up)
    return out.to(x.dtype)


def _carafe_unfold(x: Tensor, mask: Tensor, k: int, group: int, up: int) -> Tensor:
    """Unfold the low-res input once; one batched matmul serves all ``up * up`` phases."""
    b, c, h, w = x.shape
    kk, cg, p = k * k, c // group, k // 2
    # (B, C, h, w, k, k) view of the padded input; the reshape is the one k*k-sized copy.
    cols = F.pad(x, (p, p, p, p)).unfold(2, k, 1).unfold(3, k, 1)
    cols = cols.permute(0, 2, 3, 1, 4, 5).reshape(b * h * w * group, cg, kk)
    # Kernels per low-res pixel and group: (N, k*k, up*up), phases (dy, dx) in the last dim.
    kernels = mask.to(x.dtype).reshape(b, group, kk, h, up, w, up).permute(0, 3, 5, 1, 2, 4, 6)
    out = torch.bmm(cols, kernels.reshape(b * h * w * group, kk, up * up))
    out = out.view(b, h, w, group, cg, up, up).permute(0, 3, 4, 1, 5, 2, 6)
    return out.reshape(b, c, h * up, w * up).to(x.dtype)  # autocast's bmm may return 16 bits


class _CarafeTaps(torch.autograd.Function):
    """CARAFE as in-place sums of shifted flat views, one per tap; saves only x and mask.

    Both passes compute in ``_sum_dtype`` (float32 for 16-bit inputs: an in-place sum of
    elementwise products rounds every partial sum to the dtype it is stored in, so 25 taps in
    bfloat16 would lose several of its 8 bits) and round once, into the dtype of each input or
    output. The conversions ride on copies that are made anyway (the padded input, the
    kernels, the output). No op here is one that autocast recasts, so the function needs no
    ``torch.amp.custom_fwd``/``custom_bwd``.
    """

    @staticmethod
    def forward(ctx, x: Tensor, mask: Tensor, k: int, group: int, up: int) -> Tensor:
        b, c, h, w = x.shape
        cg = c // group
        xflat, kernels = _flat_views(x, mask, k, group, up)
        xflat = xflat[:, :, None, None]  # broadcast over the phases
        # All up * up phases at once, each output plane flat: (B, G, up, up, Cg, h * w).
        out = xflat.new_empty(b, group, up, up, cg, h * w)
        for t in range(k * k):
            shifted = _tap(xflat, t, k, h, w)
            if t == 0:
                torch.mul(shifted, kernels[:, :, t], out=out)
            else:
                out.addcmul_(shifted, kernels[:, :, t])
        ctx.save_for_backward(x, mask)
        ctx.config = (k, group, up)
        # (B, G, up, up, Cg, h, w) -> (B, C, h*up, w*up) in x's dtype: the one output-sized copy.
        result = x.new_empty(b, c, h * up, w * up)
        result.view(b, group, cg, h, up, w, up).copy_(
            out.view(b, group, up, up, cg, h, w).permute(0, 1, 4, 5, 2, 6, 3))
        return result

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        x, mask = ctx.saved_tensors
        k, group, up = ctx.config
        b, c, h, w = x.shape
        cg, p, n = c // group, k // 2, h * w
        xflat, kernels = _flat_views(x, mask, k, group, up)
        grad_out = grad_out.reshape(b, group, cg, h, up, w, up)
        need_x, need_mask = ctx.needs_input_grad[:2]
        grad_xflat = torch.zeros_like(xflat) if need_x else None
        grad_kernels = kernels.new_empty(b, group, k * k, up, up, h, w) if need_mask else None
        # One phase of grad_out at a time: the buffers are input-sized.
        g = xflat.new_empty(b, group, cg, h, w)
        g_flat = g.view(b, group, cg, n)
        prod = xflat.new_empty(b, group, cg, n) if need_mask else None
        for dy in range(up):
            for dx in range(up):
                g.copy_(grad_out[:, :, :, :, dy, :, dx])
                for t in range(k * k):
                    if need_x:  # wrapped taps have weight 0: they add nothing to the other row
                        _tap(grad_xflat, t, k, h, w).addcmul_(g_flat, kernels[:, :, t, dy, dx])
                    if need_mask:
                        torch.mul(_tap(xflat, t, k, h, w), g_flat, out=prod)
                        torch.sum(prod, dim=2, out=grad_kernels[:, :, t, dy, dx].view(b, group, n))
        grad_x = grad_mask = None
        if need_x:
            start = p * w + p
            grad_x = grad_xflat[..., start:start + n].reshape(b, c, h, w).to(x.dtype)
        if need_mask:
            _zero_wrapped_taps(grad_kernels, k)  # those taps read zero padding: no gradient
            grad_mask = torch.empty_like(mask, memory_format=torch.contiguous_format)
            grad_mask.view(b, group, k * k, h, up, w, up).copy_(grad_kernels.permute(0, 1, 2, 5, 3, 6, 4))
        return grad_x, grad_mask, None, None, None


def _sum_dtype(x: Tensor, mask: Tensor) -> torch.dtype:
    """The dtype "taps" computes in: that of ``x`` and ``mask`` together, at least float32."""
    return torch.promote_types(torch.promote_types(x.dtype, mask.dtype), torch.float32)


def _flat_views(x: Tensor, mask: Tensor, k: int, group: int, up: int) -> tuple[Tensor, Tensor]:
    """The input flattened per channel, so that every tap is one contiguous slice, and the kernels.

    ``x`` gets ``p = k // 2`` zero rows above and below, and ``p`` zeros before and after, and
    is flattened: ``(B, G, Cg, (h + 2p) * w + 2p)``. Tap ``(i, j)`` of output pixel ``(y, x')``
    is then at flat index ``(y + i) * w + x' + j``: the tap is the slice of ``h * w`` values
    starting at ``i * w + j``, and the elementwise ops run over whole planes instead of rows of
    ``w`` values (several times faster on CPU for small ``w``). Where ``x' + j - p`` is outside
    the row, the slice wraps into the row above or below instead of reading zero padding; the
    kernel weight of such a tap is set to 0, so it adds nothing (for finite inputs: an ``inf``
    or ``nan`` read that way still spreads, as it would through any neighbouring output).

    The kernels, ``(B, G, k*k, up, up, 1, h * w)``, are the one copy of ``mask`` (phase-major,
    wrapped taps zeroed) and broadcast over the channels. Both are in ``_sum_dtype``.
    """
    b, c, h, w = x.shape
    p = k // 2
    dtype = _sum_dtype(x, mask)
    xflat = x.new_zeros(b, c, (h + 2 * p) * w + 2 * p, dtype=dtype)
    start = p * w + p
    xflat[..., start:start + h * w].view(b, c, h, w).copy_(x)
    kernels = mask.new_empty(b, group, k * k, up, up, h, w, dtype=dtype)
    kernels.copy_(mask.reshape(b, group, k * k, h, up, w, up).permute(0, 1, 2, 4, 6, 3, 5))
    _zero_wrapped_taps(kernels, k)
    return xflat.view(b, group, c // group, -1), kernels.view(b, group, k * k, up, up, 1, h * w)


def _zero_wrapped_taps(kernels: Tensor, k: int) -> None:
    """Zero, in ``(B, G, k*k, up, up, h, w)`` kernels, the taps that reach past the left or right border."""
    b, g, _, up, _, h, w = kernels.shape
    by_column = kernels.view(b, g, k, k, up, up, h, w)
    p = k // 2
    for j in range(k):  # output column x' reads input column x' + j - p
        if j < p:
            by_column[:, :, :, j, ..., :p - j] = 0
        elif j > p:
            by_column[:, :, :, j, ..., max(w - (j - p), 0):] = 0


def _tap(flat: Tensor, t: int, k: int, h: int, w: int) -> Tensor:
    """Tap ``t`` (row-major in the k x k window) of a flat tensor of ``_flat_views``: its ``h * w`` slice."""
    i, j = divmod(t, k)
    start = i * w + j
    return flat[..., start:start + h * w]
