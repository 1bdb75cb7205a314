"""The one place where ablate changes third-party behaviour.

Everything here is applied by :func:`apply`, before mmseg is imported, and each patch is a no-op
where it is not needed:

* **mmcv-lite.** mmcv-lite is mmcv without its compiled extension (``mmcv._ext``), yet mmseg
  imports ``mmcv.ops`` at import time. Unless ``mmcv._ext`` imports, we install a stand-in
  ``mmcv.ops`` that provides a pure-torch ``point_sample`` and, for every other op, a placeholder
  that raises :class:`MissingMMCVOp` naming the op when it is used. The test is an import, not a
  file lookup: full mmcv built for another torch has an ``mmcv._ext`` that fails to load, and
  mmseg's import would fail with it. ``freqfusion.carafe.mmcv_ext_error`` decides the same way
  (ablate never imports freqfusion, so the test is spelled out in both; ``tests/test_compat.py``
  holds them to one answer). With a working full mmcv nothing is patched.
* **torch.load.** torch >= 2.6 loads with ``weights_only=True`` by default, which cannot read the
  optimiser and message-hub state that mmengine stores in its checkpoints, so resume breaks.
  :func:`trust_checkpoints_under` names directories whose checkpoints this tool wrote; only files
  under them are loaded with ``weights_only=False``. Every other file keeps torch's safe default.
* **CPU DDP.** :func:`cpu_ddp_overrides` gives the config keys that make mmengine's distributed
  training work without CUDA: the gloo backend and ``device_ids=None``.
* **SyncBN on CPUs.** A run over K > 1 processes trains with SyncBN (:func:`ablate.configs.split_batch`).
  torch's ``SyncBatchNorm`` refuses CPU tensors (its kernels are CUDA's) and DDP refuses to wrap a
  CPU module that has one, so K CPU processes under gloo would fail at the first iteration.
  :func:`_patch_sync_batchnorm` takes over exactly those two refusals: in training, on CPU
  tensors, with a process group of more than one process, the batch statistics are summed over
  the processes with an all-reduce that autograd differentiates (as torch's CUDA kernel does), so
  K processes normalise over the same images as one process with the whole batch. GPU tensors and
  single processes go through torch's code unchanged.
* **Data files named.** :func:`name_data_files` (the worker calls it after importing mmseg) makes
  a label map or image that cannot be loaded fail with its path: mmseg's ``LoadAnnotations``
  otherwise fails with ``'NoneType' object has no attribute 'squeeze'`` at iteration N.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import sys
import types
import warnings
from pathlib import Path

_TRUSTED_DIRS: list[Path] = []
_applied = False


class MissingMMCVOp(RuntimeError):
    """An mmcv compiled op was used under mmcv-lite."""


def has_full_mmcv() -> bool:
    """Whether mmcv's compiled extension (``mmcv._ext``) imports (not merely exists)."""
    return _mmcv_ext_error() is None


def _mmcv_ext_error() -> str | None:
    """None when ``mmcv._ext`` imports; else why not, in one line."""
    import torch  # noqa: F401  (mmcv._ext links against torch's libraries, loaded with torch)

    try:
        importlib.import_module("mmcv._ext")
    except Exception as exc:  # noqa: BLE001  (missing, or a foreign binary that fails to load: ImportError, OSError)
        if isinstance(exc, ModuleNotFoundError) and exc.name == "mmcv._ext":
            return "mmcv-lite is installed, which has none"
        return f"mmcv._ext does not import ({type(exc).__name__}: {str(exc).strip().splitlines()[0]})"
    return None


def apply() -> None:
    """Apply every patch once; safe to call many times, and before or after importing torch."""
    global _applied
    if _applied:
        return
    _applied = True
    error = _mmcv_ext_error() if importlib.util.find_spec("mmcv") is not None else None
    if error is not None:
        _install_lite_ops(error)
        # mmcv.cnn tries the compiled deformable attention once and warns; it is expected here.
        warnings.filterwarnings("ignore", message="Fail to import ``MultiScaleDeformableAttention``")
    _patch_torch_load()
    _patch_sync_batchnorm()


def _point_sample(input, points, align_corners=False, **kwargs):
    """Pure-torch ``mmcv.ops.point_sample``: bilinear samples at points given in [0, 1] coordinates."""
    import torch.nn.functional as F

    add_dim = points.dim() == 3
    if add_dim:
        points = points.unsqueeze(2)
    output = F.grid_sample(input, 2.0 * points - 1.0, align_corners=align_corners, **kwargs)
    return output.squeeze(3) if add_dim else output


def _missing_op(name: str, error: str):
    message = f"mmcv.ops.{name} needs mmcv's compiled ops (mmcv._ext), and {error}"

    class _Missing:
        def __init__(self, *args, **kwargs):
            raise MissingMMCVOp(message)

        def __init_subclass__(cls, **kwargs):  # subclasses fail when built, not when defined
            super().__init_subclass__(**kwargs)

        @classmethod
        def apply(cls, *args, **kwargs):
            raise MissingMMCVOp(message)

    _Missing.__name__ = _Missing.__qualname__ = name
    return _Missing


def _install_lite_ops(error: str) -> None:
    ops = types.ModuleType("mmcv.ops")
    ops.__doc__ = "ablate's stand-in for mmcv.ops under mmcv-lite (see ablate.compat)."
    ops.__file__ = __file__
    ops.__path__ = []  # a package, so `import mmcv.ops.x` fails with ModuleNotFoundError
    ops.point_sample = _point_sample
    ops.__getattr__ = lambda name: _lite_getattr(ops, name, error)
    sys.modules["mmcv.ops"] = ops
    import mmcv

    mmcv.ops = ops


