"""A variant's segmentor: built from its config, counted (Params, MACs) and timed (latency).

Reads a resolved config (``ablate.configs.resolve``) and builds its segmentor on the CPU without
pretrained weights, importing the config's ``custom_imports`` (``freqfusion``) so that mmseg's
registry knows them. Writes nothing: it returns plain dicts, which ``ablate.measure.cache`` stores.

The forward pass counted is mmseg's ``get_flops`` one: ``model(inputs, mode="tensor")`` for one
image in inference mode (backbone and decode head; no auxiliary head is run; no resize of the
logits to the image size). It runs on the ``meta`` device (shapes only, seconds at 512x512) and
on the CPU when a model needs real values; both see the same operators, which
:class:`~ablate.measure.counter.MacCounter` books by kind.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

from ablate.measure.counter import MacCount, count_macs


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
            model = MODELS.build(without_weights(copy.deepcopy(cfg.model)))
        except KeyError as exc:  # mmengine: "X is not in the mmseg::model registry. ..."
            if "registry" not in str(exc):
                raise
            raise ConfigError(f"model does not build: {str(exc.args[0]).split('. ')[0]}; "
                              f"custom_imports: {imports or 'none'}") from None
    return model.eval()


_BUILD_NOISE = (r".*pkg_resources", r"Fail to import", r".*build_loss", r".*avg_non_ignore")


def without_weights(node):
    """``init_cfg`` and ``pretrained`` set to None everywhere: no download, same parameters."""
    if isinstance(node, dict):
        for key in list(node.keys()):
            if key in ("init_cfg", "pretrained"):
                node[key] = None
            else:
                without_weights(node[key])
    elif isinstance(node, (list, tuple)):
        for item in node:
            without_weights(item)
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
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        return f"{torch.cuda.get_device_name(index)} (cuda:{index})"
    threads = torch.get_num_threads()
    return f"{cpu_model()} ({dev.type}, {threads} thread{'s' * (threads != 1)})"


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

