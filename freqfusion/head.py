"""SegNeXt's LightHamHead with FreqFusion, registered in mmseg's ``MODELS`` as ``FreqFusionHamHead``.

Instead of resizing all stages to the finest one, the head fuses them from the lowest resolution
up with one FreqFusion block per step (upstream's ``LightHamHeadFreqAware``): for SegNeXt-T,
block 1 fuses stage 3 (160 ch, 1/16) with stage 4 (256 ch, 1/32), block 2 fuses stage 2 (64 ch,
1/8) with the 416 channels of block 1's output. The 480-channel result goes through
LightHamHead's ``squeeze``, Hamburger, ``align`` and ``cls_seg`` unchanged. The blocks live in
``freqfusions``, upstream's attribute name, so its SegNeXt checkpoints load by name.
"""
from __future__ import annotations

import torch
from mmseg.models.decode_heads.ham_head import LightHamHead
from mmseg.registry import MODELS
from torch import Tensor, nn

from .fusion import FreqFusion

__all__ = ["FreqFusionHamHead"]

# The published SegNeXt + FreqFusion run; ``freqfusion_cfg`` entries override these one by one.
DEFAULT_FREQFUSION_CFG = dict(
    compress_ratio=4,
    feature_resample=True,
    feature_resample_group=4,
    lowpass_kernel=5,
    highpass_kernel=3,
    hamming_window=False,
    direction_feat="sim",
)


@MODELS.register_module()
class FreqFusionHamHead(LightHamHead):
    """LightHamHead whose stages are fused by FreqFusion blocks instead of bilinear resizing.

    Args:
        use_dwt: DWT-FF in both FreqFusion blocks (+54,450 parameters for SegNeXt-T).
        use_attention: Spatial self-attention on both outputs of both blocks (0 parameters).
        dsconv: Depthwise-separable filter generators in both blocks (-56,448 parameters).
        freqfusion_cfg: ``compress_ratio`` (each block's compressed width is
            ``(hr_channels + lr_channels) // compress_ratio``) and any other
            :class:`~freqfusion.fusion.FreqFusion` argument, passed to both blocks; missing keys
            take the published values (``DEFAULT_FREQFUSION_CFG``).
        **kwargs: LightHamHead / BaseDecodeHead arguments (``in_channels``, ``in_index``,
            ``channels``, ``ham_channels``, ``ham_kwargs``, ``norm_cfg``, ...).
    """

    def __init__(self, use_dwt: bool = False, use_attention: bool = False, dsconv: bool = False,
                 freqfusion_cfg: dict | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        cfg = {**DEFAULT_FREQFUSION_CFG, **(freqfusion_cfg or {})}
        compress_ratio = cfg.pop("compress_ratio")
        self.feature_resample = cfg["feature_resample"]
        self.feature_resample_group = cfg["feature_resample_group"]
        self.freqfusions = nn.ModuleList()
        in_channels = self.in_channels[::-1]  # from the lowest resolution up
        lr_channels = in_channels[0]
        for hr_channels in in_channels[1:]:
            self.freqfusions.append(FreqFusion(
                hr_channels, lr_channels,
                compressed_channels=(hr_channels + lr_channels) // compress_ratio,
                use_dwt=use_dwt, use_attention=use_attention, dsconv=dsconv, **cfg))
            lr_channels += hr_channels

    def _forward_feature(self, inputs: list[Tensor]) -> Tensor:
        """Fuse the selected stages from coarse to fine, then squeeze, Hamburger and align."""
        inputs = self._transform_inputs(inputs)[::-1]
        fused = inputs[0]
        for hr_feat, freqfusion in zip(inputs[1:], self.freqfusions):
            _, hr_feat, lr_up = freqfusion(hr_feat=hr_feat, lr_feat=fused)
            fused = self._concat(hr_feat, lr_up)
        x = self.squeeze(fused)
        x = self.hamburger(x)
        return self.align(x)

    def _concat(self, hr_feat: Tensor, lr_up: Tensor) -> Tensor:
        """Concatenate on channels; with resampling, interleaved per resample group (as upstream)."""
        if not self.feature_resample:
            return torch.cat([hr_feat, lr_up], dim=1)
        b, _, h, w = hr_feat.shape
        g = self.feature_resample_group
        return torch.cat([hr_feat.reshape(b * g, -1, h, w), lr_up.reshape(b * g, -1, h, w)],
                         dim=1).reshape(b, -1, h, w)

    def forward(self, inputs: list[Tensor]) -> Tensor:
        return self.cls_seg(self._forward_feature(inputs))
