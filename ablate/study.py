"""Study files: what to compare, loaded from YAML and validated before anything runs.

Reads ``experiments/<name>.yaml`` (or any path) and returns a :class:`Study`. Writes nothing.

A study names a base mmengine config, named variants (dotted overrides of that config), profiles
(schedule and data: ``paper`` on real ADE20K, ``smoke`` on synthetic data on a CPU), seeds and the
paper's numbers per variant. Every problem in a file is collected, each with its file and line, and
raised once as a :class:`~ablate.errors.StudyError`. Whether override keys exist in the base config
is checked by :mod:`ablate.configs`, which needs mmengine; this module needs only PyYAML.

A variant may name released weights, ``checkpoint:`` (a path relative to the study file, or an
http(s) URL), which ``ablate eval`` evaluates when no ``--checkpoint`` is given.

Paper numbers are given as the paper prints them: absolute values, or a string such as ``"+0.06"``
that is relative to the baseline variant's paper value (Table 2 prints Params and FLOPs that way).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ablate.errors import StudyError, one_of
from ablate.runs import Run, WorkRoot, bad_name

METRICS = ("mIoU", "Params", "FLOPs")
MIOU_CHOICES = ("best", "last")
_TOP_KEYS = {
    "name", "title", "description", "base", "baseline", "compare_miou", "seeds", "variants",
    "profiles", "input_shape", "resources", "slurm", "wandb",
}
_VARIANT_KEYS = {"label", "overrides", "paper", "description", "checkpoint"}
_PROFILE_KEYS = {"description", "overrides", "data", "seeds", "sec_per_iter"}
_DATA_CHOICES = ("synthetic", "required")


@dataclass(frozen=True)
class Variant:
    """One row of the study's table: a name, a label and dotted config overrides."""

    name: str
    label: str
    overrides: dict[str, Any]
    paper: dict[str, float]  # absolute values, relative entries already resolved
    checkpoint: str | None = None  # released weights for `ablate eval`: an http(s) URL or an absolute path


@dataclass(frozen=True)
class Profile:
    """How a study is run: schedule and data overrides shared by every variant."""

    name: str
    description: str
    overrides: dict[str, Any]
    data: str  # "synthetic": made on demand by ablate; "required": --data-root must be given
    seeds: tuple[int, ...] | None  # None: the study's seeds
    sec_per_iter: float | None  # for `ablate plan` when no finished run has measured it


@dataclass(frozen=True)
class Study:
    """A validated study file."""

    name: str
    path: Path
    title: str
    base: Path
    baseline: str
    compare_miou: str
    seeds: tuple[int, ...]
    variants: dict[str, Variant]
    profiles: dict[str, Profile]
    input_shape: tuple[int, int, int] = (3, 512, 512)
    resources: dict[str, Any] = field(default_factory=dict)
    slurm: dict[str, Any] = field(default_factory=dict)
    wandb: dict[str, Any] = field(default_factory=dict)
    # "variants.dwt.overrides.model.decode_head.use_dwt" -> "table2.yaml:19", for error messages
    locations: dict[str, str] = field(default_factory=dict, compare=False)

    def variant(self, name: str) -> Variant:
        if name not in self.variants:
            raise StudyError(f"{self.path.name}: " + one_of(name, "variant", self.variants))
        return self.variants[name]

    def profile(self, name: str) -> Profile:
        if name not in self.profiles:
            raise StudyError(f"{self.path.name}: " + one_of(name, "profile", self.profiles))
        return self.profiles[name]

    def default_profile(self) -> str:
        """``paper`` when the study has it, else its first profile."""
        return "paper" if "paper" in self.profiles else next(iter(self.profiles))

    def runs(
        self,
        profile: str,
        variants: list[str] | None = None,
        seeds: list[int] | None = None,
        work_root: str | os.PathLike | None = None,
    ) -> list[Run]:
        """The runs of ``profile``: every (variant, seed) pair, variants in file order.

        Args:
            profile: a profile name of this study.
            variants: a subset of variant names (validated), or None for all.
            seeds: seeds to run, or None for the profile's (else the study's) seeds.
            work_root: root of the run folders; default ``$ABLATE_WORK_DIR`` or ``work_dirs``.
        """
        prof = self.profile(profile)
        names = list(self.variants) if variants is None else [self.variant(v).name for v in variants]
        seeds = list(seeds) if seeds is not None else list(prof.seeds or self.seeds)
        root = WorkRoot.of(work_root)
        return [root.run(self.name, profile, v, s) for v in names for s in seeds]


def studies_dir() -> Path:
    """Where study files are looked up by name: ``$ABLATE_STUDIES`` or ``./experiments``."""
    return Path(os.environ.get("ABLATE_STUDIES", "experiments"))


def list_studies() -> list[Path]:
    """Study files in :func:`studies_dir`, sorted by name."""
    directory = studies_dir()
    return sorted(directory.glob("*.yaml")) if directory.is_dir() else []


