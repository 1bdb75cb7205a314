"""Variant configs: a study's (variant, profile, seed) resolved into an mmengine ``Config``.

Reads the study's base config and writes, on request, one ``config.py`` per run. The order of
overrides is base -> profile -> variant -> ``--set`` -> run (seed, work_dir, data root, processes),
so a profile changes only the keys it names and a variant only its switches. Every override key
must exist in the base config; a key prefixed with ``+`` may add a new one. Unknown keys are
reported with the closest existing key, the study file and its line (``--set`` ones with the flag).

``--set KEY=VALUE`` (:func:`parse_sets`) overrides one invocation of ``ablate run``/``configs``/
``plan``: the value is read as YAML, as in a study file. It is part of the run's config and run
key; ``run.json`` records it (``RunInfo.sets``) so that status and report resolve the config the
run trained with.

The total batch (images per training iteration) is a property of the study, not of the launch:
the study's configs are written for one process, as mmseg's ``1xb16`` configs are, so it is
``train_dataloader.batch_size`` after the profile, variant and ``--set`` overrides (the study's
``resources.total_batch``, when it states one, replaces the base config's value first). A run over
K processes gets total/K images per process and SyncBN in place of BatchNorm (:func:`split_batch`):
the one place where the resolved config depends on K.

mmengine is imported here but torch and mmseg are not: custom imports (``freqfusion``) are left to
the process that builds the model, so that resolving configs stays fast.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

from ablate.errors import ConfigError, did_you_mean
from ablate.runs import Run
from ablate.study import Study

_MISSING = object()
# Keys that change logs or paths but not what a run computes: they are left out of its
# run_key, so changing them (turning W&B on, moving the work root) neither restarts nor refuses
# a resume, nor makes a finished run stale.
NEUTRAL_KEYS = ("work_dir", "ablate", "visualizer", "vis_backends", "log_level", "log_processor",
                "default_hooks.logger", "default_hooks.visualization")
# Keys the worker sets in runtime_config.py (mmengine's dump of what ran) and config.py lacks.
RUNTIME_KEYS = ("resume", "load_from", "launcher", "model_wrapper_cfg", "env_cfg.dist_cfg")


def load_base(study: Study):
    """The study's base config, parsed once per study file and copied for each caller."""
    key = (str(study.base.resolve()), study.base.stat().st_mtime_ns)
    if key not in _BASE_CACHE:
        from mmengine.config import Config

        try:
            with warnings.catch_warnings():  # mmengine's pkg_resources use warns on every load
                warnings.simplefilter("ignore", UserWarning)
                _BASE_CACHE[key] = Config.fromfile(str(study.base), import_custom_modules=False)
        except Exception as exc:  # mmengine raises many kinds; the user needs the message
            raise ConfigError(f"{study.path.name}: base config `{study.base}` does not load: {exc}") from None
    return copy.deepcopy(_BASE_CACHE[key])


_BASE_CACHE: dict = {}


def resolve(study: Study, run: Run, data_root: str | os.PathLike | None = None,
            sets: dict[str, Any] | None = None, processes: int = 1):
    """The full config of one run.

    Args:
        study: the loaded study.
        run: one of ``study.runs(...)``; its variant, profile, seed and work_dir are applied.
        data_root: dataset root for every dataloader; None keeps the base config's.
        sets: ``--set`` overrides (:func:`parse_sets`), applied after the variant's.
        processes: processes that train the run together (``--gpus-per-run``); each gets its
            share of the total batch (:func:`split_batch`).

    Returns:
        An ``mmengine.Config`` with an extra top-level ``ablate`` dict naming the run, its
        processes and its total batch.

    Raises:
        ConfigError: an override that does not fit the base config, or ``processes`` that do
            not divide the total batch.
    """
    cfg = load_base(study)
    profile = study.profile(run.profile)
    variant = study.variant(run.variant)
    stated = study.resources.get("total_batch")
    if stated is not None:
        cfg.train_dataloader.batch_size = _stated_total(study, stated)
    apply_overrides(cfg, profile.overrides, study, f"profiles.{profile.name}.overrides")
    apply_overrides(cfg, variant.overrides, study, f"variants.{variant.name}.overrides")
    if sets:
        apply_sets(cfg, sets)
    total = split_batch(cfg, processes, f"{study.path.name}: profile `{profile.name}`")
    cfg.work_dir = str(run.work_dir)
    cfg.randomness = dict(seed=run.seed, deterministic=False)
    if data_root is not None:
        for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
            if loader in cfg and cfg[loader] is not None:
                cfg[loader].dataset.data_root = str(data_root)
    cfg.ablate = dict(
        study=study.name,
        profile=run.profile,
        variant=run.variant,
        seed=run.seed,
        work_root=str(run.root.path),
        overrides=dict(variant.overrides),
        **({"sets": dict(sets)} if sets else {}),
        processes=processes,
        total_batch=total,
    )
    return cfg


