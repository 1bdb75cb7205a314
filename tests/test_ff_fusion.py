"""FreqFusion (freqfusion.fusion) and its parts against a step-by-step reference written from the spec.

The reference uses the textbook operations (unfold + nearest upsampling for CARAFE, softmax then
window then renormalisation, unfold + cosine_similarity, PyWavelets) and the module's own convs,
so a mismatch points at the optimised code paths, not at the weights.
"""
import itertools
import math

import numpy as np
import pytest
import pywt
import torch
import torch.nn.functional as F

from freqfusion.fusion import FreqFusion
from freqfusion.kernels import hamming_window_2d, normalize_kernel
from freqfusion.sampler import LocalSimGuidedSampler, local_similarity

SWITCHES = list(itertools.product([False, True], repeat=3))  # use_dwt, use_attention, dsconv


def switch_id(combo):
    return "+".join(n for n, on in zip(("dwt", "attention", "dsconv"), combo) if on) or "baseline"


# --- reference operations -------------------------------------------------------------------

def ref_carafe(x, mask, k, group, up):
    b, c, h, w = x.shape
    cols = F.unfold(x, k, padding=k // 2).view(b, c * k * k, h, w)
    cols = F.interpolate(cols, scale_factor=up, mode="nearest")
    cols = cols.view(b, group, c // group, k * k, h * up, w * up)
    return (cols * mask.view(b, group, 1, k * k, h * up, w * up)).sum(3).view(b, c, h * up, w * up)


def ref_normalize(logits, k, window=None):
    b, c, h, w = logits.shape
    kernels = logits.view(b, -1, k * k, h, w).softmax(2)
    if window is not None:
        kernels = kernels * window.reshape(1, 1, k * k, 1, 1)
        kernels = kernels / kernels.sum(2, keepdim=True)
    return kernels.view(b, c, h, w)


def ref_similarity(x, window=3, dilation=2):
    b, c, h, w = x.shape
    cols = F.unfold(x, window, padding=window // 2 * dilation, dilation=dilation)
    cols = cols.view(b, c, window ** 2, h, w)
    centre = window ** 2 // 2
    sims = F.cosine_similarity(cols[:, :, centre:centre + 1], cols, dim=1)
    return torch.cat([sims[:, :centre], sims[:, centre + 1:]], dim=1)


def ref_init_pos(scale, groups):
    h = torch.arange((-scale + 1) / 2, (scale - 1) / 2 + 1) / scale
    grid = torch.stack(torch.meshgrid([h, h], indexing="ij")).transpose(1, 2)
    return grid.repeat(1, groups, 1).reshape(1, -1, 1, 1)


def ref_sampler(s, hr_x, lr_x, feat):
    hr_x, lr_x = s.norm_hr(hr_x), s.norm_lr(lr_x)
    hr_sim, lr_sim = ref_similarity(hr_x), ref_similarity(lr_x)
    if s.direction_feat == "sim_concat":
        hr_x = hr_sim = torch.cat([hr_x, hr_sim], 1)
        lr_x = lr_sim = torch.cat([lr_x, lr_sim], 1)
    offset = (s.offset(lr_sim) + F.pixel_unshuffle(s.hr_offset(hr_sim), 2)) * \
        (s.direct_scale(lr_x) + F.pixel_unshuffle(s.hr_direct_scale(hr_x), 2)).sigmoid()
    offset = offset + ref_init_pos(2, s.groups).to(offset)
    b, _, h, w = offset.shape
    offset = offset.view(b, 2, -1, h, w)
    xs, ys = torch.meshgrid(torch.arange(w) + 0.5, torch.arange(h) + 0.5, indexing="xy")
    coords = torch.stack([xs, ys]).to(offset)[None, :, None]
    coords = 2 * (coords + offset) / torch.tensor([w, h]).to(offset).view(1, 2, 1, 1, 1) - 1
    coords = F.pixel_shuffle(coords.view(b, -1, h, w), 2).view(b, 2, -1, 2 * h, 2 * w)
    coords = coords.permute(0, 2, 3, 4, 1).flatten(0, 1)
    out = F.grid_sample(feat.reshape(b * s.groups, -1, 2 * h, 2 * w), coords, mode="bilinear",
                        align_corners=False, padding_mode="border")
    return out.view(b, -1, 2 * h, 2 * w)


def ref_dwt(x):
    ca, (ch, cv, cd) = pywt.dwt2(x.detach().numpy(), "haar", mode="zero")
    high = np.stack([ch, cv, cd], axis=2)  # (B, C, 3, h, w): bands interleaved per channel
    return torch.from_numpy(ca).to(x), torch.from_numpy(high).flatten(1, 2).to(x)


def ref_attention(x):
    b, c, h, w = x.shape
    t = x.flatten(2).transpose(1, 2)
    out = torch.softmax(t @ t.transpose(1, 2) / math.sqrt(c), -1) @ t
    return x + out.transpose(1, 2).reshape(b, c, h, w)


def ref_freqfusion(ff, hr, lr):
    """The spec's steps 1-8 plus the switches, one line each."""
    lk, hk, g = ff.lowpass_kernel, ff.highpass_kernel, ff.up_group
    win_l = hamming_window_2d(lk).to(hr) if ff.hamming_window else None
    win_h = hamming_window_2d(hk).to(hr) if ff.hamming_window else None
    c_hr, c_lr = ff.hr_channel_compressor(hr), ff.lr_channel_compressor(lr)
    if ff.use_dwt:
        low, high = ref_dwt(c_hr)
        low = F.interpolate(low, size=c_hr.shape[-2:], mode="nearest")
        m_h_hr = ff.content_encoder3(F.interpolate(high, size=c_hr.shape[-2:], mode="nearest"))
    else:
        m_h_hr = ff.content_encoder2(c_hr)
    k_h0 = ref_normalize(m_h_hr, hk, win_h)
    c_hr = c_hr + (c_hr - ref_carafe(c_hr, k_h0, hk, g, 1))
    m_l_hr = ff.content_encoder(low if ff.use_dwt else c_hr)
    k_l0 = ref_normalize(m_l_hr, lk, win_l)
    k_l = ref_normalize(m_l_hr + ref_carafe(ff.content_encoder(c_lr), k_l0, lk, g, 2), lk, win_l)
    k_h = ref_normalize(m_h_hr + ref_carafe(ff.content_encoder2(c_lr), k_l, lk, g, 2), hk, win_h)
    lr_up = ref_carafe(lr, k_l, lk, g, 2)
    hr_out = hr + (hr - ref_carafe(hr, k_h, hk, g, 1))
    if ff.feature_resample:
        lr_up = ref_sampler(ff.dysampler, c_hr, c_lr, lr_up)
    if ff.use_attention:
        hr_out, lr_up = ref_attention(hr_out), ref_attention(lr_up)
    return k_l, hr_out, lr_up


def tiny(**kwargs):
    """A FreqFusion small enough for float64 reference checks (Cc 16: GroupNorm of 2 groups)."""
    return FreqFusion(hr_channels=8, lr_channels=12, compressed_channels=16, **kwargs)


def tiny_inputs(dtype=torch.float64, batch=2, size=(6, 4)):
    gen = torch.Generator().manual_seed(0)
    h, w = size
    hr = torch.randn(batch, 8, 2 * h, 2 * w, generator=gen, dtype=dtype)
    lr = torch.randn(batch, 12, h, w, generator=gen, dtype=dtype)
    return hr, lr


def randomize(module):
    """Larger weights than the init, so that every kernel and offset actually matters."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.3)
    return module


# --- parts ----------------------------------------------------------------------------------

@pytest.mark.parametrize("window", [False, True])
def test_normalize_kernel_matches_softmax_window_renormalise(window):
    logits = torch.randn(2, 2 * 25, 3, 4, dtype=torch.float64)
    win = hamming_window_2d(5, dtype=torch.float64) if window else None
    got = normalize_kernel(logits, 5, win)
    err = (got - ref_normalize(logits, 5, win)).abs().max().item()
    assert err < 1e-12, f"max abs err {err}"
    torch.testing.assert_close(got.view(2, 2, 25, 3, 4).sum(2), torch.ones(2, 2, 3, 4, dtype=torch.float64))


def test_hamming_window_is_numpy_outer():
    for k in (1, 3, 5):
        np.testing.assert_allclose(hamming_window_2d(k, dtype=torch.float64).numpy(),
                                   np.outer(np.hamming(k), np.hamming(k)), atol=1e-12)


def test_local_similarity_matches_unfold_cosine():
    x = torch.randn(2, 16, 7, 5, dtype=torch.float64)
    x[0, :, 3, 2] = 0  # a zero vector: similarity 0, not NaN
    err = (local_similarity(x) - ref_similarity(x)).abs().max().item()
    assert err < 1e-10, f"max abs err {err}"


@pytest.mark.parametrize("direction_feat", ["sim", "sim_concat"])
def test_sampler_matches_reference(direction_feat):
    s = randomize(LocalSimGuidedSampler(16, groups=4, direction_feat=direction_feat)).double()
    torch.testing.assert_close(s.init_pos, ref_init_pos(2, 4).double())
    hr_x, lr_x = torch.randn(2, 16, 8, 6, dtype=torch.float64), torch.randn(2, 16, 4, 3, dtype=torch.float64)
    feat = torch.randn(2, 12, 8, 6, dtype=torch.float64)
    err = (s(hr_x, lr_x, feat) - ref_sampler(s, hr_x, lr_x, feat)).abs().max().item()
    assert err < 1e-10, f"max abs err {err}"


def test_sampler_init_and_arguments():
    s = LocalSimGuidedSampler(16, groups=2, kernel_size=1, norm=False, use_direct_scale=False)
    assert s.offset.weight.shape == (16, 8, 1, 1) and s.hr_offset.weight.shape == (4, 8, 1, 1)
    assert not hasattr(s, "direct_scale") and isinstance(s.norm_hr, torch.nn.Identity)
    out = s(torch.randn(1, 16, 4, 4), torch.randn(1, 16, 2, 2), torch.randn(1, 6, 4, 4))
    assert out.shape == (1, 6, 4, 4)
    s = LocalSimGuidedSampler(16)
    assert s.direct_scale.weight.abs().max() == 0 and s.offset.weight.std() < 0.01
    with pytest.raises(ValueError, match="direction_feat"):
        LocalSimGuidedSampler(16, direction_feat="concat")
    with pytest.raises(ValueError, match="GroupNorm"):
        LocalSimGuidedSampler(52)


# --- FreqFusion -----------------------------------------------------------------------------

@pytest.mark.parametrize("combo", SWITCHES, ids=switch_id)
def test_freqfusion_matches_reference(combo):
    use_dwt, use_attention, dsconv = combo
    ff = randomize(tiny(use_dwt=use_dwt, use_attention=use_attention, dsconv=dsconv)).double().eval()
    hr, lr = tiny_inputs()
    with torch.no_grad():
        got, ref = ff(hr, lr), ref_freqfusion(ff, hr, lr)
    for name, a, b in zip(("mask_lr", "hr_out", "lr_up"), got, ref):
        assert a.shape == b.shape, name
        err = (a - b).abs().max().item()
        # relative: the Haar buffers hold float32 values of 1/sqrt(2), pywt uses float64
        assert err < 1e-7 * max(1.0, b.abs().max().item()), f"{switch_id(combo)} {name}: max abs err {err}"


@pytest.mark.parametrize("kwargs", [
    dict(hamming_window=True, direction_feat="sim_concat"),
    dict(up_group=2, feature_resample_group=2, lowpass_kernel=3, highpass_kernel=5, use_dwt=True),
    dict(feature_resample=False, encoder_dilation=2, hamming_window=True),
], ids=["hamming-sim_concat", "groups-kernels-dwt", "no-resample-dilation"])
def test_freqfusion_arguments_match_reference(kwargs):
    ff = randomize(tiny(**kwargs)).double().eval()
    hr, lr = tiny_inputs()
    with torch.no_grad():
        for name, a, b in zip(("mask_lr", "hr_out", "lr_up"), ff(hr, lr), ref_freqfusion(ff, hr, lr)):
            err = (a - b).abs().max().item()
            assert err < 1e-7 * max(1.0, b.abs().max().item()), f"{kwargs} {name}: max abs err {err}"


def test_hr_residual_off_returns_the_highpass_part():
    ff = randomize(tiny(hr_residual=False, feature_resample=False)).double().eval()
    hr, lr = tiny_inputs()
    with torch.no_grad():
        _, hr_out, _ = ff(hr, lr)
        _, hr_res, _ = ref_freqfusion(ff, hr, lr)
    torch.testing.assert_close(hr_out, hr_res - hr)


@pytest.mark.parametrize("combo", SWITCHES, ids=switch_id)
def test_gradients_reach_every_parameter(combo):
    use_dwt, use_attention, dsconv = combo
    ff = tiny(use_dwt=use_dwt, use_attention=use_attention, dsconv=dsconv).train()
    hr, lr = tiny_inputs(dtype=torch.float32)
    hr.requires_grad_()
    mask, hr_out, lr_up = ff(hr, lr)
    (hr_out.square().mean() + lr_up.square().mean() + mask.square().mean()).backward()
    missing = [n for n, p in ff.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"{switch_id(combo)}: no gradient for {missing}"
    assert hr.grad is not None


def test_gradcheck_tiny_freqfusion():
    ff = randomize(tiny(use_dwt=True, use_attention=True, feature_resample=False)).double().eval()
    hr, lr = tiny_inputs(batch=1, size=(2, 2))
    hr.requires_grad_()
    lr.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: ff(a, b)[1:], (hr, lr), fast_mode=True)


@pytest.mark.parametrize("dsconv", [False, True])
def test_init_small_filter_generators(dsconv):
    ff = tiny(dsconv=dsconv, use_dwt=True)
    generators = [ff.content_encoder, ff.content_encoder2]
    last = [g[-1] if dsconv else g for g in generators]
    for conv in last:  # normal(std=0.001), not overwritten by the xavier loop
        assert conv.weight.std() < 0.002 and conv.bias.abs().max() == 0
    depthwise = [g[0] for g in generators] if dsconv else []
    for conv in [ff.hr_channel_compressor, ff.content_encoder3] + depthwise:
        assert conv.weight.std() > 0.01  # xavier-uniform
    if dsconv:
        assert ff.content_encoder[0].groups == 16 and ff.content_encoder[1].kernel_size == (1, 1)


def test_state_dict_names_follow_upstream_and_study():
    keys = set(tiny(use_dwt=True, dsconv=True).state_dict())
    expected = {
        "hamming_lowpass", "hamming_highpass", "hr_channel_compressor.weight", "lr_channel_compressor.weight",
        "content_encoder.0.weight", "content_encoder.1.weight", "content_encoder2.1.bias",
        "content_encoder3.weight", "dwt.h0_col", "dwt.h1_row", "dysampler.init_pos",
        "dysampler.offset.weight",
        "dysampler.hr_offset.weight", "dysampler.direct_scale.weight", "dysampler.hr_direct_scale.bias",
        "dysampler.norm_hr.weight", "dysampler.norm_lr.bias"}
    assert expected <= keys, expected - keys
    assert {"content_encoder.weight", "content_encoder2.weight"} <= set(tiny().state_dict())


def test_freqfusion_train_eval_and_autocast():
    ff = tiny(use_attention=True)
    hr, lr = tiny_inputs(dtype=torch.float32)
    ff.eval()
    with torch.no_grad():
        first, second = ff(hr, lr)[2], ff(hr, lr)[2]
    assert torch.equal(first, second)  # eval: no dropout
    ff.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mask, hr_out, lr_up = ff(hr, lr)
    assert torch.isfinite(hr_out.float()).all() and torch.isfinite(lr_up.float()).all()
    (hr_out.float().mean() + lr_up.float().mean()).backward()


def test_freqfusion_rejects_mismatched_sizes():
    ff = tiny()
    with pytest.raises(ValueError, match="exactly twice"):
        ff(torch.randn(1, 8, 7, 8), torch.randn(1, 12, 4, 4))
