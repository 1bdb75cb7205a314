"""FreqFusion and the study's enhancements, as an mmseg decode head.

Importing the package registers ``FreqFusionHamHead`` in ``mmseg.registry.MODELS`` (configs say
``custom_imports=dict(imports=['freqfusion'], allow_failed_imports=False)``). It imports mmseg,
which under mmcv-lite needs a stand-in ``mmcv.ops``: the caller's (ablate installs its own
before it imports mmseg), else the minimal one of ``freqfusion._mmcv_guard``. The building blocks
need only torch.
"""
from ._mmcv_guard import install as _install_mmcv_guard

_install_mmcv_guard()  # before .head imports mmseg
from .attention import SpatialSelfAttention  # noqa: E402
from .carafe import carafe  # noqa: E402
from .fusion import FreqFusion  # noqa: E402
from .head import FreqFusionHamHead  # noqa: E402
from .kernels import hamming_window_2d, normalize_kernel  # noqa: E402
from .sampler import LocalSimGuidedSampler, local_similarity  # noqa: E402
from .wavelet import HaarDWT  # noqa: E402

__all__ = [
    "FreqFusion",
    "FreqFusionHamHead",
    "HaarDWT",
    "LocalSimGuidedSampler",
    "SpatialSelfAttention",
    "carafe",
    "hamming_window_2d",
    "local_similarity",
    "normalize_kernel",
]
