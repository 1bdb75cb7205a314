"""Checkpoints of the study's mmseg 0.x models, renamed for our mmseg 1.x model, read safely.

The study (https://github.com/It-is-really-easy/cv-finalword) trained with upstream FreqFusion's
fork of mmseg 0.x (https://github.com/Linwei-Chen/FreqFusion, ``SegNeXt/``): MSCAN backbone and
``LightHamHeadFreqAware`` head, with the study's DWT/attention or DSConv FreqFusion. Our model is
``experiments/_base_/segnext_t_freqfusion_ade20k.py`` (``FreqFusionHamHead``, whose FreqFusion
keeps upstream's attribute names). Built from upstream's code, the two state dicts differ in one
place only, listed in :data:`RENAMES_0X`: mmseg 0.x's MSCAN ``Mlp`` wraps its depthwise conv in a
``DWConv`` module, 1.x's holds the conv itself. Any state dict with a 0.x key is 0.x.

Reads: a checkpoint file or http(s) URL (downloads are cached, by default in torch.hub's
``checkpoints`` folder). A file ablate did not write is a pickle from elsewhere, so it is read
with ``torch.load(weights_only=True)``: tensors and plain values only, plus stand-ins for the
numpy scalars that mmcv 1.x's EvalHook leaves in ``meta`` (``hook_msgs.best_score``), which
come back as Python numbers. A file that would run code when unpickled is refused, not run.

Writes: ``convert_file`` writes an mmengine-style checkpoint (``meta``, ``state_dict``),
atomically; the class names and palette of a 0.x ``meta`` become ``meta.dataset_meta``.

:func:`load_into` loads strictly: missing, unexpected or reshaped keys are one
:class:`~ablate.errors.CheckpointError` that lists them and says what architecture the
checkpoint's keys and the model's look like.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import re
import urllib.parse
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ablate.errors import CheckpointError
from ablate.io import atomic_write

__all__ = ["RENAMES_0X", "checkpoint_format", "convert_file", "convert_state_dict", "describe_keys", "fetch",
           "load_checkpoint_file", "load_into", "load_weights"]

# (0.x key pattern, 1.x replacement): applied to every key of a 0.x state dict.
RENAMES_0X = [
    # mmseg 0.x Mlp: self.dwconv = DWConv(dim), whose conv is .dwconv; 1.x: self.dwconv = nn.Conv2d.
    (re.compile(r"^(backbone\.block\d+\.\d+\.mlp\.dwconv)\.dwconv\.(weight|bias)$"), r"\1.\2"),
]
SHOWN = 5  # keys listed in an error before "and N more"
# SegNeXt sizes as (embed dims, depths), for naming a backbone in messages.
MSCAN_SIZES = {
    ((32, 64, 160, 256), (3, 3, 5, 2)): "SegNeXt-T",
    ((64, 128, 320, 512), (2, 2, 4, 2)): "SegNeXt-S",
    ((64, 128, 320, 512), (3, 3, 12, 3)): "SegNeXt-B",
    ((64, 128, 320, 512), (3, 5, 27, 3)): "SegNeXt-L",
}


# --- safe unpickling --------------------------------------------------------------------------


class _NumpyDType:
    """Stand-in for ``numpy.dtype`` while unpickling: keeps the type code and byte order only."""

    def __init__(self, code: str, align: bool = False, copy: bool = True) -> None:
        self.code = code
        self.order = "="

    def __setstate__(self, state: tuple) -> None:
        self.order = state[1]  # '<', '>', '|' (not applicable) or '='

    def numpy(self) -> np.dtype:
        dtype = np.dtype(self.code)
        if dtype.kind not in "biufc":  # only plain numbers; never object or void records
            raise pickle.UnpicklingError(f"numpy scalar of dtype {self.code!r} is not a plain number")
        return dtype.newbyteorder(self.order) if self.order in "<>" else dtype


def _numpy_scalar(dtype: _NumpyDType, data: bytes):
    """Stand-in for ``numpy.core.multiarray.scalar``: the scalar as a plain Python number."""
    if not (isinstance(dtype, _NumpyDType) and isinstance(dtype.code, str) and isinstance(data, bytes)):
        raise pickle.UnpicklingError("malformed numpy scalar")
    try:
        return np.frombuffer(data, dtype=dtype.numpy(), count=1)[0].item()
    except (TypeError, ValueError) as exc:
        raise pickle.UnpicklingError(f"malformed numpy scalar ({exc})") from None


# numpy 1.x pickles name ``numpy.core``, numpy 2.x ``numpy._core``.
SAFE_GLOBALS = [
    (_NumpyDType, "numpy.dtype"),
    (_numpy_scalar, "numpy.core.multiarray.scalar"),
    (_numpy_scalar, "numpy._core.multiarray.scalar"),
]


def load_checkpoint_file(path: str | os.PathLike, trusted: bool = False) -> dict:
    """Read a checkpoint file on the CPU without running code from it.

    Args:
        path: A ``torch.save`` file: a checkpoint dict with ``state_dict`` (mmcv 1.x, mmengine)
            or a bare state dict.
        trusted: The file is one of ablate's own run checkpoints, whose message hub mmengine
            pickles as objects; it is read with ``weights_only=False``. Never for other files.

    Returns:
        The checkpoint as a dict with a ``state_dict`` entry (a bare state dict is wrapped).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        if trusted:
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        else:
            with torch.serialization.safe_globals(SAFE_GLOBALS):
                checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path}: {_refusal(str(exc))}") from None
    except Exception as exc:  # noqa: BLE001 - any failure to parse foreign bytes means "not a checkpoint"
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint "
                              f"({type(exc).__name__}: {_first_line(exc)})") from None
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        return checkpoint
    if isinstance(checkpoint, dict) and checkpoint and all(torch.is_tensor(v) for v in checkpoint.values()):
        return {"state_dict": checkpoint}
    holds = (", ".join(map(str, list(checkpoint)[:SHOWN])) or "nothing") if isinstance(checkpoint, dict) \
        else f"a {type(checkpoint).__name__}"
    raise CheckpointError(f"{path}: no `state_dict` in the checkpoint (it holds {holds})")


