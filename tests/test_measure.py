"""ablate.measure: the MAC counter against hand counts from shapes, and Params/GMACs of real models.

Hand counts: conv = out elements x Cin/groups x kh x kw; a matrix product = out elements x inner
dim; attention = Q K^T + A V = B x heads x Lq x Lk x (E + Ev); CARAFE = out elements x k^2.
The reference CARAFEs below run inside the profiler region ``carafe``, as freqfusion's does.
"""
import importlib.util
import math
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import record_function

from ablate.measure import MacCounter, count_macs, parse_shape

REPO = Path(__file__).resolve().parents[1]
TABLE2 = REPO / "experiments" / "table2.yaml"


# ----------------------------------------------------------------- the counter against hand counts


@pytest.mark.parametrize("cin,cout,k,stride,groups", [(8, 16, 3, 1, 1), (8, 16, 3, 2, 1), (16, 16, 5, 1, 16),
                                                      (8, 12, 1, 1, 4)])
def test_conv_is_out_elements_times_cin_per_group_times_kernel(cin, cout, k, stride, groups):
    conv = torch.nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups)
    x = torch.randn(2, cin, 13, 11)
    out = conv(x)
    count = count_macs(conv, x)
    assert count.by_kind["conv"] == count.total == out.numel() * (cin // groups) * k * k


def test_transposed_conv_is_in_elements_times_cout_per_group_times_kernel():
    deconv = torch.nn.ConvTranspose2d(8, 6, 4, stride=2, padding=1, groups=2)
    x = torch.randn(1, 8, 7, 9)
    assert count_macs(deconv, x).total == x.numel() * (6 // 2) * 4 * 4


@pytest.mark.parametrize("inference_mode", [False, True], ids=["no_grad", "inference_mode"])
def test_linear_matmul_bmm_einsum(inference_mode):
    """inference_mode hands composite ops (linear, einsum, matmul) over whole; they are decomposed."""
    lin = torch.nn.Linear(8, 5)
    a, b = torch.randn(4, 6, 7), torch.randn(4, 7, 3)
    with torch.inference_mode(inference_mode):
        assert count_macs(lin, torch.randn(2, 3, 8)).by_kind["matmul"] == 2 * 3 * 5 * 8
        assert count_macs(lin, torch.randn(10, 8)).by_kind["matmul"] == 10 * 5 * 8
        assert count_macs(torch.bmm, a, b).by_kind["matmul"] == 4 * 6 * 3 * 7
        assert count_macs(torch.matmul, a, torch.randn(7, 3)).by_kind["matmul"] == 4 * 6 * 3 * 7
        assert count_macs(torch.einsum, "bij,bjk->bik", a, b).by_kind["matmul"] == 4 * 6 * 3 * 7
        assert count_macs(torch.matmul, torch.randn(6, 7), torch.randn(7)).total == 6 * 7


def _sdpa_hand(q, k, v):
    return math.prod(q.shape[:-1]) * k.shape[-2] * (q.shape[-1] + v.shape[-1])


@pytest.mark.parametrize("backend", [None, SDPBackend.MATH], ids=["default", "math"])
@pytest.mark.parametrize("inference_mode", [False, True], ids=["no_grad", "inference_mode"])
def test_sdpa_counted_once_on_every_path(backend, inference_mode):
    """The fused CPU kernel (one op) and the math path (two bmm) give the same count, once."""
    q, k, v = torch.randn(2, 3, 64, 16), torch.randn(2, 3, 48, 16), torch.randn(2, 3, 48, 16)
    backends = [backend] if backend else [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                                          SDPBackend.MATH]
    with torch.inference_mode(inference_mode), sdpa_kernel(backends):
        count = count_macs(F.scaled_dot_product_attention, q, k, v)
    assert count.total == count.by_kind["matmul"] == _sdpa_hand(q, k, v) == 2 * 3 * 64 * 48 * (16 + 16)
    ops = set(count.counted)
    if backend is SDPBackend.MATH:
        assert ops == {"aten::bmm [matmul]"} or ops == {"aten::scaled_dot_product_attention [matmul]"}
    else:
        assert not any("bmm" in op for op in ops), ops  # the fused kernel, not a decomposition


def test_sdpa_spatial_attention_is_two_l_squared_c():
    """The study's attention: tokens are the H*W positions, Q = K = V = x -> 2 * L^2 * C MACs."""
    x = torch.randn(1, 24, 8, 10)
    tokens = x.flatten(2).transpose(1, 2)  # (B, L, C)
    L, C = 8 * 10, 24
    assert count_macs(F.scaled_dot_product_attention, tokens, tokens, tokens).total == 2 * L * L * C


def carafe(feat, kernels, k: int, up: int):
    """A reference CARAFE written as unfold * kernel, sum (a reduction a matmul-only counter misses)."""
    with record_function("carafe"):
        b, c, h, w = feat.shape
        cols = F.unfold(feat, k, padding=k // 2).view(b, c, k * k, h, w)
        cols = F.interpolate(cols.view(b, c * k * k, h, w), scale_factor=up, mode="nearest").view(
            b, c, k * k, h * up, w * up)
        return (cols * kernels.unsqueeze(1)).sum(2)


def carafe_einsum(feat, kernels, k: int):
    with record_function("carafe"):
        b, c, h, w = feat.shape
        cols = F.unfold(feat, k, padding=k // 2).view(b, c, k * k, h, w)
        return torch.einsum("bckhw,bkhw->bchw", cols, kernels)


def test_carafe_region_counts_the_weighted_sum():
    feat, k, up = torch.randn(1, 6, 5, 7), 5, 2
    kernels = torch.randn(1, k * k, 10, 14).softmax(1)
    count = count_macs(carafe, feat, kernels, k, up)
    out_elements = 6 * 10 * 14
    # the nearest upsampling of the unfolded columns is mmengine's 1 per output element ("other")
    assert count.by_kind["carafe"] == out_elements * k * k
    assert count.by_kind["matmul"] == count.by_kind["conv"] == 0
    assert count.by_kind["other"] == 6 * k * k * 10 * 14
    kernels = torch.randn(1, 9, 5, 7)
    count = count_macs(carafe_einsum, feat, kernels, 3)
    assert count.by_kind["carafe"] == count.total == 6 * 5 * 7 * 9


def carafe_taps(feat, kernels, k: int):
    """CARAFE as freqfusion computes it on the CPU: one mul, then addcmul_ per tap of shifted views."""
    with record_function("carafe"):
        b, c, h, w = feat.shape
        padded = F.pad(feat, (k // 2,) * 4)
        out = torch.empty_like(feat)
        for t in range(k * k):
            i, j = divmod(t, k)
            if t == 0:
                torch.mul(padded[..., i:i + h, j:j + w], kernels[:, t:t + 1], out=out)
            else:
                out.addcmul_(padded[..., i:i + h, j:j + w], kernels[:, t:t + 1])
        return out


def test_carafe_as_shifted_products_counts_every_tap_and_nothing_else():
    feat, kernels = torch.randn(2, 6, 5, 7), torch.randn(2, 9, 5, 7)
    count = count_macs(carafe_taps, feat, kernels, 3)
    assert count.by_kind["carafe"] == count.total == feat.numel() * 9
    # the same ops outside a CARAFE call are element-wise work, not counted by the mmseg convention
    outside = count_macs(carafe_taps, feat, kernels, 3, regions={})
    assert outside.total == 0 and outside.ignored["aten::addcmul_"] == 8


def test_freqfusion_carafe_paths_count_the_same():
    """freqfusion's CPU (shifted products) and CUDA (unfold + bmm) CARAFE both give out x k^2; on the
    CPU carafe() does not take the unfold path, so it runs here in the region carafe() opens."""
    from freqfusion.carafe import REGION, _carafe_unfold, carafe

    x, k, up = torch.randn(1, 8, 6, 5), 5, 2
    mask = torch.randn(1, 2 * k * k, 12, 10).softmax(1)
    expected = 8 * 12 * 10 * k * k

    def unfold_path():
        with record_function(REGION):
            return _carafe_unfold(x, mask, k, 2, up)

    for fn in (lambda: carafe(x, mask, k, 2, up), unfold_path):
        count = count_macs(fn)
        assert count.by_kind["carafe"] == count.total == expected, count.counted


def test_carafe_is_booked_by_its_region_not_by_function_or_file_names(tmp_path):
    """freqfusion's carafe() called from a function named otherwise is booked to carafe; a matrix
    product, a mul+sum and element-wise products in a function and a file named after CARAFE,
    but outside its region, are booked as anywhere else (the old stack-frame regex booked them)."""
    from freqfusion.carafe import carafe

    x, k, up = torch.randn(1, 4, 5, 6), 3, 2
    mask = torch.randn(1, k * k, 10, 12).softmax(1)

    def upsample(feat, kernels):
        return carafe(feat, kernels, k, 1, up)

    count = count_macs(upsample, x, mask)
    assert count.by_kind["carafe"] == count.total == 4 * 10 * 12 * k * k

    (tmp_path / "my_carafe.py").write_text(textwrap.dedent("""
        import torch

        def carafe_like(a, b, c, d):
            return torch.bmm(a, b), (c * d).sum(1), torch.mul(c, d).addcmul_(c, d)
    """))
    spec = importlib.util.spec_from_file_location("my_carafe", tmp_path / "my_carafe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    a, b, c, d = torch.randn(2, 3, 4), torch.randn(2, 4, 5), torch.randn(3, 8, 5), torch.randn(3, 8, 5)
    count = count_macs(module.carafe_like, a, b, c, d)
    assert count.by_kind["carafe"] == 0
    assert count.by_kind["matmul"] == count.total == 2 * 3 * 5 * 4 + 3 * 8 * 5
    assert count.ignored["aten::mul"] == 2 and count.ignored["aten::addcmul_"] == 1


def test_mul_then_sum_outside_a_region_is_a_matmul_and_plain_mul_is_free():
    a, b = torch.randn(3, 8, 5), torch.randn(3, 8, 5)
    assert count_macs(lambda: (a * b).sum(1)).by_kind["matmul"] == 3 * 8 * 5
    assert count_macs(lambda: (a * b).permute(0, 2, 1).mean(-1)).by_kind["matmul"] == 3 * 8 * 5
    free = count_macs(lambda: (a * b + 1).sum(1) + (a * 2.0).sum())
    assert free.total == 0 and free.ignored["aten::mul"] == 2 and free.ignored["aten::sum"] == 2


def test_regions_are_configurable():
    feat, kernels = torch.randn(1, 4, 6, 6), torch.randn(1, 9, 6, 6)
    assert count_macs(carafe_einsum, feat, kernels, 3, regions={}).by_kind["matmul"] == 4 * 36 * 9

    def bmm():
        return torch.bmm(torch.randn(2, 3, 4), torch.randn(2, 4, 5))

    with torch.no_grad(), MacCounter({"carafe": "carafe", "mine": "my_block"}) as counter:
        with record_function("my_block"):
            bmm()
            with record_function("unbooked"):  # a region of no kind inside keeps the outer one's
                bmm()
            carafe_einsum(feat, kernels, 3)  # the innermost region with a kind wins
        bmm()
    assert counter.count.by_kind["mine"] == 2 * (2 * 3 * 5 * 4)
    assert counter.count.by_kind["matmul"] == 2 * 3 * 5 * 4
    assert counter.count.by_kind["carafe"] == 4 * 36 * 9
    # a region opened before the counter started is not seen, and its end inside is harmless
    outer = record_function("my_block")
    outer.__enter__()
    with torch.no_grad(), MacCounter({"mine": "my_block"}) as counter:
        bmm()
        outer.__exit__(None, None, None)
        with record_function("my_block"):
            bmm()
    assert counter.count.by_kind["mine"] == counter.count.by_kind["matmul"] == 2 * 3 * 5 * 4
    with record_function("my_block"), torch.no_grad(), MacCounter({"mine": "my_block"}) as counter:
        bmm()
    assert counter.count.by_kind["matmul"] == counter.count.total == 2 * 3 * 5 * 4


def test_norms_upsampling_grid_sample_follow_mmengine():
    x = torch.randn(2, 8, 6, 10)
    n = x.numel()
    assert count_macs(torch.nn.BatchNorm2d(8).eval(), x).by_kind["other"] == 2 * n
    assert count_macs(torch.nn.BatchNorm2d(8, affine=False).eval(), x).by_kind["other"] == n
    assert count_macs(torch.nn.GroupNorm(4, 8), x).by_kind["other"] == 5 * n
    assert count_macs(torch.nn.LayerNorm(10), x).by_kind["other"] == 5 * n
    assert count_macs(F.interpolate, x, scale_factor=2, mode="bilinear").by_kind["other"] == 4 * 4 * n
    assert count_macs(F.interpolate, x, scale_factor=2, mode="nearest").by_kind["other"] == 4 * n
    grid = torch.rand(2, 12, 20, 2) * 2 - 1
    assert count_macs(F.grid_sample, x, grid, align_corners=False).by_kind["other"] == 4 * 2 * 8 * 12 * 20


def test_operators_not_counted_are_named_with_their_calls():
    x = torch.randn(2, 8, 6, 10)
    count = count_macs(lambda: [F.gelu(x) + 1, x.view(2, -1), torch.topk(x, 2), torch.topk(x, 3), x.softmax(1)])
    assert count.total == 0
    assert dict(count.uncounted) == {"aten::topk": 2}
    assert {"aten::gelu", "aten::add", "aten::view", "aten::_softmax"} <= set(count.ignored)


def test_parse_shape():
    assert parse_shape("3,512,512") == parse_shape("3x512x512") == (3, 512, 512)
    for bad in ("512,512", "3,a,4", "3,0,4"):
        with pytest.raises(ValueError):
            parse_shape(bad)


# ----------------------------------------------------------------- real models


PLAIN_SEGNEXT = "_base_ = 'mmseg::segnext/segnext_mscan-t_1xb16-adamw-160k_ade20k-512x512.py'\n"


@pytest.fixture(scope="module")
def plain_cfg(tmp_path_factory):
    from ablate import compat

    compat.apply()
    from mmengine.config import Config

    path = tmp_path_factory.mktemp("cfg") / "segnext_t.py"
    path.write_text(PLAIN_SEGNEXT)
    return Config.fromfile(str(path))


def mmengine_analyzer(model, shape):
    """mmengine's FlopAnalyzer on the segmentor's tensor forward, as mmseg's get_flops.py runs it."""
    from mmengine.analysis import FlopAnalyzer

    class Tensors(torch.nn.Module):
        def __init__(self, segmentor):
            super().__init__()
            self.segmentor = segmentor

        def forward(self, x):
            return self.segmentor(x, None, mode="tensor")

    analyzer = FlopAnalyzer(Tensors(model), (torch.rand(1, *shape),))
    return analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)


def test_plain_segnext_matches_mmengine_analyzer_and_meta_matches_cpu(plain_cfg):
    """mmengine's analyzer counts the same operators on SegNeXt-T (no SDPA, no CARAFE): equal totals."""
    from ablate.measure import build_model, measure_model

    model = build_model(plain_cfg)
    shape = (3, 128, 160)
    on_meta, on_cpu = measure_model(model, shape), measure_model(model, shape, device="cpu")
    assert on_meta["counted_on"] == "meta" and on_cpu["counted_on"] == "cpu"
    assert on_meta["gmacs_by_kind"] == on_cpu["gmacs_by_kind"] and on_meta["ops"] == on_cpu["ops"]
    assert on_meta["uncounted"] == {}

    analyzer = mmengine_analyzer(model, shape)
    assert round(on_cpu["gmacs"] * 1e9) == analyzer.total()
    assert on_cpu["params_m"] == pytest.approx(4.263414)  # SegNeXt-T with mmseg's LightHamHead


def test_measure_cached_reuses_and_keys_on_model_and_shape(plain_cfg, tmp_path, monkeypatch):
    import ablate.measure as measure

    calls = []
    monkeypatch.setattr(measure.cache, "measure_config",
                        lambda cfg, shape: calls.append(shape) or {"params_m": 1.0, "gmacs": 2.0, "input_shape": shape})
    first = measure.measure_cached(plain_cfg, (3, 64, 64), tmp_path)
    again = measure.measure_cached(plain_cfg, (3, 64, 64), tmp_path)
    assert (first["cached"], again["cached"]) == (False, True) and len(calls) == 1
    other = plain_cfg.copy()
    other.model.backbone.init_cfg = None  # where weights come from does not change the model
    other.work_dir = "elsewhere"  # nor does anything outside cfg.model
    assert measure.measure_cached(other, (3, 64, 64), tmp_path)["cached"]
    measure.measure_cached(plain_cfg, (3, 64, 96), tmp_path)
    other.model.decode_head.channels = 128
    measure.measure_cached(other, (3, 64, 64), tmp_path)
    assert len(calls) == 3 and len(list(tmp_path.glob("*.json"))) == 3


def test_model_hash_covers_the_counters_source(plain_cfg, tmp_path, monkeypatch):
    """A change to any module of ablate.measure (the counting rules live in counter.py) misses the cache."""
    import shutil

    from ablate.measure import cache

    names = {path.name for path in cache._PACKAGE_FILES}
    assert {"__init__.py", "counter.py", "model.py", "cache.py", "variants.py"} <= names
    copies = tuple(Path(shutil.copy(path, tmp_path / path.name)) for path in cache._PACKAGE_FILES)
    monkeypatch.setattr(cache, "_PACKAGE_FILES", copies)
    before = cache.model_hash(plain_cfg, (3, 64, 64))
    counter = tmp_path / "counter.py"
    counter.write_text(counter.read_text().replace('"mv", "dot"', '"mv", "dot", "outer"'))
    assert cache.model_hash(plain_cfg, (3, 64, 64)) != before


def test_cli_measure_prints_table_and_audit(plain_cfg, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from ablate.cli import app

    (tmp_path / "segnext_t.py").write_text(PLAIN_SEGNEXT)
    (tmp_path / "plain.yaml").write_text(textwrap.dedent("""
        base: segnext_t.py
        variants:
          base: {paper: {Params: 4.3, FLOPs: 6.6}}
          narrow: {overrides: {model.decode_head.channels: 128}, paper: {Params: "-0.5"}}
        profiles:
          paper: {data: required}
    """))
    monkeypatch.setenv("ABLATE_WORK_DIR", str(tmp_path / "work"))
    result = CliRunner().invoke(app, ["measure", str(tmp_path / "plain.yaml"), "--shape", "3,64,64", "--audit"])
    assert result.exit_code == 0, result.output
    for text in ("base", "narrow", "4.263", "-0.50", "6.6", "aten::convolution", "conv", "not counted",
                 "aten::gelu", "multiply-accumulates"):
        assert text in result.output, text
    assert list((tmp_path / "work" / ".measure").glob("*.json"))
    result = CliRunner().invoke(app, ["measure", str(tmp_path / "plain.yaml"), "--shape", "3,64,64", "-v", "narrow",
                                      "--latency", "--device", "cpu", "--repeats", "3", "--warmup", "1"])
    assert result.exit_code == 0, result.output
    assert "counts cached" in result.output and "latency: median" in result.output and "cpu, " in result.output
    result = CliRunner().invoke(app, ["measure", str(tmp_path / "plain.yaml"), "--shape", "64,64"])
    assert result.exit_code == 2 and "--shape" in result.output


# ----------------------------------------------------------------- Table 2 (SegNeXt-T + FreqFusion)


@pytest.fixture(scope="module")
def table2():
    from ablate import configs
    from ablate.study import load_study

    study = load_study(str(TABLE2))
    return {v: configs.resolve(study, study.runs("paper", variants=[v])[0]) for v in study.variants}


def test_table2_params_match_the_paper_and_the_switch_costs(table2):
    from ablate.measure import build_model

    params = {v: sum(p.numel() for p in build_model(cfg).parameters()) for v, cfg in table2.items()}
    assert params["baseline"] / 1e6 == pytest.approx(4.44, rel=0.03)  # 4.52 M: mmseg 1.x's MSCAN-T
    assert params["dwt"] - params["baseline"] == 54_450  # content_encoder3 of both blocks
    assert params["attention"] == params["baseline"]
    assert params["dwt_attention"] - params["baseline"] == 54_450


def test_table2_attention_delta_at_512_is_the_hand_count(table2):
    """Two FreqFusion blocks, attention on hr_out and lr_up of each: 2 * L^2 * C MACs per map."""
    from ablate.measure import measure_config

    base, attention = (measure_config(table2[v], (3, 512, 512)) for v in ("baseline", "attention"))
    maps = [(32 * 32, 160), (32 * 32, 256),  # block 1 at 1/16: hr_out (stage 3), lr_up (stage 4)
            (64 * 64, 64), (64 * 64, 416)]   # block 2 at 1/8: hr_out (stage 2), lr_up (block 1's 416)
    hand = sum(2 * L * L * C for L, C in maps)
    assert attention["macs"] - base["macs"] == hand == 16_978_542_592
    delta = {k: attention["gmacs_by_kind"][k] - base["gmacs_by_kind"][k] for k in base["gmacs_by_kind"]}
    assert delta["matmul"] == pytest.approx(hand / 1e9, abs=1e-9)
    assert delta["conv"] == delta["carafe"] == delta["other"] == 0
    assert base["gmacs"] == pytest.approx(7.03, rel=0.10)  # the paper's 7.03 GFLOPs
    assert base["uncounted"] == attention["uncounted"] == {}


def test_table2_carafe_is_the_hand_count_and_meta_matches_cpu(table2, monkeypatch):
    """Every CARAFE call of the model, out elements x k^2 from its shapes, equals the carafe kind;
    the counts on meta (SDPA through the math path) and on the CPU (fused SDPA kernel) agree."""
    import freqfusion.fusion

    from ablate.measure import build_model, measure_model

    hand = []
    real = freqfusion.fusion.carafe

    def carafe(x, mask, kernel_size, group=1, up=1, impl="auto"):
        out = real(x, mask, kernel_size, group, up, impl=impl)
        hand.append(out.numel() * kernel_size ** 2)
        return out

    monkeypatch.setattr(freqfusion.fusion, "carafe", carafe)
    model = build_model(table2["dwt_attention"])
    on_cpu = measure_model(model, (3, 128, 96), device="cpu")
    assert len(hand) == 10  # five per block
    assert round(on_cpu["gmacs_by_kind"]["carafe"] * 1e9) == sum(hand)
    on_meta = measure_model(model, (3, 128, 96))
    assert (on_meta["counted_on"], on_cpu["counted_on"]) == ("meta", "cpu")
    assert on_meta["macs"] == on_cpu["macs"]
    assert on_meta["gmacs_by_kind"] == on_cpu["gmacs_by_kind"]
    assert on_cpu["uncounted"] == {}


def test_table2_baseline_differs_from_mmengine_by_what_mmengine_cannot_see(table2):
    """mmengine's analyzer misses CARAFE (a Python autograd op to the JIT) and the sampler's
    similarity dot products (mul + sum); the rest is counted identically."""
    from ablate.measure import build_model, measure_model

    model = build_model(table2["baseline"])
    shape = (3, 64, 64)
    ours = measure_model(model, shape)

    analyzer = mmengine_analyzer(model, shape)
    unseen = ours["gmacs_by_kind"]["carafe"] + ours["ops"]["aten::mul+sum [matmul]"][1]
    assert analyzer.total() == round((ours["gmacs"] - unseen) * 1e9)
    assert "prim::PythonOp._CarafeTaps" in analyzer.unsupported_ops()
