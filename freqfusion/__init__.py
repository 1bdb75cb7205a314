"""FreqFusion and the study's enhancements, as an mmseg decode head.

Importing the package registers ``FreqFusionHamHead`` in ``mmseg.registry.MODELS`` (configs say
``custom_imports=dict(imports=['freqfusion'], allow_failed_imports=False)``). It imports mmseg,
and under mmcv-lite mmseg needs the ``mmcv.ops`` stand-in of ``ablate.compat``, which is applied
here when ablate is installed (a no-op with full mmcv). The building blocks need only torch.
"""
try:
    from ablate.compat import apply as _apply_compat
except ImportError:  # freqfusion used without ablate: full mmcv is assumed
    pass
else:
    _apply_compat()
from .attention import SpatialSelfAttention
from .carafe import carafe
from .fusion import FreqFusion
from .head import FreqFusionHamHead
from .kernels import hamming_window_2d, normalize_kernel
from .sampler import LocalSimGuidedSampler, local_similarity
from .wavelet import HaarDWT

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