# What torch's weights-only unpickler says when a pickle asks for more than tensors and plain values.
_UNSAFE = re.compile(r"unsupported global|trying to call reduce|can only build|can only create new object", re.I)


def _refusal(message: str) -> str:
    if not _UNSAFE.search(message):
        return f"not a readable PyTorch checkpoint ({_first_line(message.split('WeightsUnpickler error:')[-1])})"
    found = re.search(r"GLOBAL (\S+)", message)
    needs = f"`{found.group(1)}`" if found else "an object that is not a tensor or plain value"
    return (f"refused: unpickling it would call {needs}; checkpoints that ablate did not write are read "
            "with torch.load(weights_only=True), which never runs code from the file")


def _first_line(error) -> str:
    """The first sentence of an error's message (torch's run to paragraphs), or its type's name."""
    text = str(error).strip()
    return text.splitlines()[0].split(". ")[0] if text else type(error).__name__


# --- naming -----------------------------------------------------------------------------------


def _rename(key: str) -> str:
    for pattern, replacement in RENAMES_0X:
        key = pattern.sub(replacement, key)
    return key


def checkpoint_format(state_dict: dict) -> str:
    """``'0.x'`` when any key has mmseg 0.x naming (:data:`RENAMES_0X`), else ``'1.x'``."""
    return "0.x" if any(_rename(k) != k for k in state_dict) else "1.x"


def convert_state_dict(state_dict: dict) -> OrderedDict:
    """Rename a 0.x state dict's keys to our 1.x model's; a 1.x state dict comes back as it is.

    Args:
        state_dict: Keys as saved by mmseg 0.x or 1.x (``backbone.*``, ``decode_head.*``).

    Returns:
        A new ordered dict holding the same tensors, in the same order.
    """
    converted = OrderedDict()
    for key, value in state_dict.items():
        new = _rename(key)
        if new in converted:
            raise CheckpointError(f"checkpoint has both `{key}` and another key that becomes `{new}`: "
                                  "a mix of mmseg 0.x and 1.x names")
        converted[new] = value
    return converted


def describe_keys(state_dict: dict) -> str:
    """What the keys look like, e.g. ``mmseg 0.x MSCAN (SegNeXt-T, ...) + FreqFusion Ham head (...)``."""
    return f"mmseg {checkpoint_format(state_dict)} {_describe_backbone(state_dict)} + {_describe_head(state_dict)}"


def _describe_backbone(state_dict: dict) -> str:
    if not any(k.startswith("backbone.") for k in state_dict):
        return "no backbone"
    if "backbone.patch_embed1.proj.0.weight" not in state_dict:
        return "an unknown backbone"
    dims, depths, stage = [], [], 1
    while f"backbone.norm{stage}.weight" in state_dict:
        dims.append(int(state_dict[f"backbone.norm{stage}.weight"].shape[0]))
        blocks = {k.split(".")[2] for k in state_dict if k.startswith(f"backbone.block{stage}.")}
        depths.append(len(blocks))
        stage += 1
    size = MSCAN_SIZES.get((tuple(dims), tuple(depths)), "unknown size")
    return f"MSCAN ({size}: dims {'/'.join(map(str, dims))}, depths {'/'.join(map(str, depths))})"


def _describe_head(state_dict: dict) -> str:
    keys = list(state_dict)
    classes = state_dict.get("decode_head.conv_seg.weight")
    classes = f"{classes.shape[0]} classes" if classes is not None else "no conv_seg"
    if any(k.startswith("decode_head.freqfusions.") for k in keys):
        blocks = len({k.split(".")[2] for k in keys if k.startswith("decode_head.freqfusions.")})
        traits = [f"{blocks} FreqFusion blocks"]
        if any(".content_encoder3." in k for k in keys):
            traits.append("DWT")
        if "decode_head.freqfusions.0.content_encoder.0.weight" in state_dict:
            traits.append("DSConv")
        offset = state_dict.get("decode_head.freqfusions.0.dysampler.offset.weight")
        if offset is not None:
            traits.append("sampler 'sim'" if offset.shape[1] == 8 else "sampler 'sim_concat'")
        return (f"FreqFusion Ham head ({', '.join(traits)}, {classes}; attention has no weights, "
                "so keys cannot show it)")
    if any(k.startswith("decode_head.hamburger.") for k in keys):
        return f"LightHamHead without FreqFusion ({classes})"
    if any(k.startswith("decode_head.") for k in keys):
        return f"an unknown decode head ({classes})"
    return "no decode head"


