"""Fixed Haar DWT (freqfusion.wavelet) against PyWavelets."""
import numpy as np
import pytest
import pywt
import torch

from freqfusion.wavelet import HaarDWT


@pytest.mark.parametrize("size", [(8, 6), (7, 5), (6, 9), (1, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dwt_matches_pywt(size, dtype):
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0), dtype=dtype)
    low, high = HaarDWT()(x)
    ca, (ch, cv, cd) = pywt.dwt2(x.double().numpy(), "haar", mode="zero")  # over the last two axes
    assert low.shape == ca.shape and high.shape == (2, 3, 3) + ca.shape[-2:] and low.dtype == dtype
    for name, got, ref in [("cA", low, ca), ("cH", high[:, :, 0], ch), ("cV", high[:, :, 1], cv),
                           ("cD", high[:, :, 2], cd)]:
        err = np.abs(got.double().numpy() - ref).max()
        assert err < 1e-5, f"{name} {size}: max abs err {err}"


def test_dwt_is_fixed_with_pytorch_wavelets_buffers():
    dwt = HaarDWT()
    assert list(dwt.parameters()) == []
    state = dwt.state_dict()  # persistent, named and shaped as pytorch_wavelets.DWTForward's
    assert {k: tuple(v.shape) for k, v in state.items()} == {
        "h0_col": (1, 1, 2, 1), "h1_col": (1, 1, 2, 1), "h0_row": (1, 1, 1, 2), "h1_row": (1, 1, 1, 2)}
    s = 2 ** -0.5
    torch.testing.assert_close(state["h1_row"].flatten(), torch.tensor([s, -s]))  # reversed dec_hi
    assert HaarDWT().load_state_dict(state, strict=True)


def test_dwt_gradcheck():
    x = torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: HaarDWT()(t), (x,))
