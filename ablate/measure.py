"""Params, FLOPs (multiply-accumulates) and latency of a variant's model.

Reads a resolved config (``ablate.configs.resolve``), builds its segmentor on the CPU without
pretrained weights, and counts one forward pass of one image in inference mode. Writes, when asked,
one JSON file per model config to a cache folder, so that ``collect`` and ``report`` never rebuild
a model.

Why a counter of our own: mmengine's analyzer traces with the JIT and reports
``aten::scaled_dot_product_attention`` as unsupported (0 FLOPs); ``torch.utils.flop_counter``
also gives 0 for SDPA on the CPU (its fused CPU kernel is not in its registry). The attention
switch of the study costs ~17 GMACs at 512x512, so both would miss it. :class:`MacCounter` is a
``TorchDispatchMode``: it sees every aten operator that runs, after autograd, as the kernels do.

Counting conventions, MACs by kind ("G" is 1e9 MACs, what mmseg/mmengine tables print as GFLOPs;
"= mmengine" marks the rules its analyzer applies too, so a model without attention or CARAFE gets
the same total from both, which a test checks on SegNeXt-T):

- ``conv``: ``convolution``, out elements x Cin/groups x kh x kw (transposed: in elements x
  Cout/groups x kh x kw); bias not counted. = mmengine.
- ``matmul``: ``mm addmm bmm baddbmm mv addmv dot``, out elements x inner dim (= mmengine; einsum,
  matmul and linear arrive as these). Every SDPA kernel (fused CPU, flash, efficient, cuDNN,
  math), B x heads x Lq x Lk x (E + Ev), i.e. Q K^T plus A V; softmax not counted (mmengine: 0).
  An element-wise ``mul`` whose product is then reduced by ``sum`` / ``mean`` is a dot product
  written element-wise: one MAC per reduced element (mmengine: 0).
- ``carafe``: the work run inside a CARAFE call, i.e. below a Python frame whose function or file
  name contains ``carafe``: its matrix products, and every element-wise product of two tensors
  (``mul``, ``addcmul``) at one MAC per product element (a later ``sum`` of it is not counted
  again). The reassembly is a weighted sum over k x k taps, out elements x k^2 MACs, whether
  written as unfold + ``bmm``/einsum (freqfusion on CUDA), as unfold * kernel, sum, or as one
  ``mul`` and k^2 - 1 ``addcmul_`` of shifted views (freqfusion on the CPU). mmengine counts
  only the einsum form.
- ``other``: norms (BatchNorm in eval 2 per element, 1 without affine; GroupNorm, LayerNorm and
  BatchNorm in training 5, 4 without affine), upsampling (nearest 1, linear 2, bilinear 4,
  bicubic 16 per output element), ``adaptive_avg_pool2d`` (input elements), ``grid_sampler``
  (bilinear 4, nearest 1, bicubic 16 per output element). = mmengine (it assumes bilinear).

Everything else is *not counted* and is recorded by name with how often it ran: ``ignored`` holds
operators of no MAC cost by the mmseg convention (element-wise and activations, softmax, plain
reductions, pooling, views, copies, padding, unfold, tensor creation); ``uncounted`` holds any
other operator, whose cost is unknown to this counter, so a report can say that its FLOPs may
miss something. The forward pass is mmseg's ``get_flops`` one: ``model(inputs, mode="tensor")``
(backbone and decode head; no auxiliary head is run; no resize of the logits to the image size).
The pass runs on the ``meta`` device (shapes only, seconds at 512x512) and on the CPU when a model
needs real values; both see the same operators. The counter cannot see compiled ops that bypass
the dispatcher (mmcv's CUDA ``carafe``), which is one more reason it counts on the CPU/meta path.

Measured on Table 2 at 3x512x512 (GMACs; this counter / mmengine's analyzer / mmcv's module-hook
counter ``mmcv.cnn.utils.get_model_complexity_info``, the kind the study used; paper):
baseline 6.950 / 6.881 / 6.645 / 7.03; + DWT +0.102 / +0.102 / +0.097 / +0.09; + Attention
+16.979 / +0 / +0 / +0.01. mmengine misses CARAFE (0.063, a Python autograd op to its JIT trace)
and the sampler's similarity dot products (0.006); the hook counter also misses Hamburger's
``bmm`` (0.302) but adds conv biases and activations. Neither sees the attention.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

KINDS = ("conv", "matmul", "carafe", "other")
# Work run below a Python frame whose function or file name matches the pattern is booked to that
# kind: its matrix products (and mul+sum) instead of to ``matmul``, and its element-wise products.
DEFAULT_REGIONS = {"carafe": r"carafe"}


# --------------------------------------------------------------------------- the counter


@dataclass
class MacCount:
    """What :func:`count_macs` saw: MACs by kind and per operator, and the operators not counted."""

    by_kind: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    counted: dict[str, list[int]] = field(default_factory=dict)  # "aten::bmm" -> [calls, MACs]
    ignored: Counter = field(default_factory=Counter)  # "aten::add" -> calls (no cost by convention)
    uncounted: Counter = field(default_factory=Counter)  # "aten::topk" -> calls (cost unknown)

    @property
    def total(self) -> int:
        return sum(self.by_kind.values())

    def add(self, op: str, kind: str, macs: int) -> None:
        self.by_kind[kind] = self.by_kind.get(kind, 0) + macs
        calls_macs = self.counted.setdefault(f"{op} [{kind}]", [0, 0])
        calls_macs[0] += 1
        calls_macs[1] += macs


def _numel(shape) -> int:
    return math.prod(int(s) for s in shape)


def _conv(args, out) -> int:
    x, w, transposed = args[0], args[1], bool(args[6]) if len(args) > 6 else False
    if transposed:  # weight (Cin, Cout/groups, k...): each input element feeds Cout/groups x k taps
        return x.numel() * _numel(w.shape[1:])
    return out.numel() * _numel(w.shape[1:])


def _mm(a_index: int) -> Callable:
    """``out elements x inner dim``, the inner dim being the last of the argument at ``a_index``."""
    return lambda args, out: out.numel() * int(args[a_index].shape[-1])


def _sdpa(args, out) -> int:
    q, k, v = args[0], args[1], args[2]
    # Q K^T: batch x Lq x Lk x E, then A V: batch x Lq x Lk x Ev (batch = all leading dims of q)
    return _numel(q.shape[:-1]) * int(k.shape[-2]) * (int(q.shape[-1]) + int(v.shape[-1]))


def _norm(weight_index: int, per_element: int, training_index: int | None = None, evaluation: int = 2):
    """mmengine's norm rule: ``per_element`` MACs per input element (GN, LN, BN in training), or
    ``evaluation`` for BatchNorm in eval mode; one less without an affine weight."""

    def count(args, out):
        affine = len(args) > weight_index and args[weight_index] is not None
        training = training_index is None or bool(args[training_index])
        return args[0].numel() * ((per_element if training else evaluation) - (0 if affine else 1))

    return count


def _per_output(factor: int) -> Callable:
    return lambda args, out: factor * out.numel()


def _grid_sample(args, out) -> int:
    mode = int(args[2]) if len(args) > 2 else 0  # 0 bilinear, 1 nearest, 2 bicubic
    return {0: 4, 1: 1, 2: 16}.get(mode, 4) * out.numel()


def _handlers() -> dict:
    """overload packet -> (kind, cost function(args, out) -> MACs)."""
    import torch

    aten = torch.ops.aten
    table: dict = {}

    def add(names, kind, fn):
        for name in names:
            packet = getattr(aten, name, None)
            if packet is not None:  # operators differ between torch versions
                table[packet] = (kind, fn)

    add(["convolution", "_convolution", "mkldnn_convolution", "cudnn_convolution"], "conv", _conv)
    add(["mm", "bmm", "mv", "dot", "vdot"], "matmul", _mm(0))
    add(["addmm", "baddbmm", "addmv", "addbmm", "_addmm_activation"], "matmul", _mm(1))
    add(["scaled_dot_product_attention", "_scaled_dot_product_attention_math",
         "_scaled_dot_product_flash_attention", "_scaled_dot_product_flash_attention_for_cpu",
         "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
         "_scaled_dot_product_fused_attention_overrideable"], "matmul", _sdpa)
    add(["native_batch_norm", "cudnn_batch_norm"], "other", _norm(1, 5, training_index=5))
    add(["_native_batch_norm_legit_no_training", "_batch_norm_no_update"], "other", _norm(1, 2))
    add(["_native_batch_norm_legit", "_batch_norm_with_update"], "other", _norm(1, 5))
    add(["native_group_norm"], "other", _norm(1, 5))
    add(["native_layer_norm"], "other", _norm(2, 5))
    add(["upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d", "_upsample_nearest_exact1d",
         "_upsample_nearest_exact2d", "_upsample_nearest_exact3d"], "other", _per_output(1))
    add(["upsample_linear1d"], "other", _per_output(2))
    add(["upsample_bilinear2d", "_upsample_bilinear2d_aa"], "other", _per_output(4))
    add(["upsample_trilinear3d"], "other", _per_output(8))
    add(["upsample_bicubic2d", "_upsample_bicubic2d_aa"], "other", _per_output(16))
    add(["_adaptive_avg_pool2d", "adaptive_avg_pool2d"], "other", lambda args, out: args[0].numel())
    add(["grid_sampler_2d", "grid_sampler", "cudnn_grid_sampler"], "other", _grid_sample)
    add(["grid_sampler_3d"], "other", lambda args, out: 8 * out.numel())
    return table


# Operators of no MAC cost by the mmseg convention (besides every view and every op tagged pointwise).
_FREE = set("""
    _softmax softmax _safe_softmax _log_softmax log_softmax sum mean amax amin max min argmax argmin
    linalg_vector_norm norm var std var_mean std_mean cumsum prod all any
    cat stack clone copy_ _to_copy to contiguous _unsafe_view view reshape flatten constant_pad_nd pad
    reflection_pad1d reflection_pad2d replication_pad1d replication_pad2d im2col col2im pixel_shuffle
    pixel_unshuffle index index_select gather scatter scatter_add masked_fill masked_fill_ where
    fill_ zero_ roll flip repeat repeat_interleave split split_with_sizes unbind chunk narrow
    empty empty_like empty_strided new_empty new_empty_strided zeros zeros_like ones ones_like full
    full_like new_zeros new_ones new_full arange linspace scalar_tensor lift_fresh lift_fresh_copy
    detach alias _local_scalar_dense bernoulli bernoulli_ native_dropout dropout rand rand_like randn
    randn_like uniform_ normal_ random_ max_pool2d max_pool2d_with_indices avg_pool2d
    clamp clamp_ clamp_min clamp_min_ clamp_max clamp_max_ _to_dense set_ resize_ copy