def _lite_getattr(module: types.ModuleType, name: str, error: str):
    if name.startswith("__"):
        raise AttributeError(name)
    placeholder = _missing_op(name, error)
    setattr(module, name, placeholder)
    return placeholder


def trust_checkpoints_under(directory: str | os.PathLike) -> None:
    """Let checkpoints below ``directory`` (written by this tool) load with ``weights_only=False``."""
    _TRUSTED_DIRS.append(Path(directory).resolve())


def _is_trusted(f) -> bool:
    if not isinstance(f, (str, os.PathLike)):
        return False
    path = Path(f).resolve()
    return any(path.is_relative_to(d) for d in _TRUSTED_DIRS)


def _patch_torch_load() -> None:
    import torch

    original = torch.load
    if getattr(original, "_ablate_patched", False):
        return

    def load(f, *args, **kwargs):
        if "weights_only" not in kwargs and _is_trusted(f):
            kwargs["weights_only"] = False
        return original(f, *args, **kwargs)

    load._ablate_patched = True
    load.__doc__ = original.__doc__
    torch.load = load


class DataFileError(RuntimeError):
    """A file of the dataset that cannot be loaded; the message starts with its path."""


def name_data_files() -> None:
    """Make mmseg's annotation and image loading name the file that fails (once per process)."""
    from mmcv.transforms import LoadImageFromFile
    from mmseg.datasets.transforms import LoadAnnotations

    for cls, method, key in ((LoadAnnotations, "_load_seg_map", "seg_map_path"),
                             (LoadImageFromFile, "transform", "img_path")):
        original = getattr(cls, method)
        if getattr(original, "_ablate_names_files", False):
            continue

        def load(self, results, _original=original, _key=key):
            try:
                return _original(self, results)
            except Exception as exc:  # noqa: BLE001 - whatever the decoder raises, the path is what helps
                path = results.get(_key) if isinstance(results, dict) else None
                raise DataFileError(f"{path}: cannot be loaded ({type(exc).__name__}: {exc})") from exc

        load._ablate_names_files = True
        setattr(cls, method, load)


def _patch_sync_batchnorm() -> None:
    import torch
    from torch.nn.parallel import DistributedDataParallel

    sync_bn = torch.nn.SyncBatchNorm
    if getattr(sync_bn.forward, "_ablate_patched", False):
        return
    original_forward = sync_bn.forward
    # torch's private hook that refuses SyncBatchNorm in CPU modules (torch 1.x to 2.13 at least)
    original_handle = getattr(DistributedDataParallel, "_passing_sync_batchnorm_handle", None)

    def forward(self, input):
        if (input.device.type == "cpu" and self.training and torch.distributed.is_available()
                and torch.distributed.is_initialized()
                and torch.distributed.get_world_size(self.process_group) > 1):
            return _cpu_sync_batch_norm(self, input)
        return original_forward(self, input)

    def passing_sync_batchnorm_handle(self, module):
        if self.device_type != "cpu":  # on CPUs torch only raises here, and forward above copes
            original_handle(self, module)

    forward._ablate_patched = True
    sync_bn.forward = forward
    if original_handle is not None:
        DistributedDataParallel._passing_sync_batchnorm_handle = passing_sync_batchnorm_handle


def _cpu_sync_batch_norm(bn, x):
    """``bn(x)`` in training with the batch statistics of every process of ``bn.process_group``.

    Two all-reduces: the sums and counts give the mean, then the squared deviations give the
    (biased) variance, as sound numerically as one process's BatchNorm over the whole batch.
    Running statistics get the unbiased variance, as torch's SyncBatchNorm does. Autograd goes
    through both all-reduces, whose gradient is the sum of every process's gradient.
    """
    import torch

    group = bn.process_group or torch.distributed.group.WORLD
    all_reduce = _all_reduce_sum().apply
    dims = [0, *range(2, x.dim())]
    shape = [1, x.size(1)] + [1] * (x.dim() - 2)
    sums = all_reduce(torch.cat([x.sum(dims), x.new_tensor([x.numel() / x.size(1)])]), group)
    count = sums[-1].detach()
    mean = sums[:-1] / count
    var = all_reduce(((x - mean.view(shape)) ** 2).sum(dims), group) / count
    if bn.track_running_stats:
        with torch.no_grad():
            bn.num_batches_tracked += 1
            factor = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            bn.running_mean.lerp_(mean.detach(), factor)
            bn.running_var.lerp_(var.detach() * count / max(float(count) - 1, 1.0), factor)
    y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + bn.eps)
    return y * bn.weight.view(shape) + bn.bias.view(shape) if bn.affine else y


@functools.cache
def _all_reduce_sum():
    """An autograd Function: the sum over the processes; its gradient, the sum of their gradients.

    (torch's own, ``torch.distributed.nn.functional.all_reduce``, is deprecated and warns.)
    """
    import torch

    class AllReduceSum(torch.autograd.Function):
        @staticmethod
        def forward(ctx, tensor, group):
            ctx.group = group
            tensor = tensor.clone()
            torch.distributed.all_reduce(tensor, group=group)
            return tensor

        @staticmethod
        def backward(ctx, grad):
            grad = grad.clone()
            torch.distributed.all_reduce(grad, group=ctx.group)
            return grad, None

    return AllReduceSum


def cpu_ddp_overrides() -> dict:
    """Config keys that make mmengine's DDP run on CPU processes (gloo, no device ids)."""
    return {
        "env_cfg.dist_cfg": {"backend": "gloo"},
        "model_wrapper_cfg": {"type": "MMDistributedDataParallel", "device_ids": None},
    }
