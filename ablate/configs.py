"""Variant configs: a study's (variant, profile, seed) resolved into an mmengine ``Config``.

Reads the study's base config and writes, on request, one ``config.py`` per run. The order of
overrides is base -> profile -> variant -> run (seed, work_dir, data root), so a profile changes
only the keys it names and a variant only its switches. Every override key must exist in the base
config; a key prefixed with ``+`` may add a new one. Unknown keys are reported with the closest
existing key, the study file and its line.

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


def resolve(study: Study, run: Run, data_root: str | os.PathLike | None = None):
    """The full config of one run.

    Args:
        study: the loaded study.
        run: one of ``study.runs(...)``; its variant, profile, seed and work_dir are applied.
        data_root: dataset root for every dataloader; None keeps the base config's.

    Returns:
        An ``mmengine.Config`` with an extra top-level ``ablate`` dict naming the run.
    """
    cfg = load_base(study)
    profile = study.profile(run.profile)
    variant = study.variant(run.variant)
    apply_overrides(cfg, profile.overrides, study, f"profiles.{profile.name}.overrides")
    apply_overrides(cfg, variant.overrides, study, f"variants.{variant.name}.overrides")
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
    )
    return cfg


def apply_overrides(cfg, overrides: dict[str, Any], study: Study, where: str) -> None:
    """Set dotted keys (``a.b.0.c``) on ``cfg``, checking each key and value before anything runs.

    A key that does not exist is a ConfigError, and so is a value that does not fit the base
    config's (:func:`value_problem`); a key prefixed with ``+`` adds a key or replaces a value
    unchecked, the escape hatch for what the checks cannot know.
    """
    problems = []
    for dotted, value in overrides.items():
        adding = dotted.startswith("+")
        key = dotted.lstrip("+")
        parent, leaf, reason = _walk(cfg, key.split("."))
        value = _plain(value)
        if reason is None and not adding:
            old = parent[int(leaf)] if isinstance(parent, list) else parent[leaf]
            reason = value_problem(key, old, value)
        if reason is not None and not (adding and parent is not None):
            location = study.locations.get(f"{where}.{dotted}", study.path.name)
            section, name = where.split(".")[:2]  # "variants", "dwt"
            problems.append(f"{location}: {section[:-1]} `{name}`: {reason}")
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
