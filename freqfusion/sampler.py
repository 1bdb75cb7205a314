"""LocalSimGuidedSampler: FreqFusion's offset generator, which resamples the upsampled feature.

Offsets come from the local cosine similarity of each pixel to its neighbours (and, with
``direction_feat='sim_concat'``, from the normalised features too), predicted at both
resolutions; the upsampled feature is then resampled with ``grid_sample`` in groups. Attribute
names (``offset``, ``hr_offset``, ``direct_scale``, ``hr_direct_scale``, ``norm_hr``, ``norm_lr``,
``init_pos``) follow upstream, so its checkpoints load by name.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LocalSimGuidedSampler", "local_similarity"]

DIRECTION_FEATS = ("sim", "sim_concat")


def local_similarity(x: Tensor, window: int = 3, dilation: int = 2, eps: float = 1e-8) -> Tensor:
    """Cosine similarity of each pixel to its ``window**2 - 1`` neighbours (zero padding).

    Args:
        x: ``(B, C, H, W)``.
        window: Odd neighbourhood size.
        dilation: Spacing of the neighbours.
        eps: Lower bound of a vector norm, as in ``F.cosine_similarity``.

    Returns:
        ``(B, window**2 - 1, H, W)``, neighbours in row-major order with the centre left out
        (the order of upstream's unfold); a zero-padded neighbour has similarity 0.
    """
    h, w = x.shape[-2:]
    r = (window // 2) * dilation
    unit = F.normalize(x, dim=1, eps=eps)
    padded = F.pad(unit, (r, r, r, r))
    centre = window * window // 2
    sims = []
    for t in range(window * window):  # one product at a time: no C * window**2 unfold in memory
        if t == centre:
            continue
        i, j = divmod(t, window)
        neighbour = padded[:, :, i * dilation:i * dilation + h, j * dilation:j * dilation + w]
        sims.append((unit * neighbour).sum(dim=1))
    return torch.stack(sims, dim=1)


class LocalSimGuidedSampler(nn.Module):
    """Similarity-guided point resampling of an upsampled feature (upstream's ``style='lp'``).

    Args:
        in_channels: Channels of the two guidance features (FreqFusion's compressed width).
        scale: Upsampling factor between the guidance features.
        groups: Offset groups; the resampled feature's channels must divide by it.
        kernel_size: Kernel of the four offset/scale convs.
        local_window: Neighbourhood of the similarity features (``local_window**2 - 1`` channels).
        use_direct_scale: Gate the offsets with ``sigmoid(direct_scale + hr_direct_scale)``;
            without it they are scaled by a fixed 0.25.
        norm: GroupNorm (``in_channels // 8`` groups) on both guidance features.
        direction_feat: ``'sim'`` (SegNeXt release): offsets from the similarity channels, the
            gate from the normalised features. ``'sim_concat'`` (upstream ``FreqFusion.py``
            default): both from the normalised features concatenated with the similarities.
    """

    def __init__(self, in_channels: int, scale: int = 2, groups: int = 4, kernel_size: int = 3,
                 local_window: int = 3, use_direct_scale: bool = True, norm: bool = True,
                 direction_feat: str = "sim") -> None:
        super().__init__()
        if direction_feat not in DIRECTION_FEATS:
            raise ValueError(f"direction_feat must be one of {DIRECTION_FEATS}, got {direction_feat!r}")
        if in_channels % groups:
            raise ValueError(f"in_channels ({in_channels}) must be divisible by groups ({groups})")
        if norm and (in_channels < 8 or in_channels % (in_channels // 8)):
            raise ValueError(f"in_channels ({in_channels}) must be divisible by its GroupNorm's "
                             f"in_channels // 8 groups; a multiple of 8 always is")
        self.scale = scale
        self.groups = groups
        self.local_window = local_window
        self.direction_feat = direction_feat

        sim_channels = local_window * local_window - 1
        dir_channels = sim_channels if direction_feat == "sim" else in_channels + sim_channels
        sc_channels = in_channels if direction_feat == "sim" else in_channels + sim_channels
        lr_out, hr_out = 2 * groups * scale * scale, 2 * groups

        def conv(cin: int, cout: int) -> nn.Conv2d:
            return nn.Conv2d(cin, cout, kernel_size, padding=kernel_size // 2)

        self.offset = conv(dir_channels, lr_out)
        self.hr_offset = conv(dir_channels, hr_out)
        if use_direct_scale:
            self.direct_scale = conv(sc_channels, lr_out)
            self.hr_direct_scale = conv(sc_channels, hr_out)
        self.use_direct_scale = use_direct_scale
        if norm:
            self.norm_hr = nn.GroupNorm(in_channels // 8, in_channels)
            self.norm_lr = nn.GroupNorm(in_channels // 8, in_channels)
        else:
            self.norm_hr = nn.Identity()
            self.norm_lr = nn.Identity()
        self.register_buffer("init_pos", self._init_pos())
        self.init_weights()

    def init_weights(self) -> None:
        """Upstream's own init: small offsets, zero gates (FreqFusion re-initialises with xavier)."""
        for m in (self.offset, self.hr_offset):
            nn.init.normal_(m.weight, std=0.001)
            nn.init.zeros_(m.bias)
        if self.use_direct_scale:
            for m in (self.direct_scale, self.hr_direct_scale):
                nn.init.zeros_(m.weight)
                nn.init.zeros_(m.bias)

    def _init_pos(self) -> Tensor:
        """Sub-pixel centres ``(1, 2 * G * s * s, 1, 1)``: x then y, each (group, dy, dx)."""
        s = self.scale
        steps = (torch.arange(s, dtype=torch.float32) - (s - 1) / 2) / s
        dx = steps.view(1, s).expand(s, s)
        dy = steps.view(s, 1).expand(s, s)
        pos = torch.stack([dx, dy]).unsqueeze(1).expand(2, self.groups, s, s)
        return pos.reshape(1, -1, 1, 1).clone()

    def forward(self, hr_x: Tensor, lr_x: Tensor, feat: Tensor) -> Tensor:
        """Resample ``feat`` (at ``hr_x``'s resolution) guided by ``hr_x`` and ``lr_x``.

        Args:
            hr_x: ``(B, C, s*h, s*w)`` guidance at the output resolution.
            lr_x: ``(B, C, h, w)`` guidance at the input resolution.
            feat: ``(B, C_f, s*h, s*w)`` feature to resample, ``C_f`` divisible by ``groups``.
        """
        hr_x = self.norm_hr(hr_x)
        lr_x = self.norm_lr(lr_x)
        hr_sim = local_similarity(hr_x, self.local_window, dilation=2)
        lr_sim = local_similarity(lr_x, self.local_window, dilation=2)
        if self.direction_feat == "sim":
            hr_dir, lr_dir, hr_sc, lr_sc = hr_sim, lr_sim, hr_x, lr_x
        else:
            hr_dir = hr_sc = torch.cat([hr_x, hr_sim], dim=1)
            lr_dir = lr_sc = torch.cat([lr_x, lr_sim], dim=1)
        offset = self.offset(lr_dir) + F.pixel_unshuffle(self.hr_offset(hr_dir), self.scale)
        if self.use_direct_scale:
            gate = self.direct_scale(lr_sc) + F.pixel_unshuffle(self.hr_direct_scale(hr_sc), self.scale)
            offset = offset * gate.sigmoid()
        else:
            offset = offset * 0.25
        return self.sample(feat, offset + self.init_pos.to(_coordinate_dtype(offset, feat)))

    def sample(self, feat: Tensor, offset: Tensor) -> Tensor:
        """Bilinear ``grid_sample`` (border padding) of ``feat`` at offsets given in input pixels.

        The sampling coordinates, and the sampling itself, are computed in at least float32
        (``grid_sample`` is in autocast's float32 list anyway): in bfloat16 a coordinate near
        pixel 64 is only resolved to 0.5 px. The result has the dtype of ``feat``.
        """
        b, _, h, w = offset.shape
        s, g = self.scale, self.groups
        dtype = _coordinate_dtype(offset, feat)
        offset = offset.to(dtype).reshape(b, 2, g * s * s, h, w)
        ys = torch.arange(h, dtype=offset.dtype, device=offset.device) + 0.5
        xs = torch.arange(w, dtype=offset.dtype, device=offset.device) + 0.5
        centres = torch.stack([xs.view(1, w).expand(h, w), ys.view(h, 1).expand(h, w)]).view(1, 2, 1, h, w)
        size = torch.tensor([w, h], dtype=offset.dtype, device=offset.device).view(1, 2, 1, 1, 1)
        grid = 2 * (centres + offset) / size - 1
        grid = F.pixel_shuffle(grid.reshape(b, 2 * g * s * s, h, w), s)  # (B, 2G, s*h, s*w)
        grid = grid.view(b, 2, g, s * h, s * w).permute(0, 2, 3, 4, 1).reshape(b * g, s * h, s * w, 2)
        out = F.grid_sample(feat.reshape(b * g, -1, s * h, s * w).to(dtype), grid,
                            mode="bilinear", padding_mode="border", align_corners=False)
        return out.reshape(b, -1, s * h, s * w).to(feat.dtype)


def _coordinate_dtype(offset: Tensor, feat: Tensor) -> torch.dtype:
    """The dtype of ``offset`` and ``feat`` together, at least float32."""
    return torch.promote_types(torch.promote_types(offset.dtype, feat.dtype), torch.float32)
