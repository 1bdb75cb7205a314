"""The MAC counter: multiply-accumulates of whatever torch runs inside it, by kind and by operator.

Reads nothing and writes nothing: :func:`count_macs` runs a callable under :class:`MacCounter`
and returns a :class:`MacCount`; ``ablate.measure.model`` runs it on a segmentor's forward pass.

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
- ``carafe``: the work run inside a CARAFE call, i.e. inside the profiler region named ``carafe``
  that freqfusion's ``carafe()`` opens (``torch.profiler.record_function("carafe")``): its matrix
  products, and every element-wise product of two tensors (``mul``, ``addcmul``) at one MAC per
  product element (a later ``sum`` of it is not counted again). The reassembly is a weighted sum
  over k x k taps, out elements x k^2 MACs, whether written as unfold + ``bmm``/einsum
  (freqfusion on CUDA), as unfold * kernel, sum, or as one ``mul`` and k^2 - 1 ``addcmul_`` of
  shifted views (freqfusion on the CPU). mmengine counts only the einsum form.
- ``other``: norms (BatchNorm in eval 2 per element, 1 without affine; GroupNorm, LayerNorm and
  BatchNorm in training 5, 4 without affine), upsampling (nearest 1, linear 2, bilinear 4,
  bicubic 16 per output element), ``adaptive_avg_pool2d`` (input elements), ``grid_sampler``
  (bilinear 4, nearest 1, bicubic 16 per output element). = mmengine (it assumes bilinear).

Everything else is *not counted* and is recorded by name with how often it ran: ``ignored`` holds
operators of no MAC cost by the mmseg convention (element-wise and activations, softmax, plain
reductions, pooling, views, copies, padding, unfold, tensor creation); ``uncounted`` holds any
other operator, whose cost is unknown to this counter, so a report can say that its FLOPs may
miss something. The counter cannot see compiled ops that bypass the dispatcher (mmcv's CUDA
``carafe``), which is one more reason ``ablate.measure.model`` counts on the CPU/meta path.

Regions are found by name, not by Python function or file names: ``record_function`` opens and
closes its region through the dispatcher (the operators ``profiler::_record_function_enter_new``
with the name and ``profiler::_record_function_exit``), so the dispatch mode sees both and keeps
a stack of the regions open inside it. They cost no MACs and are not recorded as operators.

Measured on Table 2 at 3x512x512 (GMACs; this counter / mmengine's analyzer / mmcv's module-hook
counter ``mmcv.cnn.utils.get_model_complexity_info``, the kind the study used; paper):
baseline 6.950 / 6.881 / 6.645 / 7.03; + DWT +0.102 / +0.102 / +0.097 / +0.09; + Attention
+16.979 / +0 / +0 / +0.01. mmengine misses CARAFE (0.063, a Python autograd op to its JIT trace)
and the sampler's similarity dot products (0.006); the hook counter also misses Hamburger's
``bmm`` (0.302) but adds conv biases and activations. Neither sees the attention.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

KINDS = ("conv", "matmul", "carafe", "other")
# Work run inside the profiler region of this name (``torch.profiler.record_function(name)``) is
# booked to that kind: its matrix products (and mul+sum) instead of to ``matmul``, and its
# element-wise products. freqfusion's ``carafe()`` opens the region ``carafe``.
DEFAULT_REGIONS = {"carafe": "carafe"}


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
        regions: ``{kind: region name}``; a matrix product (or mul+sum) or an element-wise product
            run inside ``torch.profiler.record_function(region name)`` is booked to ``kind``
            (default: CARAFE calls). The innermost such region wins; regions opened before the
            counter started are not seen.
    """

    def __init__(self, regions: dict[str, str] | None = None):
        import torch
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils.weak import WeakIdKeyDictionary

        self.count = MacCount()
        regions = DEFAULT_REGIONS if regions is None else regions
        self._kind_of = {name: kind for kind, name in regions.items()}
        for kind in regions:
            self.count.by_kind.setdefault(kind, 0)
        # record_function's start (its name the first argument) and end, as the dispatcher runs them
        self._enter = torch.ops.profiler._record_function_enter_new
        self._exit = torch.ops.profiler._record_function_exit
        self._open: list[str | None] = []  # kinds of the regions open now, innermost last (None: unbooked)
        self._handlers = _handlers()
        self._products = WeakIdKeyDictionary()  # tensors holding an element-wise product (or a view of one)
        counter = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                return counter._dispatch(self, func, args, kwargs or {})

        self._mode = _Mode()

    def __enter__(self) -> "MacCounter":
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)

    def _dispatch(self, mode, func, args, kwargs):
        import torch

        packet = func.overloadpacket
        if packet is self._enter:
            self._open.append(self._kind_of.get(args[0]))
            return func(*args, **kwargs)
        if packet is self._exit:
            # the handle it gets is a fresh wrapper each time, so regions are matched by nesting;
            # nothing is open when the region began before the counter did
            if self._open:
                self._open.pop()
            return func(*args, **kwargs)
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
        """The kind of the innermost open region that has one, else None."""
        return next((kind for kind in reversed(self._open) if kind is not None), None)


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
