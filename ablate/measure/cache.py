"""The measurement cache: one JSON file per model config, so that no stage rebuilds a model twice.

Reads and writes ``<cache_dir>/<model_hash>.json`` (default ``<work_root>/.measure``, where
``collect`` and ``report`` look too), each holding one :func:`~ablate.measure.model.measure_config`
result. The key hashes everything that decides the numbers: the model config, the input shape,
the source of the config's ``custom_imports`` and of this whole package (so that a change to the
counter's rules misses the cache), and the torch and mmseg versions.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ablate.measure.model import measure_config, without_weights

# The package's own source: the counting rules live in counter.py, the forward pass in model.py.
_PACKAGE_FILES = tuple(sorted(Path(__file__).parent.glob("*.py")))


def default_cache_dir(work_root: str | os.PathLike | None = None) -> Path:
    """``<work_root>/.measure`` (``$ABLATE_WORK_DIR`` or ``work_dirs``), where collect looks too."""
    return Path(work_root or os.environ.get("ABLATE_WORK_DIR", "work_dirs")) / ".measure"


def model_hash(cfg, input_shape) -> str:
    """Hash of what decides a measurement: ``cfg.model`` (weights' sources left out), the input
    shape, and the code: the source of the config's ``custom_imports`` packages and of this
    package, and the installed torch and mmseg versions. A change to any of them misses the cache."""
    import copy
    from importlib.metadata import PackageNotFoundError, version

    model = without_weights(copy.deepcopy(cfg.model))
    model = model.to_dict() if hasattr(model, "to_dict") else model
    parts = {"model": model, "input_shape": [int(s) for s in input_shape],
             "code": _source_hash(list(_PACKAGE_FILES) + _custom_import_files(cfg))}
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