# --- loading ----------------------------------------------------------------------------------


def load_into(model: nn.Module, state_dict: dict, source: str = "checkpoint") -> None:
    """Load ``state_dict`` into ``model`` strictly, or raise one CheckpointError naming every misfit.

    Args:
        model: The mmseg 1.x segmentor (or any module).
        state_dict: Keys in the model's naming (see :func:`convert_state_dict`).
        source: How the error names the checkpoint (a path or URL).
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    reshaped = [f"{k}: checkpoint {tuple(state_dict[k].shape)}, model {tuple(expected[k].shape)}"
                for k in expected if k in state_dict and state_dict[k].shape != expected[k].shape]
    problems = [f"{len(found)} {what} ({_summary(found)})" for what, found in
                (("missing", missing), ("unexpected", unexpected), ("with another shape", reshaped)) if found]
    if problems:
        raise CheckpointError(f"{source} does not fit the model: {'; '.join(problems)}. The checkpoint looks like "
                              f"{describe_keys(state_dict)}; the model like {describe_keys(expected)}")
    model.load_state_dict(state_dict, strict=True)


def _summary(items: list[str]) -> str:
    shown = ", ".join(items[:SHOWN])
    return shown if len(items) <= SHOWN else f"{shown} and {len(items) - SHOWN} more"


def _is_url(source: str | os.PathLike) -> bool:
    return str(source).startswith(("http://", "https://"))


def sha256_of(path: Path) -> str:
    """The file's SHA-256, hex, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(url: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Download ``url`` into ``cache_dir`` (default: torch.hub's ``checkpoints``) once; return the file.

    A file of the same name already in ``cache_dir`` is used as it is, as torch.hub does.
    """
    from ablate.weights import cache_path, download_url

    name = Path(urllib.parse.urlparse(url).path).name
    if not name:
        raise CheckpointError(f"{url}: the URL names no file")
    target = Path(cache_dir) / name if cache_dir is not None else cache_path(url)
    return target if target.is_file() else download_url(url, target)


def _open(source: str | os.PathLike, cache_dir, trusted: bool) -> tuple[dict, OrderedDict, dict]:
    """Read ``source`` and convert its state dict; return the checkpoint, that state dict and the info."""
    if _is_url(source):
        if trusted:
            raise ValueError("a downloaded checkpoint is never trusted")
        path = fetch(str(source), cache_dir)
    else:
        path = Path(source)
    checkpoint = load_checkpoint_file(path, trusted=trusted)
    state_dict = checkpoint["state_dict"]
    converted = convert_state_dict(state_dict)
    info = {"source": str(source), "file": str(path), "sha256": sha256_of(path),
            "format": checkpoint_format(state_dict), "converted": sum(_rename(k) != k for k in state_dict),
            "keys": len(converted)}
    return checkpoint, converted, info


def load_weights(model: nn.Module, source: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                 trusted: bool = False) -> dict:
    """Read a checkpoint (path or URL), convert it from mmseg 0.x if needed, load it strictly.

    Args:
        model: The mmseg 1.x segmentor built from our config.
        source: A checkpoint file or an http(s) URL.
        cache_dir: Where downloads go (default: torch.hub's ``checkpoints`` folder).
        trusted: See :func:`load_checkpoint_file`; only for ablate's own run checkpoints.

    Returns:
        ``{"source", "file" (the local file), "sha256" (the file's), "format": "0.x" | "1.x",
        "converted" (keys renamed), "keys" (keys loaded)}``.
    """
    _, converted, info = _open(source, cache_dir, trusted)
    load_into(model, converted, source=str(source))
    return info


def convert_file(source: str | os.PathLike, out: str | os.PathLike,
                 cache_dir: str | os.PathLike | None = None) -> dict:
    """Write ``source`` (path or URL) with our model's key names to ``out``, as mmengine saves checkpoints.

    Returns:
        :func:`load_weights`'s info, plus ``architecture``: :func:`describe_keys` of the result.
    """
    checkpoint, converted, info = _open(source, cache_dir, trusted=False)
    meta = {"ablate_convert": {k: info[k] for k in ("source", "sha256", "format", "converted")}}
    old_meta = checkpoint.get("meta")
    if isinstance(old_meta, dict) and "CLASSES" in old_meta:  # mmseg 0.x's; mmseg 1.x's init_model reads dataset_meta
        meta["dataset_meta"] = {"classes": tuple(old_meta["CLASSES"]), "palette": old_meta.get("PALETTE")}
    with atomic_write(out) as tmp:
        torch.save({"meta": meta, "state_dict": converted}, tmp)
    return dict(info, architecture=describe_keys(converted))