def parse_sets(items: list[str] | None) -> dict[str, Any]:
    """``["train_cfg.max_iters=20"]`` -> ``{"train_cfg.max_iters": 20}``; values read as YAML.

    Raises:
        ConfigError: an item without ``=`` or a key, or a value that is not YAML.
    """
    import yaml

    from ablate.study import read_value

    sets: dict[str, Any] = {}
    for item in items or []:
        key, eq, text = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--set {item}: expected KEY=VALUE, e.g. --set train_cfg.max_iters=20")
        try:
            sets[key.strip()] = read_value(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item}: the value is not YAML ({str(exc).splitlines()[0]})") from None
    return sets


def apply_sets(cfg, sets: dict[str, Any]) -> None:
    """Set ``--set`` keys as :func:`apply_overrides` sets a study's; ConfigError names the flag."""
    _apply(cfg, sets, lambda dotted: f"--set {dotted}")


# BatchNorm types of mmcv's norm registry whose statistics depend on the images of one process.
_BATCH_NORMS = ("BN", "BN1d", "BN2d", "BN3d")


def split_batch(cfg, processes: int, where: str) -> int | None:
    """Give each of ``processes`` its share of the total batch; returns the total (None: no batch).

    ``cfg`` holds the total as ``train_dataloader.batch_size`` (one process). With K > 1 each
    process loads total/K images and every BatchNorm of the model becomes mmseg's SyncBN, so that
    K processes normalise over the same images one process would. Norms that do not depend on the
    batch (GroupNorm, as in the Hamburger head; LayerNorm) stay as they are.

    Args:
        cfg: a config resolved for one process; changed in place.
        processes: K, at least 1.
        where: names the study and profile in the error.

    Raises:
        ConfigError: K does not divide the total batch, or there is none to divide.
    """
    if "batch_size" not in (cfg.get("train_dataloader") or {}):
        if processes > 1:
            raise ConfigError(f"{where}: no `train_dataloader.batch_size` to split over {processes} processes per run")
        return None
    total = int(cfg.train_dataloader.batch_size)
    if processes < 1 or total % processes:
        divisors = [str(k) for k in range(1, total + 1) if total % k == 0]
        raise ConfigError(f"{where}: a total batch of {total} images cannot be split over {processes} processes "
                          f"per run; --gpus-per-run must divide it ({', '.join(divisors)})")
    if processes > 1:
        cfg.train_dataloader.batch_size = total // processes
        _sync_norms(cfg.model)
    return total


def _sync_norms(node) -> None:
    if isinstance(node, (list, tuple)):
        for item in node:
            _sync_norms(item)
    elif hasattr(node, "keys"):
        if node.get("type") in _BATCH_NORMS:
            node["type"] = "SyncBN"
        for value in node.values():
            _sync_norms(value)