""".split())
_MUL = {"mul", "mul_"}
_PRODUCT = {"mul": 0, "mul_": 0, "addcmul": 1, "addcmul_": 1}  # op -> index of its first factor
_REDUCE = {"sum", "mean"}


class MacCounter:
    """Count the MACs of everything run inside ``with MacCounter() as c:``; results in ``c.count``.

    Args:
        regions: ``{kind: regex}``; a matrix product (or mul+sum) whose Python call stack has a
            frame whose function name or file name matches ``regex`` is booked to ``kind`` instead
            of ``matmul`` (default: CARAFE calls).
    """

    def __init__(self, regions: dict[str, str] | None = None):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils.weak import WeakIdKeyDictionary

        self.count = MacCount()
        self._regions = [(kind, re.compile(rx, re.IGNORECASE))
                         for kind, rx in (DEFAULT_REGIONS if regions is None else regions).items()]
        for kind, _ in self._regions:
            self.count.by_kind.setdefault(kind, 0)
        self._handlers = _handlers()
        self._products = WeakIdKeyDictionary()  # tensors holding an element-wise product (or a view of one)
        counter = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                return counter._dispatch(self, func, args, kwargs or {})

        self._mode = _Mode()

    def __enter__(self) -> "MacCounter":
        self._outer = sys._getframe(1)  # regions are looked for below this frame only
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)

    def _dispatch(self, mode, func, args, kwargs):
        import torch

        packet = func.overloadpacket
        handler = self._handlers.get(packet)
        if handler is None and torch._C._dispatch_has_kernel_for_dispatch_key(
                func.name(), torch._C.DispatchKey.CompositeImplicitAutograd):
            # Under inference_mode composite ops (conv2d, linear, einsum, matmul) arrive whole;
            # run their decomposition with the counter active so the kernels below are seen.
            with mode:
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        out = func(*args, **kwargs)
        name = func.name().split(".")[0]  # "aten::mul.Tensor" -> "aten::mul"
        base = name.split("::")[-1]
        if handler is not None:
            kind, cost = handler
            if kind == "matmul":
                kind = self._region() or kind
            self.count.add(name, kind, int(cost(args, out)))
        elif base in _PRODUCT and _two_tensors(args[_PRODUCT[base]:_PRODUCT[base] + 2]) and \
                (region := self._region()) is not None:
            # inside CARAFE every element-wise product of two tensors is a tap of the weighted sum
            # (freqfusion's CPU path: mul, then addcmul_ per tap): one MAC per product element
            self.count.add(name, region, out.numel())
        elif base in _REDUCE and isinstance(args[0], torch.Tensor) and args[0] in self._products:
            # a dot product written element-wise: one MAC per reduced element
            self.count.add(f"aten::mul+{base}", self._region() or "matmul", args[0].numel())
        else:
            self._track_products(func, base, args, out)
            free = base in _FREE or func.is_view or torch.Tag.pointwise in func.tags
            (self.count.ignored if free else self.count.uncounted)[name] += 1
        return out

    def _track_products(self, func, base, args, out) -> None:
        import torch

        if not isinstance(out, torch.Tensor):
            return
        if base in _MUL:
            if _two_tensors(args[:2]):
                self._products[out] = True
        elif (func.is_view or base in {"_unsafe_view", "clone", "contiguous", "reshape"}) and \
                isinstance(args[0], torch.Tensor) and args[0] in self._products:
            self._products[out] = True

    def _region(self) -> str | None:
        if not self._regions:
            return None
        frame = sys._getframe(3)  # the caller of __torch_dispatch__
        while frame is not None and frame is not self._outer:
            code = frame.f_code
            for kind, pattern in self._regions:
                if pattern.search(code.co_name) or pattern.search(os.path.basename(code.co_filename)):
                    return kind
            frame = frame.f_back
        return None


def _two_tensors(factors) -> bool:
    """Two tensor factors of more than one element each: a product of data, not a scaling."""
    import torch

    return len(factors) == 2 and all(isinstance(f, torch.Tensor) and f.numel() > 1 for f in factors)


def count_macs(fn: Callable, *args, regions: dict[str, str] | None = None, **kwargs) -> MacCount:
    """Run ``fn(*args, **kwargs)`` under ``torch.no_grad()`` and return what it cost.

    Args:
        fn: a module or any callable running torch operators.
        regions: see :class:`MacCounter`; default books CARAFE calls to ``carafe``.
    """
    import torch

    with torch.no_grad(), MacCounter(regions) as counter:
        fn(*args, **kwargs)
    return counter.count


# --------------------------------------------------------------------------- building and measuring


def build_model(cfg):
    """The segmentor of ``cfg`` in eval mode on the CPU, without pretrained weights.

    ``custom_imports`` of the config (``freqfusion``) are imported first, so that its modules are
    in mmseg's registry; ablate itself never imports them.
    """
    from ablate import compat

    compat.apply()  # before mmseg: mmcv-lite stand-ins
    import copy
    import warnings

    from ablate.errors import ConfigError

    with warnings.catch_warnings():
        for noise in _BUILD_NOISE:  # import-time and deprecation chatter of mmengine/mmcv/mmseg
            warnings.filterwarnings("ignore", message=noise)
        from mmengine.registry import init_default_scope
        from mmengine.utils import import_modules_from_strings
        from mmseg.registry import MODELS
        from mmseg.utils import register_all_modules

        imports = list((cfg.get("custom_imports") or {}).get("imports", []) or [])
        try:
            import_modules_from_strings(imports, allow_failed_imports=False)
        except ImportError as exc:
            raise ConfigError(f"custom_imports {imports} of the config do not import: {exc}") from None
        for name in imports:
            if getattr(sys.modules.get(name), "__file__", "") is None:  # a namespace package
                raise ConfigError(
                    f"custom import `{name}` is an empty namespace package here ({sys.modules[name].__path__}); "
                    "its __init__.py is not found on this path: reinstall with `pip install -e .`")
        init_default_scope(cfg.get("default_scope", "mmseg"))
        register_all_modules(init_default_scope=False)
        try:
            model = MODELS.build(_without_weights(copy.deepcopy(cfg.model)))
        except KeyError as exc:  # mmengine: "X is not in the mmseg::model registry. ..."
            if "registry" not in str(exc):
                raise
            raise ConfigError(f"model does not build: {str(exc.args[0]).split('. ')[0]}; "
                              f"custom_imports: {imports or 'none'}") from None
    return model.eval()


_BUILD_NOISE = (r".*pkg_resources", r"Fail to import", r".*build_loss", r".*avg_non_ignore")


def _without_weights(node):
    """``init_cfg`` and ``pretrained`` set to None everywhere: no download, same parameters."""
    if isinstance(node, dict):
        for key in list(node.keys()):
            if key in ("init_cfg", "pretrained"):
                node[key] = None
            else:
                _without_weights(node[key])
    elif isinstance(node, (list, tuple)):
        for item in node:
            _without_weights(item)
    return node


def measure_model(model, input_shape=(3, 512, 512), device: str = "meta") -> dict:
    """Params and MACs of a built segmentor for one image of ``input_shape`` (C, H, W).

    Args:
        model: the segmentor (left unchanged: a copy is counted).
        input_shape: (C, H, W).
        device: ``"meta"`` counts on shape-only tensors (no arithmetic, a few seconds at 512x512)
            and falls back to the CPU when the model needs real values; ``"cpu"`` always computes.

    Returns:
        ``{"params_m", "gmacs", "macs", "gmacs_by_kind", "uncounted", "ignored", "ops",
        "input_shape", "counted_on"}``: ``macs`` is the exact integer behind ``gmacs``, ``ops`` maps
        ``"aten::bmm [matmul]"`` to ``[calls, GMACs]``, ``uncounted`` and ``ignored`` map operator
        names to calls, and ``counted_on`` is ``"meta"`` or ``"cpu"``.
    """
    import copy

    import torch

    count, counted_on = None, "cpu"
    if device == "meta":
        try:
            count, counted_on = _count_forward(copy.deepcopy(model).to("meta"), input_shape, "meta"), "meta"
        except Exception:  # an op without a meta kernel, or a value the model reads (.item())
            count = None
    if count is None:
        torch.manual_seed(0)  # Hamburger's NMF draws random bases; the count does not depend on them
        count = _count_forward(model, input_shape, "cpu")
    return {
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "gmacs": count.total / 1e9,
        "macs": count.total,
        "gmacs_by_kind": {kind: macs / 1e9 for kind, macs in count.by_kind.items()},
        "uncounted": dict(count.uncounted.most_common()),
        "ignored": dict(count.ignored.most_common()),
        "ops": {op: [calls, macs / 1e9] for op, (calls, macs) in
                sorted(count.counted.items(), key=lambda item: -item[1][1])},
        "input_shape": [int(s) for s in input_shape],
        "counted_on": counted_on,
    }


def _count_forward(model, input_shape, device: str) -> MacCount:
    import torch

    inputs = torch.rand(1, *input_shape, device=device)
    if hasattr(model, "extract_feat"):  # an mmseg segmentor: mmseg's get_flops forward
        return count_macs(lambda x: model(x, None, mode="tensor"), inputs)
    return count_macs(model, inputs)


def measure_config(cfg, input_shape=(3, 512, 512)) -> dict:
    """Params (M, all segmentor parameters) and GMACs of the model of a resolved config.

    Args:
        cfg: an mmengine Config with ``model`` (and ``custom_imports`` when it needs them).
        input_shape: (C, H, W) of the one image counted.

    Returns:
        See :func:`measure_model`.
    """
    return measure_model(build_model(cfg), input_shape)


# --------------------------------------------------------------------------- cache


def default_cache_dir(work_root: str | os.PathLike | None = None) -> Path:
    """``<work_root>/.measure`` (``$ABLATE_WORK_DIR`` or ``work_dirs``), where collect looks too."""
    return Path(work_root or os.environ.get("ABLATE_WORK_DIR", "work_dirs")) / ".measure"


def model_hash(cfg, input_shape) -> str:
    """Hash of what decides a measurement: ``cfg.model`` (weights' sources left out), the input
    shape, and the code: the source of the config's ``custom_imports`` packages and of this
    module, and the installed torch and mmseg versions. A change to any of them misses the cache."""
    import copy
    from importlib.metadata import PackageNotFoundError, version

    model = _without_weights(copy.deepcopy(cfg.model))
    model = model.to_dict() if hasattr(model, "to_dict") else model
    parts = {"model": model, "input_shape": [int(s) for s in input_shape],
             "code": _source_hash([Path(__file__)] + _custom_import_files(cfg))}
    for package in ("torch", "mmsegmentation"):
        try:
            parts[package] = version(package)
        except PackageNotFoundError:
            parts[package] = None
    text = json.dumps(parts, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _custom_import_files(cfg) -> list[Path]:
    """The Python files of the packages named in ``cfg.custom_imports``, found without importing them."""
    import importlib.util

    files: list[Path] = []
    for name in (cfg.get("custom_imports") or {}).get("imports", []) or []:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            continue
        if spec.submodule_search_locations:
            for folder in spec.submodule_search_locations:
                files += sorted(Path(folder).rglob("*.py"))
        elif spec.origin and spec.origin.endswith(".py"):
            files.append(Path(spec.origin))
    return files


def _source_hash(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def measure_cached(cfg, input_shape=(3, 512, 512), cache_dir: str | os.PathLike | None = None) -> dict:
    """:func:`measure_config`, or its earlier result from ``cache_dir/<model_hash>.json``.

    Args:
        cfg: a resolved config.
        input_shape: (C, H, W).
        cache_dir: the cache folder; default :func:`default_cache_dir`.

    Returns:
        The measurement, with ``model_hash`` and ``cached`` (whether it came from the cache).
    """
    from ablate.io import read_json, write_json

    key = model_hash(cfg, input_shape)
    path = Path(cache_dir if cache_dir is not None else default_cache_dir()) / f"{key}.json"
    if path.is_file():
        try:
            result = read_json(path)
            if isinstance(result, dict) and "gmacs" in result:
                return {**result, "cached": True}
        except (OSError, ValueError):
            pass  # corrupt or unreadable: measure again and overwrite
    result = {**measure_config(cfg, input_shape), "model_hash": key}
    write_json(path, result)
    return {**result, "cached": False}


def uncounted_note(measurement: dict) -> str | None:
    """A report note when the counter met operators of unknown cost, else None."""
    uncounted = measurement.get("uncounted") or {}
    if not uncounted:
        return None
    ops = ", ".join(f"{op} x{n}" for op, n in uncounted.items())
    return f"FLOPs may be too low: operators not counted ({ops}); see `ablate measure --audit`"


# --------------------------------------------------------------------------- latency


def measure_latency(cfg, input_shape=(3, 512, 512), device: str | None = None, warmup: int = 10,
                    repeats: int = 50) -> dict:
    """Median wall time of one forward pass (batch 1, inference mode) after ``warmup`` passes.

    Args:
        cfg: a resolved config (or an already built segmentor).
        input_shape: (C, H, W).
        device: ``"cuda"``, ``"cuda:1"``, ``"cpu"``; default CUDA when available.
        warmup: passes not timed (cudnn autotuning, allocator warm-up).
        repeats: timed passes; the median is reported, and the spread as the 10th-90th percentiles.

    Returns:
        ``{"latency_ms", "latency_p10_ms", "latency_p90_ms", "device", "repeats", "warmup"}``.
    """
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = cfg if isinstance(cfg, torch.nn.Module) else build_model(cfg)
    model = model.to(device).eval()
    inputs = torch.rand(1, *input_shape, device=device)
    forward = (lambda: model(inputs, None, mode="tensor")) if hasattr(model, "extract_feat") else (
        lambda: model(inputs))
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    times = []
    with torch.inference_mode():
        for step in range(warmup + repeats):
            sync()
            start = time.perf_counter()
            forward()
            sync()
            if step >= warmup:
                times.append((time.perf_counter() - start) * 1e3)
    deciles = statistics.quantiles(times, n=10) if len(times) > 1 else times * 9
    return {"latency_ms": statistics.median(times), "latency_p10_ms": deciles[0],
            "latency_p90_ms": deciles[-1], "device": device_name(device), "repeats": repeats,
            "warmup": warmup}


def device_name(device: str) -> str:
    """``"NVIDIA H100 80GB HBM3 (cuda:0)"`` or ``"AMD EPYC 7B13 (cpu, 2 threads)"``."""
    import platform

    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        return f"{torch.cuda.get_device_name(index)} (cuda:{index})"
    return f"{cpu_model()} ({dev.type}, {torch.get_num_threads()} threads)"


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), else what ``platform`` knows."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


# --------------------------------------------------------------------------- a study's variants


def parse_shape(text: str) -> tuple[int, int, int]:
    """``"3,512,512"`` (or ``3x512x512``) -> ``(3, 512, 512)``; ValueError otherwise."""
    parts = [p for p in re.split(r"[,x\s]+", text.strip()) if p]
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"`{text}` is not C,H,W (three positive integers, e.g. 3,512,512)")
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


def measure_study(study, profile: str, input_shape=None, variants: list[str] | None = None,
                  cache_dir: str | os.PathLike | None = None, use_cache: bool = True,
                  latency: dict | None = None, progress: Callable[[str, dict, float], None] | None = None
                  ) -> dict[str, dict]:
    """Measure each variant of a study once (the seed does not change the model).

    Args:
        study: a loaded :class:`~ablate.study.Study`.
        profile: the profile whose configs are resolved.
        input_shape: (C, H, W); default the study's ``input_shape``.
        variants: a subset of variant names, or None for all.
        cache_dir: see :func:`measure_cached`; ``use_cache=False`` measures again and refreshes it.
        latency: keyword arguments of :func:`measure_latency` (``device``, ``warmup``, ``repeats``),
            or None not to time.
        progress: called as ``progress(variant, None, 0.0)`` before and
            ``progress(variant, measurement, seconds)`` after each variant.

    Returns:
        ``{variant: measurement}`` in the study's order.
    """
    from ablate import configs

    shape = tuple(input_shape or study.input_shape)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    results: dict[str, dict] = {}
    for run in study.runs(profile, variants=variants, seeds=[study.seeds[0]]):
        if progress is not None:
            progress(run.variant, None, 0.0)
        start = time.perf_counter()
        cfg = configs.resolve(study, run)
        if use_cache:
            result = measure_cached(cfg, shape, cache)
        else:
            from ablate.io import write_json

            result = {**measure_config(cfg, shape), "model_hash": model_hash(cfg, shape)}
            write_json(cache / f"{result['model_hash']}.json", result)
            result["cached"] = False
        if latency is not None:
            result.update(measure_latency(cfg, shape, **latency))
        results[run.variant] = result
        if progress is not None:
            progress(run.variant, result, time.perf_counter() - start)
    return results


def render_measurements(console, study, results: dict[str, dict], audit: bool = False) -> None:
    """Print the Params / GMACs table (with deltas and the paper's numbers) and, with ``audit``,
    each variant's GMACs by kind and operator and every operator not counted."""
    from rich.table import Table

    if audit:
        for name, result in results.items():
            _render_audit(console, name, result)
    base = results.get(study.baseline)
    timed = any("latency_ms" in r for r in results.values())
    shape = "x".join(map(str, next(iter(results.values()))["input_shape"])) if results else "?"
    table = Table(title=f"{study.name}: Params and GMACs for one {shape} image, inference")
    table.add_column("variant", no_wrap=True)
    for column in ("Params (M)", "Δ", "GMACs", "Δ", "paper Params", "paper FLOPs") + (
            ("latency (ms)",) if timed else ()):
        table.add_column(column, justify="right")
    for name, result in results.items():
        paper = study.variant(name).paper
        is_base = name == study.baseline
        row = [name, f"{result['params_m']:.3f}", _delta(result, base, "params_m", is_base, 3),
               f"{result['gmacs']:.2f}", _delta(result, base, "gmacs", is_base, 2),
               _paper(paper, study, "Params", is_base), _paper(paper, study, "FLOPs", is_base)]
        if timed:
            row.append(f"{result['latency_ms']:.1f}" if "latency_ms" in result else "-")
        table.add_row(*row)
    console.print(table)
    console.print("GMACs: multiply-accumulates (G) of mmseg's get_flops forward, which mmseg/mmengine "
                  "tables print as GFLOPs; every matrix product counts, SDPA and CARAFE included.")
    devices = sorted({r["device"] for r in results.values() if "device" in r})
    if devices:
        console.print(f"latency: median of timed forward passes after warm-up, batch 1, on {', '.join(devices)}")
    for name, result in results.items():
        note = uncounted_note(result)
        if note:
            console.print(f"[yellow]{name}: {note}[/]")


def _delta(result, base, key, is_base, digits) -> str:
    if is_base or base is None:
        return "-"
    return f"{result[key] - base[key]:+.{digits}f}"


def _paper(paper: dict, study, metric: str, is_base: bool) -> str:
    value = paper.get(metric)
    if value is None:
        return "-"
    base = study.variant(study.baseline).paper.get(metric)
    if is_base or base is None:
        return f"{value:g}"
    return f"{value - base:+.2f}"


def _render_audit(console, name: str, result: dict) -> None:
    from rich.table import Table

    total = result["gmacs"] or 1.0
    table = Table(box=None, title_justify="left",
                  title=f"{name}: {result['gmacs']:.3f} GMACs, {result['params_m']:.3f} M params")
    table.add_column("operator")
    table.add_column("kind")
    for column in ("calls", "GMACs", "share"):
        table.add_column(column, justify="right")
    for kind, gmacs in result["gmacs_by_kind"].items():
        table.add_row(f"[bold]{kind}[/]", "", "", f"[bold]{gmacs:.4f}[/]", f"{gmacs / total:.1%}")
    for op, (calls, gmacs) in result.get("ops", {}).items():
        label, _, kind = op.partition(" [")
        table.add_row(f"  {label}", kind.rstrip("]"), str(calls), f"{gmacs:.4f}", f"{gmacs / total:.1%}")
    console.print(table)
    uncounted = result.get("uncounted") or {}
    console.print("  not counted, cost unknown: " + (", ".join(f"{op} x{n}" for op, n in uncounted.items())
                                                    if uncounted else "none"),
                  style="yellow" if uncounted else None)
    ignored = result.get("ignored") or {}
    console.print("  not counted, no MACs by convention: " + (", ".join(f"{op} x{n}" for op, n in ignored.items())
                                                              or "none"))
    console.print()