def find_study(name_or_path: str) -> Path:
    """A study's file from its name (``table2``) or path (``experiments/table2.yaml``)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise StudyError(f"study file `{name_or_path}` does not exist")
        return path
    candidate = studies_dir() / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    known = [p.stem for p in list_studies()]
    raise StudyError(one_of(name_or_path, "study", known) + f" (looked in {studies_dir()}/)")


def load_study(name_or_path: str) -> Study:
    """Load and validate a study file; raises one :class:`StudyError` listing every problem."""
    path = find_study(name_or_path)
    data, locations = _read_yaml(path)
    problems: list[str] = []

    def problem(key: str, message: str) -> None:
        problems.append(f"{locations.get(key, path.name)}: {message}")

    def unknown_keys(raw: dict, allowed, where: str = "", owner: str = "") -> None:
        for key in raw:
            if key not in allowed:
                problem(f"{where}.{key}" if where else key, f"{owner}unknown key `{key}`" + _hint(key, allowed))

    if not isinstance(data, dict):
        raise StudyError(f"{path.name}: a study file must be a mapping with `variants` and `profiles`")
    unknown_keys(data, _TOP_KEYS)
    for key in ("base", "variants", "profiles"):
        if key not in data:
            problem("", f"missing required key `{key}`")

    base = path.parent / str(data.get("base", ""))
    if "base" in data and not base.is_file():
        problem("base", f"base config `{data['base']}` not found (looked for {base})")

    variants_raw = data.get("variants") or {}
    if not isinstance(variants_raw, dict) or not variants_raw:
        problem("variants", "`variants` must map variant names to their settings")
        variants_raw = {}
    baseline = data.get("baseline", next(iter(variants_raw), ""))
    if variants_raw and baseline not in variants_raw:
        problem("baseline", one_of(str(baseline), "baseline variant", variants_raw))
    baseline_paper = _as_dict(variants_raw.get(baseline, {})).get("paper") or {}

    variants = {}
    for name, raw in variants_raw.items():
        where = f"variants.{name}"
        if (why := bad_name(name)) is not None:
            problem(where, f"variant {why}")
        raw = _as_dict(raw)
        unknown_keys(raw, _VARIANT_KEYS, where, f"variant `{name}`: ")
        overrides = raw.get("overrides") or {}
        if not isinstance(overrides, dict):
            problem(where, f"variant `{name}`: `overrides` must be a mapping of dotted config keys")
            overrides = {}
        paper = _paper_numbers(name, raw.get("paper") or {}, baseline_paper, name == baseline,
                               lambda msg, k=where: problem(f"{k}.paper", msg))
        checkpoint = _checkpoint(path, name, raw.get("checkpoint"),
                                 lambda msg, k=where: problem(f"{k}.checkpoint", msg))
        variants[name] = Variant(str(name), str(raw.get("label", name)), dict(overrides), paper, checkpoint)

    profiles = {}
    profiles_raw = data.get("profiles") or {}
    if isinstance(profiles_raw, str):  # another study's profiles, or a file of profiles alone
        shared = path.parent / profiles_raw
        if shared.is_file():
            shared_data, shared_locations = _read_yaml(shared)
            if isinstance(shared_data, dict) and "profiles" in shared_data:
                profiles_raw = shared_data["profiles"]
            else:
                profiles_raw, shared_locations = _read_yaml(shared, prefix="profiles")
            locations.update({k: v for k, v in shared_locations.items() if k.startswith("profiles.")})
        else:
            problem("profiles", f"profiles file `{profiles_raw}` not found (looked for {shared})")
            profiles_raw = {}
    if not isinstance(profiles_raw, dict) or not profiles_raw:
        problem("profiles", "`profiles` must map profile names to their settings")
        profiles_raw = {}
    for name, raw in profiles_raw.items():
        where = f"profiles.{name}"
        if (why := bad_name(name)) is not None:
            problem(where, f"profile {why}")
        raw = _as_dict(raw)
        unknown_keys(raw, _PROFILE_KEYS, where, f"profile `{name}`: ")
        data_kind = raw.get("data", "required")
        if data_kind not in _DATA_CHOICES:
            problem(f"{where}.data", f"profile `{name}`: `data` must be one of {', '.join(_DATA_CHOICES)}")
        seeds = raw.get("seeds")
        if seeds is not None and not _int_list(seeds):
            problem(f"{where}.seeds", f"profile `{name}`: `seeds` must be a list of integers")
            seeds = None
        sec = raw.get("sec_per_iter")
        if sec is not None and not (isinstance(sec, (int, float)) and sec > 0):
            problem(f"{where}.sec_per_iter", f"profile `{name}`: `sec_per_iter` must be a positive number")
            sec = None
        overrides = raw.get("overrides") or {}
        if not isinstance(overrides, dict):
            problem(where, f"profile `{name}`: `overrides` must be a mapping of dotted config keys")
            overrides = {}
        profiles[name] = Profile(str(name), str(raw.get("description", "")), dict(overrides), data_kind,
                                 tuple(seeds) if seeds is not None else None, sec)

    seeds = data.get("seeds", [0])
    if not _int_list(seeds):
        problem("seeds", "`seeds` must be a list of integers")
        seeds = [0]
    compare = data.get("compare_miou", "best")
    if compare not in MIOU_CHOICES:
        problem("compare_miou", f"`compare_miou` must be one of {', '.join(MIOU_CHOICES)}, not `{compare}`")
    shape = data.get("input_shape", [3, 512, 512])
    if not (_int_list(shape) and len(shape) == 3):
        problem("input_shape", "`input_shape` must be three integers, e.g. [3, 512, 512]")
        shape = [3, 512, 512]
    for key in ("resources", "slurm", "wandb"):
        if key in data and not isinstance(data[key], dict):
            problem(key, f"`{key}` must be a mapping")
    name = data.get("name", path.stem)
    if (why := bad_name(name)) is not None:
        problem("name" if "name" in data else "", f"study name {why}")

    if problems:
        raise StudyError("\n".join(problems))
    return Study(
        name=str(name),
        path=path,
        title=str(data.get("title", path.stem)),
        base=base,
        baseline=str(baseline),
        compare_miou=compare,
        seeds=tuple(seeds),
        variants=variants,
        profiles=profiles,
        input_shape=tuple(shape),
        resources=dict(data.get("resources") or {}),
        slurm=dict(data.get("slurm") or {}),
        wandb=dict(data.get("wandb") or {}),
        locations=locations,
    )


def _paper_numbers(variant, raw, baseline_raw, is_baseline, problem) -> dict[str, float]:
    """Absolute paper numbers; ``"+0.06"`` strings are added to the baseline's value."""
    if not isinstance(raw, dict):
        problem(f"variant `{variant}`: `paper` must map metric names to numbers")
        return {}
    numbers = {}
    for metric, value in raw.items():
        if metric not in METRICS:
            problem(f"variant `{variant}`: unknown paper metric `{metric}`; choose from {', '.join(METRICS)}")
            continue
        if isinstance(value, str) and value.strip()[:1] in "+-":
            base_value = baseline_raw.get(metric)
            if is_baseline or not isinstance(base_value, (int, float)):
                problem(f"variant `{variant}`: relative paper {metric} `{value}` needs an absolute "
                        "baseline value")
                continue
            try:
                numbers[metric] = round(float(base_value) + float(value), 6)
            except ValueError:
                problem(f"variant `{variant}`: paper {metric} `{value}` is not a number")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            numbers[metric] = float(value)
        else:
            problem(f"variant `{variant}`: paper {metric} `{value}` is not a number")
    return numbers