def _stated_total(study: Study, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        location = study.locations.get("resources.total_batch", study.path.name)
        raise ConfigError(f"{location}: `resources.total_batch` must be a positive number of images, not {value!r}")
    return value


def apply_overrides(cfg, overrides: dict[str, Any], study: Study, where: str) -> None:
    """Set dotted keys (``a.b.0.c``) on ``cfg``, checking each key and value before anything runs.

    A key that does not exist is a ConfigError, and so is a value that does not fit the base
    config's (:func:`value_problem`); a key prefixed with ``+`` adds a key or replaces a value
    unchecked, the escape hatch for what the checks cannot know.

    Args:
        cfg: the config, changed in place.
        overrides: ``{dotted key: value}`` of a profile or variant.
        study: the study, for the file and line of each key.
        where: ``"variants.dwt.overrides"`` or ``"profiles.smoke.overrides"``.
    """
    section, name = where.split(".")[:2]  # "variants", "dwt"
    _apply(cfg, overrides, lambda dotted: (f"{study.locations.get(f'{where}.{dotted}', study.path.name)}: "
                                           f"{section[:-1]} `{name}`"))


def _apply(cfg, items: dict[str, Any], source) -> None:
    """Set ``items`` on ``cfg``; every problem, prefixed with ``source(dotted key)``, in one ConfigError."""
    problems = []
    for dotted, value in items.items():
        adding = dotted.startswith("+")
        key = dotted.lstrip("+")
        parent, leaf, reason = _walk(cfg, key.split("."))
        value = _plain(value)
        if reason is None and not adding:
            old = parent[int(leaf)] if isinstance(parent, list) else parent[leaf]
            reason = value_problem(key, old, value)
        if reason is not None and not (adding and parent is not None):
            problems.append(f"{source(dotted)}: {reason}")
            continue
        if isinstance(parent, list):
            parent[int(leaf)] = value
        else:
            parent[leaf] = value
    if problems:
        raise ConfigError("\n".join(problems))


# Keys whose values have a known lower bound: (dotted suffix, minimum, what it is).
_MINIMA = (
    ("train_cfg.max_iters", 1, "iterations"), ("train_cfg.val_interval", 1, "an interval"),
    ("batch_size", 1, "a batch size"), ("num_workers", 0, "a worker count"),
    ("default_hooks.logger.interval", 1, "an interval"),
)


def value_problem(key: str, old: Any, new: Any) -> str | None:
    """Why ``new`` cannot replace the base config's ``old`` at ``key``, or None when it can.

    The value keeps the base value's kind: a bool takes only a YAML bool (``"no"`` is a string,
    and truthy), an int only an int, a float any number, a string a string, a list a list, a
    mapping a mapping; a mapping or a None may become None (a component switched off), and a
    None key takes anything. Known counts have their minimum (iterations, intervals, batch sizes,
    worker counts); a checkpoint interval may also be -1 (never), as in mmengine.
    """
    kinds = ((bool, "true or false (a YAML bool)"), (int, "an integer"), (float, "a number"), (str, "a string"),
             ((list, tuple), "a list"), (dict, "a mapping"))
    for kind, words in kinds:
        if isinstance(old, kind) and not (isinstance(old, int) and kind is float):
            fits = isinstance(new, kind) and not (isinstance(new, bool) and kind in (int, float))
            fits = fits or (kind is float and isinstance(new, int) and not isinstance(new, bool))
            fits = fits or (kind is dict and new is None)
            if not fits:
                return f"`{key}` must be {words}, as in the base config, not {new!r}"
            break
    if isinstance(new, int) and not isinstance(new, bool):
        if key.endswith("checkpoint.interval") and new != -1 and new < 1:
            return f"`{key}` must be at least 1 (or -1: never), not {new}"
        for suffix, minimum, what in _MINIMA:
            if (key == suffix or key.endswith("." + suffix)) and new < minimum:
                return f"`{key}` is {what} and must be at least {minimum}, not {new}"
    return None


def _walk(cfg, parts: list[str]):
    """Find the container of ``parts[-1]``: returns (parent, leaf, None) or (parent|None, leaf, why)."""
    node = cfg
    for depth, part in enumerate(parts):
        here = ".".join(parts[: depth + 1])
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                return None, part, f"`{here}`: index {part} out of range for a list of {len(node)}"
            if last:
                return node, part, None
            node = node[int(part)]
        elif hasattr(node, "keys"):  # dict, ConfigDict or Config
            if part not in node:
                keys = [str(k) for k in node.keys()]
                why = f"`{here}` not in base config" + did_you_mean(part, keys)
                return (node if last else None), part, why
            if last:
                return node, part, None
            node = node[part]
        else:
            return None, part, f"`{'.'.join(parts[:depth])}` is a {type(node).__name__}, not a mapping"
    raise AssertionError("unreachable")  # pragma: no cover


def _plain(value):
    """YAML values as mmengine expects them: lists of numbers that mean sizes become tuples."""
    if isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value):
        return tuple(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def dump(cfg, path: str | os.PathLike) -> str:
    """Write ``cfg`` as a ``config.py`` at ``path`` (atomically); returns the hash of its text."""
    from ablate.io import atomic_write

    text = config_text(cfg)
    with atomic_write(path) as tmp:
        Path(tmp).write_text(text)
    return text_hash(text)


def config_text(cfg) -> str:
    """``cfg.pretty_text``, formatted once per content in this process.

    mmengine formats the whole config with yapf on every ``pretty_text`` (about 0.6 s for the
    study's), and its Runner asks ten times in a smoke run (dump, log, visualizer, every
    checkpoint's meta): 6 s of a run's overhead. The worker's config
    (:class:`ablate.train.FormatOnceConfig`) and ``ablate run`` read it from here instead.
    """
    from mmengine.config import Config

    key = _content_key(cfg)
    if key not in _TEXT_CACHE:
        _TEXT_CACHE[key] = Config.pretty_text.fget(cfg)
    return _TEXT_CACHE[key]


def remember_text(cfg, text: str) -> None:
    """Take ``text`` as ``cfg``'s formatted text: for a config loaded from a ``config.py`` that
    :func:`dump` wrote, whose text it is (the worker saves formatting it once more)."""
    _TEXT_CACHE[_content_key(cfg)] = text


def _content_key(cfg) -> str:
    return text_hash(repr(cfg.to_dict()))


_TEXT_CACHE: dict[str, str] = {}


def text_hash(text: str) -> str:
    """Short content hash of a resolved config's text, recorded in each run's folder."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_key(cfg, ignore: tuple[str, ...] = ()) -> str:
    """Short hash of what a run computes: every key of ``cfg`` but :data:`NEUTRAL_KEYS` and ``ignore``.

    Two configs with the same run key train the same model on the same data the same way, so a
    run folder made with one may be resumed, skipped or reported under the other. Tuples and
    lists hash alike (a config read back from ``config.py`` may turn one into the other).
    """
    skipped = NEUTRAL_KEYS + tuple(ignore)
    flat = {key: _normal(value) for key, value in flatten(cfg.to_dict()).items()
            if not any(key == p or key.startswith(p + ".") for p in skipped)}
    return text_hash(json.dumps(flat, sort_keys=True, default=repr))


def flatten(value, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": [1, {"c": 2}]}}`` -> ``{"a.b.0": 1, "a.b.1.c": 2}``; empty containers kept."""
    if isinstance(value, dict) and value:
        out = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, (list, tuple)) and value and any(isinstance(v, (dict, list, tuple)) for v in value):
        out = {}
        for index, item in enumerate(value):
            out.update(flatten(item, f"{prefix}.{index}"))
        return out
    return {prefix: value}


def diff(cfg_a, cfg_b, ignore: tuple[str, ...] = ()) -> list[tuple[str, Any, Any]]:
    """Keys whose values differ between two configs: ``[(key, a, b)]``, sorted by key.

    A key absent on one side shows as ``"<absent>"``. Keys starting with any of ``ignore`` are
    skipped (the run's own work_dir and metadata, say).
    """
    a, b = flatten(cfg_a.to_dict()), flatten(cfg_b.to_dict())
    rows = []
    for key in sorted(set(a) | set(b)):
        if any(key == p or key.startswith(p + ".") for p in ignore):
            continue
        va, vb = a.get(key, _MISSING), b.get(key, _MISSING)
        if _normal(va) != _normal(vb):
            rows.append((key, _shown(va), _shown(vb)))
    return rows


def _normal(value):
    if isinstance(value, (list, tuple)):
        return [_normal(v) for v in value]
    return value


def _shown(value):
    return "<absent>" if value is _MISSING else value
