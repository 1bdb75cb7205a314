"""CARAFE (freqfusion.carafe) against a direct loop over output pixels, mmcv's op, and autograd."""
import functools
import itertools

import numpy as np
import pytest
import torch

from freqfusion.carafe import IMPL_ENV, _carafe_unfold, _CarafeTaps, carafe, has_full_mmcv


def carafe_loop(x: torch.Tensor, mask: torch.Tensor, k: int, group: int, up: int) -> torch.Tensor:
    """The definition, pixel by pixel: out[c, i, j] = sum over the taps (dy, dx) of
    x[c, i//up + dy - k//2, j//up + dx - k//2] * mask[g(c)*k*k + dy*k + dx, i, j], zero outside x."""
    xs, ms = x.detach().double().numpy(), mask.detach().double().numpy()
    b, c, h, w = xs.shape
    out = np.zeros((b, c, h * up, w * up))
    r, cg = k // 2, c // group
    for n, ch, i, j in itertools.product(range(b), range(c), range(h * up), range(w * up)):
        total = 0.0
        for dy, dx in itertools.product(range(k), range(k)):
            y, xx = i // up + dy - r, j // up + dx - r
            if 0 <= y < h and 0 <= xx < w:
                total += xs[n, ch, y, xx] * ms[n, (ch // cg) * k * k + dy * k + dx, i, j]
        out[n, ch, i, j] = total
    return torch.from_numpy(out)


def _inputs(up, k, group, dtype=torch.float32, size=(3, 5), channels=8, batch=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    h, w = size
    x = torch.randn(batch, channels, h, w, generator=gen, dtype=dtype)
    mask = torch.randn(batch, group * k * k, h * up, w * up, generator=gen, dtype=dtype)
    mask = mask.view(batch, group, k * k, h * up, w * up).softmax(2).view_as(mask)
    return x, mask


@functools.lru_cache(maxsize=None)
def _case(up, k, group):
    """Inputs and loop reference of one parametrised case, computed once for all strategies."""
    x, mask = _inputs(up, k, group, size=(3, 5), batch=1)  # odd sizes, smaller than k: padding
    return x, mask, carafe_loop(x, mask, k, group, up)


STRATEGIES = {
    "taps": lambda x, m, k, g, up: _CarafeTaps.apply(x, m, k, g, up),
    "unfold": _carafe_unfold,
    "public": lambda x, m, k, g, up: carafe(x, m, k, g, up, impl="torch"),
}


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
@pytest.mark.parametrize("up,k,group", list(itertools.product([1, 2], [3, 5], [1, 4])))
def test_carafe_matches_loop(strategy, up, k, group):
    x, mask, ref = _case(up, k, group)
    got = STRATEGIES[strategy](x, mask, k, group, up)
    err = (got.double() - ref).abs().max().item()
    assert got.shape == ref.shape and got.dtype == x.dtype
    assert err < 1e-5, f"{strategy} up={up} k={k} group={group}: max abs err {err}"


@pytest.mark.parametrize("strategy", ["taps", "unfold"])
@pytest.mark.parametrize("up,k,group", [(1, 3, 1), (2, 3, 2), (2, 5, 1)])
def test_carafe_gradcheck(strategy, up, k, group):
    x, mask = _inputs(up, k, group, dtype=torch.float64, size=(3, 4), channels=4, batch=1)
    x.requires_grad_()
    mask.requires_grad_()
    fn = STRATEGIES[strategy]
    assert torch.autograd.gradcheck(lambda a, m: fn(a, m, k, group, up), (x, mask),
                                    fast_mode=(up, k) != (1, 3))  # full Jacobians only where small


def test_carafe_grad_of_one_input_only():
    x, mask = _inputs(2, 3, 1)
    x.requires_grad_()
    carafe(x, mask, 3, 1, 2, impl="torch").sum().backward()
    assert x.grad is not None and mask.grad is None


def test_carafe_saves_only_its_inputs_for_backward():
    """The memory design: no unfolded or upsampled tensor is kept alive for backward."""
    x, mask = _inputs(2, 5, 1, size=(8, 8), channels=16)
    x.requires_grad_()
    mask.requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        out = carafe(x, mask, 5, 1, 2, impl="torch")
    assert sum(saved) <= x.numel() + mask.numel(), saved
    out.sum().backward()


def test_carafe_accepts_channels_last():
    x, mask, ref = _case(2, 3, 4)
    got = carafe(x.to(memory_format=torch.channels_last), mask.to(memory_format=torch.channels_last), 3, 4, 2)
    assert (got.double() - ref).abs().max().item() < 1e-5


def test_carafe_autocast_cpu_computes_in_input_dtype():
    x, mask = _inputs(2, 5, 1, size=(6, 6))
    ref = carafe(x, mask, 5, 1, 2, impl="torch")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = carafe(x.bfloat16(), mask, 5, 1, 2, impl="torch")  # float32 mask, as softmax gives
    assert out.dtype == torch.bfloat16
    err = (out.float() - ref).abs().max().item()
    assert err < 5e-2, f"bfloat16 max abs err {err}"


def test_carafe_rejects_bad_shapes():
    x, mask = _inputs(2, 3, 1)
    with pytest.raises(ValueError, match="mask must have shape"):
        carafe(x, mask[..., :-1], 3, 1, 2)
    with pytest.raises(ValueError, match="odd"):
        carafe(x, mask, 4, 1, 2)
    with pytest.raises(ValueError, match="divisible by group"):
        carafe(x, mask, 3, 3, 2)


def test_carafe_impl_selection(monkeypatch):
    x, mask = _inputs(2, 3, 1)
    with pytest.raises(ValueError, match="impl must be one of"):
        carafe(x, mask, 3, 1, 2, impl="cuda")
    if not (x.is_cuda and has_full_mmcv()):
        with pytest.raises(RuntimeError, match="needs CUDA tensors and full mmcv"):
            carafe(x, mask, 3, 1, 2, impl="mmcv")
        monkeypatch.setenv(IMPL_ENV, "mmcv")  # the variable decides what "auto" means
        with pytest.raises(RuntimeError, match="needs CUDA tensors"):
            carafe(x, mask, 3, 1, 2)
        ref = carafe_loop(x, mask, 3, 1, 2).float()
        torch.testing.assert_close(carafe(x, mask, 3, 1, 2, impl="torch"), ref)
    monkeypatch.setenv(IMPL_ENV, "triton")
    with pytest.raises(ValueError, match=IMPL_ENV):
        carafe(x, mask, 3, 1, 2)


@pytest.mark.cuda
@pytest.mark.skipif(not (torch.cuda.is_available() and has_full_mmcv()),
                    reason="needs a CUDA device and full mmcv (mmcv._ext)")
@pytest.mark.parametrize("up,k,group", list(itertools.product([1, 2], [3, 5], [1, 4])))
def test_carafe_matches_mmcv_on_cuda(up, k, group):
    x, mask = _inputs(up, k, group, size=(9, 13), channels=16)
    x, mask = x.cuda().requires_grad_(), mask.cuda().requires_grad_()
    outs, grads = {}, {}
    for impl in ("mmcv", "torch"):
        out = carafe(x, mask, k, group, up, impl=impl)
        gx, gm = torch.autograd.grad(out.square().sum(), (x, mask))
        outs[impl], grads[impl] = out, (gx, gm)
    err = (outs["mmcv"] - outs["torch"]).abs().max().item()
    assert err < 1e-5, f"forward max abs err {err}"
    for a, b in zip(grads["mmcv"], grads["torch"]):
        assert (a - b).abs().max().item() < 1e-4, f"grad max abs err {(a - b).abs().max().item()}"
    with torch.autocast("cuda", dtype=torch.float16):
        assert carafe(x.half(), mask, k, group, up, impl="mmcv").dtype == torch.float16