def _checkpoint(path: Path, variant: str, value, problem) -> str | None:
    """A variant's ``checkpoint:``, an http(s) URL or a path relative to the study file, made absolute.

    Whether the file exists is left to ``ablate eval``: released weights are often fetched later.
    """
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        problem(f"variant `{variant}`: `checkpoint` must be a path or an http(s) URL, not {value!r}")
        return None
    if "://" in value:
        if not value.startswith(("http://", "https://")):
            problem(f"variant `{variant}`: `checkpoint` URL `{value}`: only http:// and https:// are fetched")
        return value
    return os.path.abspath(path.parent / os.path.expanduser(value))


def _hint(key: str, choices) -> str:
    from ablate.errors import did_you_mean

    return did_you_mean(str(key), sorted(choices))


def _as_dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def _int_list(value) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value)


class _LineLoader(yaml.SafeLoader):
    """A safe loader that rejects duplicate keys and records the line of every mapping key."""


def _read_yaml(path: Path, prefix: str = "") -> tuple[Any, dict[str, str]]:
    """Parse ``path``; returns the data and ``{"variants.dwt.paper": "file.yaml:LINE"}`` for every key.

    ``prefix`` is prepended to the dotted keys (``profiles`` for a shared profiles file).
    """
    lines: dict[str, int] = {}
    duplicates: list[str] = []

    def construct_mapping(loader, node, deep=False):
        loader.flatten_mapping(node)
        parent = getattr(node, "_ablate_prefix", None)
        if parent is None and node is not root[0]:
            parent = "<list item>"  # mappings inside lists (pipelines) are not addressed by key
        mapping = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            dotted = f"{parent}.{key}" if parent else str(key)
            if key in mapping:
                duplicates.append(f"{path.name}:{key_node.start_mark.line + 1}: duplicate key `{dotted}` "
                                  f"(first at line {lines[dotted]})")
            lines.setdefault(dotted, key_node.start_mark.line + 1)
            if isinstance(value_node, yaml.MappingNode) and not str(key).count("."):
                value_node._ablate_prefix = dotted
            mapping[key] = loader.construct_object(value_node, deep=True)
        return mapping

    loader_cls = type("_Loader", (_LineLoader,), {})
    loader_cls.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    root: list = [None]
    try:
        loader = loader_cls(path.read_text())
        try:
            root[0] = loader.get_single_node()
            if root[0] is not None:
                root[0]._ablate_prefix = prefix
            data = loader.construct_document(root[0]) if root[0] is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise StudyError(f"{path.name}{where}: YAML syntax error: {reason}") from None
    if duplicates:
        raise StudyError("\n".join(duplicates))
    return data, {key: f"{path.name}:{line}" for key, line in lines.items() if not key.startswith("<list item>")}
