"""Lets ``import freqfusion`` work under mmcv-lite without ablate.

mmseg imports ``mmcv.ops`` when it is imported (``point_sample``, ``sigmoid_focal_loss``), and
under mmcv-lite, which has no compiled ops (``mmcv._ext``), that import fails. ablate's entry
points install a fuller stand-in (``ablate.compat``: a pure-torch ``point_sample``, errors naming
the op) before they import mmseg; freqfusion must not depend on ablate, so when it is imported
first, :func:`install` puts the least that mmseg's import needs in its place: an ``mmcv.ops``
whose every name is a function that raises when called. FreqFusion itself uses no ``mmcv.ops``
but CARAFE, which finds mmcv's op on its own (``freqfusion.carafe.has_full_mmcv``).
"""
import sys
import types
import warnings

from .carafe import mmcv_ext_error


def install() -> None:
    """Put a stand-in ``mmcv.ops`` in ``sys.modules`` unless one is there or ``mmcv._ext`` imports."""
    error = None if "mmcv.ops" in sys.modules else mmcv_ext_error()
    if error is None:
        return
    import mmcv

    ops = types.ModuleType("mmcv.ops", "freqfusion's stand-in for mmcv.ops under mmcv-lite (freqfusion._mmcv_guard).")
    ops.__path__ = []  # a package: `import mmcv.ops.x` fails with ModuleNotFoundError, as mmcv.cnn expects
    ops.__getattr__ = lambda name: _missing(name, error)
    sys.modules["mmcv.ops"] = mmcv.ops = ops
    # mmcv.cnn tries the compiled deformable attention once and warns; expected without mmcv._ext.
    warnings.filterwarnings("ignore", message="Fail to import ``MultiScaleDeformableAttention``")


def _missing(name: str, error: str):
    if name.startswith("__"):
        raise AttributeError(name)

    def op(*args, **kwargs):
        raise RuntimeError(f"mmcv.ops.{name} needs mmcv's compiled ops, which are not usable here: {error}")

    return op
