"""Test-only stand-ins for the mmcv 1.x and mmseg 0.x names that upstream's SegNeXt files import.

Nothing of upstream is in this repository (see README.md): :func:`load` reads upstream's files
from a local checkout of https://github.com/Linwei-Chen/FreqFusion that the caller names, and
executes them in private modules whose ``import`` statements for ``mmcv.*``, ``mmseg.*`` and the
relative ``..builder``, ``..losses``, ``.decode_head``, ``.FreqFusion`` are answered from here,
so that they run beside the product's mmcv 2.x / mmseg 1.x without touching its modules or
registries. Every stand-in gives mmcv 1.x's names and numbers:

* ``ConvModule``, ``build_norm_layer``, ``DropPath``: mmcv 2.x's, which kept mmcv 1.x's code
  and submodule names (``conv``, ``bn``/``gn``, ``activate``).
* ``BaseModule`` and the ``*_init`` helpers: mmengine's, where mmcv 1.x's moved unchanged;
  ``auto_fp16``/``force_fp32`` leave the function as it is (no mixed precision here).
* ``carafe``: the product's pure-torch ``freqfusion.carafe.carafe``, which has mmcv's semantics
  and is checked against a direct loop in ``tests/test_ff_carafe.py``; mmcv-lite has no op.
* ``resize``: mmseg 1.x's ``mmseg.models.utils.resize``, the same function as 0.x's ``mmseg.ops``.
* ``BACKBONES``/``HEADS``: a dict per :func:`load`, so each load registers afresh.
* ``build_loss``: a module without parameters, as 0.x's CrossEntropyLoss is; the tests never
  compute a loss, so ``accuracy`` and ``build_pixel_sampler`` raise when called.

One change of behaviour, made after loading and not in the files: upstream draws the random
bases of its NMF with ``.cuda()``; :func:`load` makes it draw the same ``torch.rand`` on the
CPU, where the tests run.
"""
from __future__ import annotations

import builtins
import types
from pathlib import Path

import mmengine.model
from mmcv.cnn import ConvModule, build_norm_layer
from mmcv.cnn.bricks import DropPath
from mmseg.models.utils import resize
from torch import nn

from freqfusion.carafe import carafe as torch_carafe

# Upstream's files that :func:`load` executes, relative to the root of a FreqFusion checkout.
FILES = {
    "mscan": "SegNeXt/mmseg/models/backbones/mscan.py",
    "decode_head": "SegNeXt/mmseg/models/decode_heads/decode_head.py",
    "ham_head": "SegNeXt/mmseg/models/decode_heads/ham_head.py",
    "FreqFusion": "SegNeXt/mmseg/models/decode_heads/FreqFusion.py",
}


class _Registry(dict):
    """mmcv 1.x's ``Registry.register_module()`` decorator, recording classes by name."""

    def register_module(self):
        def add(cls):
            self[cls.__name__] = cls
            return cls
        return add


def _keep(*args, **kwargs):
    """``auto_fp16(...)`` / ``force_fp32(...)``: a decorator that returns the function unchanged."""
    return lambda fn: fn


def _training_only(name: str):
    def fail(*args, **kwargs):
        raise NotImplementedError(f"upstream_0x shim: `{name}` is only used in training, which the tests never run")
    return fail


def _carafe(features, masks, kernel_size, group_size, scale_factor):
    """mmcv 1.x's ``carafe`` signature, run by the product's pure-torch CARAFE."""
    return torch_carafe(features, masks, kernel_size, group_size, scale_factor, impl="torch")


def _module(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    return module


def _stand_ins() -> dict[str, types.ModuleType]:
    init = mmengine.model
    builder = _module("builder", BACKBONES=_Registry(), HEADS=_Registry(),
                      build_loss=lambda cfg: nn.Module())
    return {
        "mmcv.cnn": _module("mmcv.cnn", ConvModule=ConvModule, build_norm_layer=build_norm_layer),
        "mmcv.cnn.bricks": _module("mmcv.cnn.bricks", DropPath=DropPath),
        "mmcv.cnn.utils.weight_init": _module("mmcv.cnn.utils.weight_init", constant_init=init.constant_init,
                                              normal_init=init.normal_init,
                                              trunc_normal_init=init.trunc_normal_init),
        "mmcv.runner": _module("mmcv.runner", BaseModule=init.BaseModule, auto_fp16=_keep, force_fp32=_keep),
        "mmcv.ops.carafe": _module("mmcv.ops.carafe", carafe=_carafe, normal_init=init.normal_init,
                                   xavier_init=init.xavier_init),
        "mmseg.core": _module("mmseg.core", build_pixel_sampler=_training_only("build_pixel_sampler")),
        "mmseg.ops": _module("mmseg.ops", resize=resize),
        "mmseg.models.builder": builder,
        "..builder": builder,
        "..losses": _module("losses", accuracy=_training_only("accuracy")),
    }


def _importer(modules: dict[str, types.ModuleType]):
    """An ``__import__`` that answers mmcv, mmseg and relative imports from ``modules``."""

    def upstream_import(name, globals=None, locals=None, fromlist=(), level=0):
        key = "." * level + name
        if level or name.split(".")[0] in ("mmcv", "mmseg"):
            if key not in modules:
                raise ImportError(f"upstream_0x shim has no stand-in for `{key}`")
            if not fromlist:
                raise ImportError(f"upstream_0x shim answers only `from {key} import ...`")
            return modules[key]
        return builtins.__import__(name, globals, locals, fromlist, level)

    return upstream_import


def _execute(name: str, path: Path, modules: dict[str, types.ModuleType]) -> types.ModuleType:
    module = types.ModuleType(f"upstream_0x.{name}")
    module.__file__ = str(path)
    module.__builtins__ = {**vars(builtins), "__import__": _importer(modules)}
    exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), module.__dict__)
    return module


def load(upstream: str | Path, freqfusion_file: str | Path | None = None) -> types.SimpleNamespace:
    """Execute upstream's MSCAN and FreqFusion head from the checkout ``upstream``.

    Args:
        upstream: The root of a local FreqFusion checkout (it holds the paths in :data:`FILES`).
        freqfusion_file: The FreqFusion module the head imports: upstream's own (default) or a
            study's replacement of it (``FreqFusion_DWT-FF.py``, ``FreqFusion_DSConv.py``).

    Returns:
        A namespace with ``MSCAN``, ``LightHamHeadFreqAware`` and the executed ``modules``.
    """
    root = Path(upstream)
    modules = _stand_ins()
    mscan = _execute("mscan", root / FILES["mscan"], modules)
    modules[".decode_head"] = _execute("decode_head", root / FILES["decode_head"], modules)
    modules[".FreqFusion"] = _execute("FreqFusion", Path(freqfusion_file or root / FILES["FreqFusion"]), modules)
    ham = _execute("ham_head", root / FILES["ham_head"], modules)

    draw = ham.NMF2D._build_bases

    def bases_on_cpu(self, *args, cuda=False):
        return draw(self, *args, cuda=False)

    ham.NMF2D._build_bases = bases_on_cpu
    return types.SimpleNamespace(MSCAN=mscan.MSCAN, LightHamHeadFreqAware=ham.LightHamHeadFreqAware,
                                 modules=dict(modules, mscan=mscan, ham_head=ham))
