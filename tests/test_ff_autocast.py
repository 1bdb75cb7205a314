"""freqfusion under bfloat16 autocast on the CPU against float32: block by block, then the head and
the whole SegNeXt-T segmentor.

bfloat16 keeps 8 significant bits, so one rounding to nearest errs by at most ``U = 2**-8``
(3.9e-3) of the value. Each block test gives both runs the same inputs, already rounded to
bfloat16, so that every difference is a rounding inside the block, and allows exactly what the
block's arithmetic must cost (derived at each test); float32's own error (``2**-24`` per
rounding, summed over at most a few hundred terms) is covered by a slack of ``1e-5`` of the
scale. A block that rounded more often than it must (a sum accumulated in bfloat16, sampling
coordinates in bfloat16) fails these bounds by more than 10x.
"""
import math

import pytest
import torch
from mmengine.config import Config
from test_ff_head import SEGNEXT_T, build

from freqfusion.attention import SpatialSelfAttention
from freqfusion.carafe import _carafe_unfold, carafe
from freqfusion.kernels import hamming_window_2d, normalize_kernel
from freqfusion.sampler import LocalSimGuidedSampler
from freqfusion.wavelet import HaarDWT

U = 2.0 ** -8  # unit roundoff of bfloat16
SLACK = 1e-5  # float32 arithmetic, relative to the scale of the values summed


def autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def bf16_values(*shape, seed, scale=1.0):
    """Float32 random values that bfloat16 holds exactly."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale
    return x.bfloat16().float()


def assert_within(got, ref, bound, what):
    """``|got - ref| <= bound`` elementwise; the message gives the worst ratio and the errors."""
    err = (got.float() - ref).abs()
    assert torch.isfinite(got).all() and (err <= bound).all(), (
        f"{what}: max abs err {err.max().item():.3e}, {(err / bound).max().item():.2f} x the "
        f"allowed bound; relative (normwise) err {(err.norm() / ref.norm()).item():.2e}")


def kernels(shape, k, seed):
    """Normalised CARAFE kernels (float32) from logits of unit scale."""
    b, g, h, w = shape
    logits = bf16_values(b, g * k * k, h, w, seed=seed, scale=2.0)
    return logits.view(b, g, k * k, h, w).softmax(2).view_as(logits)


# --- CARAFE ------------------------------------------------------------------------------------

CARAFE_CASES = [(5, 2, 1), (3, 1, 1), (5, 2, 2)]  # (kernel, up, group): FreqFusion's two, grouped


@pytest.mark.parametrize("mask_dtype", [torch.float32, torch.bfloat16], ids=["mask32", "mask16"])
@pytest.mark.parametrize("k,up,group", CARAFE_CASES)
def test_carafe_taps_rounds_only_its_result(k, up, group, mask_dtype):
    # bfloat16 x (a conv's output under autocast), float32 kernels (the normaliser's) or bfloat16
    # ones. The products of a bfloat16 x and a kernel are exact or nearly so in float32, the sum
    # of k*k of them too: the one rounding is the result's, into x's bfloat16: <= U * |ref|.
    x = bf16_values(2, 8, 12, 12, seed=0)
    mask = kernels((2, group, 12 * up, 12 * up), k, seed=1).to(mask_dtype).float()
    ref = carafe(x, mask, k, group, up, impl="torch")
    with autocast():
        got = carafe(x.bfloat16(), mask.to(mask_dtype), k, group, up, impl="torch")
    assert got.dtype == torch.bfloat16
    assert_within(got, ref, U * ref.abs() + SLACK * x.abs().max(), f"carafe k{k} up{up} g{group}")


@pytest.mark.parametrize("k,up,group", CARAFE_CASES)
def test_carafe_unfold_follows_autocast_bmm(k, up, group):
    # The CUDA strategy, run here on the CPU: its bmm runs in bfloat16 under autocast, so the
    # float32 kernels are rounded (<= U of each weight: U * carafe(|x|, mask) in all) and so is
    # the result (U * |ref|); the GEMM accumulates in float32.
    x = bf16_values(2, 8, 12, 12, seed=0)
    mask = kernels((2, group, 12 * up, 12 * up), k, seed=1)
    ref = carafe(x, mask, k, group, up, impl="torch")
    with autocast():
        got = _carafe_unfold(x.bfloat16(), mask, k, group, up)
    assert got.dtype == torch.bfloat16
    bound = U * (ref.abs() + carafe(x.abs(), mask, k, group, up, impl="torch")) + SLACK * x.abs().max()
    assert_within(got, ref, bound, f"unfold k{k} up{up} g{group}")


@pytest.mark.parametrize("mask_dtype", [torch.float32, torch.bfloat16], ids=["mask32", "mask16"])
@pytest.mark.parametrize("k,up,group", CARAFE_CASES)
def test_carafe_backward_under_autocast(k, up, group, mask_dtype):
    # The gradients are sums of products of bfloat16 values (the output gradient, x, the kernels),
    # accumulated in float32, rounded once into each input's dtype: <= U * |ref| for bfloat16,
    # and float32's error alone for float32 (its scale: the same sums over magnitudes).
    x = bf16_values(2, 8, 12, 12, seed=0)
    mask = kernels((2, group, 12 * up, 12 * up), k, seed=1).to(mask_dtype).float()
    grad_out = bf16_values(2, 8, 12 * up, 12 * up, seed=2)

    def grads(x, mask, grad_out):
        x, mask = x.clone().requires_grad_(), mask.clone().requires_grad_()
        carafe(x, mask, k, group, up, impl="torch").backward(grad_out)
        return x.grad, mask.grad

    grad_x, grad_mask = grads(x, mask, grad_out)
    scale_x, scale_mask = grads(x.abs(), mask, grad_out.abs())
    x16, m16 = x.bfloat16().requires_grad_(), mask.to(mask_dtype).requires_grad_()
    with autocast():
        out = carafe(x16, m16, k, group, up, impl="torch")
    out.backward(grad_out.bfloat16())
    assert x16.grad.dtype == torch.bfloat16 and m16.grad.dtype == mask_dtype
    assert_within(x16.grad, grad_x, U * grad_x.abs() + SLACK * scale_x, "grad x")
    mask_u = U if mask_dtype == torch.bfloat16 else 0.0
    assert_within(m16.grad, grad_mask, mask_u * grad_mask.abs() + SLACK * scale_mask, "grad mask")


# --- kernel normaliser, DWT --------------------------------------------------------------------

@pytest.mark.parametrize("window", [False, True])
def test_kernel_normaliser_works_in_float32(window):
    # 16-bit logits are normalised in float32 and the kernels stay float32: the same arithmetic
    # on the same values as float32 logits, hence the same bits (in bfloat16 the window's log
    # would be rounded into the logits, and each weight to U).
    logits = bf16_values(2, 2 * 25, 6, 5, seed=3, scale=3.0)
    win = hamming_window_2d(5) if window else None
    ref = normalize_kernel(logits, 5, win)
    with autocast():
        got = normalize_kernel(logits.bfloat16(), 5, win)
    assert got.dtype == torch.float32
    assert torch.equal(got, ref), f"max abs err {(got - ref).abs().max().item():.3e}"


def test_dwt_under_autocast_rounds_only_its_result():
    # The conv runs in bfloat16 with exact taps (+-0.5) and float32 accumulation: the Haar sums of
    # four bfloat16 values are exact, and the one rounding is the result's: <= U * |ref|.
    x = bf16_values(2, 8, 16, 15, seed=4)
    ref_low, ref_high = HaarDWT()(x)
    with autocast():
        low, high = HaarDWT()(x.bfloat16())
    assert low.dtype == high.dtype == torch.bfloat16
    for name, got, ref in (("low", low, ref_low), ("high", high, ref_high)):
        assert_within(got, ref, U * ref.abs() + SLACK * ref.abs().max(), f"dwt {name}")


# --- sampler -----------------------------------------------------------------------------------

def sampler(channels=32, groups=4):
    """A sampler whose offsets are about a pixel (its own init gives ~0.001 px: nothing to test)."""
    torch.manual_seed(0)
    s = LocalSimGuidedSampler(channels, groups=groups)
    with torch.no_grad():
        for conv in (s.offset, s.hr_offset, s.direct_scale, s.hr_direct_scale):
            torch.nn.init.xavier_uniform_(conv.weight)
    return s


def test_sampler_computes_coordinates_in_float32():
    # bfloat16 offsets and features (convs' outputs under autocast) at a 64x64 output: in
    # bfloat16 a coordinate near pixel 64 would be resolved to 0.5 px. In float32 it is exact to
    # ~1e-5 px, which moves a bilinear sample by <= 1e-5 * 2 * max|feat|; the result is rounded
    # once into feat's bfloat16: <= U * |ref|.
    s = sampler()
    feat = bf16_values(2, 16, 64, 64, seed=5)
    offset = bf16_values(2, 2 * 4 * 4, 32, 32, seed=6, scale=0.5)
    ref = s.sample(feat, offset)
    with autocast():
        got = s.sample(feat.bfloat16(), offset.bfloat16())
    assert got.dtype == torch.bfloat16
    assert_within(got, ref, U * ref.abs() + 10 * SLACK * feat.abs().max(), "sample")


def test_sampler_forward_under_autocast():
    # The offsets pass six bfloat16 roundings (GroupNorm, similarity, conv, gate conv, sigmoid,
    # product), each <= U of an offset of at most about a pixel (0.9 px here): <= 6 U px. A bilinear sample moves by
    # at most that times the difference between neighbouring values (<= 2 max|feat|), and is
    # rounded once (U * max|feat|): <= 13 U * max|feat|.
    s = sampler()
    hr, lr = bf16_values(2, 32, 32, 32, seed=7), bf16_values(2, 32, 16, 16, seed=8)
    feat = bf16_values(2, 16, 32, 32, seed=9)
    with torch.no_grad():
        ref = s(hr, lr, feat)
        with autocast():
            got = s(hr.bfloat16(), lr.bfloat16(), feat.bfloat16())
    assert got.dtype == torch.bfloat16
    assert_within(got, ref, 13 * U * feat.abs().max().expand_as(ref), "sampler")


# --- attention ---------------------------------------------------------------------------------

@pytest.mark.parametrize("channels,scale", [(32, 0.3), (64, 0.25), (64, 1.0)])
def test_attention_under_autocast(channels, scale):
    # SDPA runs in bfloat16: exact products, float32 sums and softmax. Rounded, to first order
    # and each by <= U of itself, are: the output O; the weights P before they multiply V
    # (<= U * P|V| in all, P|V| the attention applied to |x|); and the scores s if the kernel
    # scales q in bfloat16, which moves each weight by <= 2 U max|s| of itself (another
    # 2 max|s| U * P|V|). The residual with a float32 x stays float32.
    x = bf16_values(2, channels, 8, 8, seed=10, scale=scale)
    attn = SpatialSelfAttention().eval()
    ref = attn(x)
    with autocast():
        got = attn(x)
    assert got.dtype == torch.float32
    tokens = x.flatten(2).transpose(1, 2)
    scores = tokens @ tokens.transpose(1, 2) / math.sqrt(channels)
    mean_abs = (scores.softmax(-1) @ tokens.abs()).transpose(1, 2).reshape(x.shape)  # P|V|
    bound = U * ((ref - x).abs() + (1 + 2 * scores.abs().max()) * mean_abs) + SLACK * x.abs().max()
    assert_within(got - x, ref - x, bound, f"attention C={channels}")


# --- the head and the segmentor ---------------------------------------------------------------
# Past the blocks, errors compound and no longer have a sharp bound: n roundings of <= U each,
# with independent signs, add up to about sqrt(n) U normwise. Attention also amplifies an input
# error by up to 2 max|s| where its scores s nearly tie, which is why it is bounded block by block
# above and only normwise here. The bounds below are about twice the sqrt(n) U estimate; the
# errors observed are a sixth to a half of them.

TABLE2 = {"baseline": {}, "dwt": {"use_dwt": True}, "attention": {"use_attention": True},
          "dwt+attention": {"use_dwt": True, "use_attention": True}}


def segmentor(switches):
    """SegNeXt-T with FreqFusionHamHead, its FreqFusion convs at xavier scale (see ``sampler``)."""
    cfg = Config.fromfile(str(SEGNEXT_T)).model
    cfg.backbone.init_cfg = None  # nothing to download
    cfg.decode_head.type = "FreqFusionHamHead"
    torch.manual_seed(0)
    model = build(cfg, **switches).eval()
    with torch.no_grad():
        for m in model.decode_head.freqfusions.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.xavier_uniform_(m.weight)
    return model


def run_both(module, inputs, inputs16):
    """float32 and bfloat16-autocast outputs; the Hamburger draws random NMF bases in every call."""
    with torch.no_grad():
        torch.manual_seed(5)
        ref = module(*inputs)
        with autocast():
            torch.manual_seed(5)
            got = module(*inputs16)
    assert got.dtype == torch.bfloat16 and torch.isfinite(got).all()
    return got.float(), ref


def relative_error(got, ref):
    return ((got.float() - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize("variant", TABLE2)
def test_head_under_autocast(variant):
    head = segmentor(TABLE2[variant]).decode_head
    # MSCAN-T's stages for a 128x128 image, in bfloat16 as an autocast backbone returns them
    feats = [bf16_values(1, c, 128 // s, 128 // s, seed=20 + i)
             for i, (c, s) in enumerate([(32, 4), (64, 8), (160, 16), (256, 32)])]
    fused = {}  # FreqFusion's output, the squeeze conv's input, per run

    def keep_input(module, args, out):
        fused[torch.is_autocast_enabled("cpu")] = args[0]

    head.squeeze.register_forward_hook(keep_input)
    got, ref = run_both(head, [feats], [[f.bfloat16() for f in feats]])
    # FreqFusion: input, CARAFE result, high-pass difference, sampler output, attention output
    # and residual, per block: about 12 roundings, sqrt(12) U ~ 3.5 U.
    err = relative_error(fused[True], fused[False])
    assert err < 7 * U, f"{variant}: fused features, relative err {err:.2e}"
    # Then squeeze, 7 NMF iterations of 3 bmm and a sharp softmax, align, cls_seg: ~40, 6.3 U.
    err = relative_error(got, ref)
    assert err < 12 * U, f"{variant}: logits, relative err {err:.2e}"
    # A pixel flips only where the top-2 logit margin is below the error; the margins of a
    # randomly initialised head are small (median ~4x the largest error): most pixels, not all.
    agree = (got.argmax(1) == ref.argmax(1)).double().mean().item()
    assert agree >= 0.95, f"{variant}: argmax agrees on {agree:.1%} of {ref[0, 0].numel()} pixels"


@pytest.mark.slow  # bfloat16 convs are emulated on CPUs without AVX512-BF16: 15-80 s on 2 cores
def test_segmentor_under_autocast():
    # The whole model, all of Table 2's switches on; the MSCAN-T backbone adds its ~100
    # roundings (sqrt: 10 U) to the head's.
    model = segmentor(TABLE2["dwt+attention"])
    image = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(30))
    got, ref = run_both(lambda x: model(x, mode="tensor"), [image], [image])
    err = relative_error(got, ref)
    assert err < 20 * U, f"logits, relative err {err:.2e}"
