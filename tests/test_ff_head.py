"""FreqFusionHamHead through mmseg: built from SegNeXt-T's config by the registry, trained one step."""
import itertools
from pathlib import Path

import mmseg
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmengine.structures import PixelData
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

import freqfusion
from freqfusion.head import FreqFusionHamHead

SEGNEXT_T = (Path(mmseg.__file__).parent
             / ".mim/configs/segnext/segnext_mscan-t_1xb16-adamw-160k_ade20k-512x512.py")
SWITCHES = list(itertools.product([False, True], repeat=3))  # use_dwt, use_attention, dsconv
FREQFUSION_PARAMS = {"sim": 257_380, "sim_concat": 343_780}  # two blocks, all switches off
DELTA = {"use_dwt": 54_450, "use_attention": 0, "dsconv": -56_448}
PAPER_PARAMS = 4.44e6


def switch_id(combo):
    return "+".join(n for n, on in zip(("dwt", "attention", "dsconv"), combo) if on) or "baseline"


@pytest.fixture(scope="module")
def model_cfg():
    cfg = Config.fromfile(str(SEGNEXT_T)).model
    cfg.backbone.init_cfg = None  # nothing to download
    cfg.decode_head.type = "FreqFusionHamHead"
    return cfg


def build(model_cfg, **head):
    cfg = model_cfg.copy()
    cfg.decode_head = dict(cfg.decode_head, **head)
    with DefaultScope.overwrite_default_scope("mmseg"):
        return MODELS.build(cfg)


def count(module):
    return sum(p.numel() for p in module.parameters())


def fake_batch(size=128):
    shape = (size, size)
    sample = SegDataSample(metainfo=dict(img_shape=shape, pad_shape=shape, ori_shape=shape))
    sample.gt_sem_seg = PixelData(data=torch.randint(0, 150, (1, size, size)))
    return torch.randn(1, 3, size, size), [sample]


def test_registered_in_mmseg():
    assert MODELS.get("FreqFusionHamHead") is FreqFusionHamHead is freqfusion.FreqFusionHamHead


@pytest.mark.parametrize("combo", SWITCHES, ids=switch_id)
def test_parameter_counts(model_cfg, combo):
    use_dwt, use_attention, dsconv = combo
    model = build(model_cfg, use_dwt=use_dwt, use_attention=use_attention, dsconv=dsconv)
    expected = FREQFUSION_PARAMS["sim"] + DELTA["use_dwt"] * use_dwt + DELTA["dsconv"] * dsconv
    assert count(model.decode_head.freqfusions) == expected
    total = count(model)
    print(f"{switch_id(combo)}: segmentor {total:,} parameters ({total / 1e6:.2f} M; paper 4.44 M)")
    if not any(combo):
        assert abs(total - PAPER_PARAMS) / PAPER_PARAMS < 0.03


def test_parameter_count_sim_concat(model_cfg):
    model = build(model_cfg, freqfusion_cfg=dict(direction_feat="sim_concat"))
    assert count(model.decode_head.freqfusions) == FREQFUSION_PARAMS["sim_concat"]


def test_block_layout_follows_upstream(model_cfg):
    head = build(model_cfg).decode_head
    blocks = [(ff.hr_channel_compressor.in_channels, ff.lr_channel_compressor.in_channels,
               ff.hr_channel_compressor.out_channels) for ff in head.freqfusions]
    assert blocks == [(160, 256, 104), (64, 416, 120)]
    assert head.squeeze.conv.in_channels == 480 and head.in_index == [1, 2, 3]


def test_freqfusion_cfg_overrides_one_key_at_a_time(model_cfg):
    head = build(model_cfg, freqfusion_cfg=dict(hamming_window=True, compress_ratio=2)).decode_head
    ff = head.freqfusions[0]
    assert ff.hamming_window and ff.hamming_lowpass.shape == (1, 1, 5, 5)
    assert ff.hr_channel_compressor.out_channels == (160 + 256) // 2 and hasattr(ff, "dysampler")


@pytest.mark.parametrize("combo", [(False, False, False), (True, False, False), (False, True, False),
                                   (True, True, False), (False, False, True)], ids=switch_id)
def test_segmentor_trains_one_step(model_cfg, combo):
    use_dwt, use_attention, dsconv = combo
    model = build(model_cfg, use_dwt=use_dwt, use_attention=use_attention, dsconv=dsconv).train()
    inputs, samples = fake_batch()
    losses = model(inputs, samples, mode="loss")
    loss = sum(v for k, v in losses.items() if "loss" in k)
    assert torch.isfinite(loss)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    model.eval()
    with torch.no_grad():
        logits = model(inputs, mode="tensor")
    assert logits.shape == (1, 150, 16, 16)  # 1/8 of the input


def test_study_style_override_builds(model_cfg):
    cfg = Config(dict(model=model_cfg.to_dict()))
    cfg.merge_from_dict({"model.decode_head.use_dwt": True,
                         "model.decode_head.freqfusion_cfg.hamming_window": True})
    with DefaultScope.overwrite_default_scope("mmseg"):
        head = MODELS.build(cfg.model).decode_head
    assert all(hasattr(ff, "content_encoder3") and ff.hamming_window for ff in head.freqfusions)
    assert head.freqfusions[0].hr_channel_compressor.out_channels == 104  # compress_ratio kept


@pytest.mark.parametrize("feature_resample", [True, False])
def test_head_alone_on_backbone_shaped_features(model_cfg, feature_resample):
    head_cfg = dict(model_cfg.decode_head, freqfusion_cfg=dict(feature_resample=feature_resample))
    head = MODELS.build(head_cfg).eval()
    feats = [torch.randn(2, c, s, s) for c, s in [(32, 32), (64, 16), (160, 8), (256, 4)]]
    with torch.no_grad():
        assert head(feats).shape == (2, 150, 16, 16)
    assert hasattr(head.freqfusions[0], "dysampler") == feature_resample
