# SegNeXt-T + FreqFusion on ADE20K, the published schedule (160k iterations, batch 16, 512x512).
#
# Built on the SegNeXt-T config that mmseg ships; only the decode head changes: mmseg's
# LightHamHead becomes freqfusion's FreqFusionHamHead, which fuses the three backbone stages
# with two FreqFusion blocks before the Hamburger. The three enhancement switches are flat head
# arguments, so a study varies them as `model.decode_head.use_dwt` and the like.
_base_ = 'mmseg::segnext/segnext_mscan-t_1xb16-adamw-160k_ade20k-512x512.py'

custom_imports = dict(imports=['freqfusion'], allow_failed_imports=False)

model = dict(
    decode_head=dict(
        type='FreqFusionHamHead',
        use_dwt=False,
        use_attention=False,
        dsconv=False,
        freqfusion_cfg=dict(
            compress_ratio=4,
            feature_resample=True,
            feature_resample_group=4,
            lowpass_kernel=5,
            highpass_kernel=3,
            hamming_window=False,
            direction_feat='sim')))

# Evaluate and checkpoint every 8k iterations, as the paper did; keep the last checkpoints only.
train_cfg = dict(val_interval=8000)
default_hooks = dict(
    checkpoint=dict(by_epoch=False, interval=8000, max_keep_ckpts=2, save_best='mIoU'))
