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

A study may declare ``factors``, each with named levels that map to overrides, and gets every
combination of levels as a variant: named ``dwt-on_attention-off`` and labelled ``dwt on,
attention off``, unless a variant of ``variants:`` claims that combination with ``levels:`` (and
gives its own name, label and paper numbers). It may state ``claims`` (:mod:`ablate.contrasts`
reads them) and a ``seed_std`` (mIoU, for ``ablate plan --power``; a profile may give its own).
A profile may extend another (``extends: smoke``, or ``extends: other.yaml:smoke`` from another
file): the parent's overrides first, then its own; its other settings replace the parent's.

The YAML is read with YAML 1.2's booleans: only ``true``/``false`` are booleans, so that ``on``,
``off``, ``yes`` and ``no`` can name levels.
"""
from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ablate.contrasts import Claim, Factor, comparison_contrast, parse_test
from ablate.errors import StudyError, one_of
from ablate.runs import Run, WorkRoot, bad_name

METRICS = ("mIoU", "Params", "FLOPs")
MIOU_CHOICES = ("best", "last")
_TOP_KEYS = {
    "name", "title", "description", "base", "baseline", "compare_miou", "seeds", "variants",
    "profiles", "input_shape", "resources", "slurm", "wandb", "factors", "claims", "seed_std",
}
_VARIANT_KEYS = {"label", "overrides", "paper", "description", "levels", "checkpoint"}
_PROFILE_KEYS = {"description", "overrides", "data", "seeds", "sec_per_iter", "seed_std", "extends"}
_CLAIM_KEYS = {"claim", "test"}
_DATA_CHOICES = ("synthetic", "required")


@dataclass(frozen=True)
class Variant:
    """One row of the study's table: a name, a label and dotted config overrides."""

    name: str
    label: str
    overrides: dict[str, Any]
    paper: dict[str, float]  # absolute values, relative entries already resolved
    levels: dict[str, str] | None = None  # its level of each factor; None: not a cell of the factorial
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
    seed_std: float | None = None  # mIoU std over seeds under this profile, for `ablate plan --power`
    extends: str | None = None  # the profile it extends, as written (`smoke`, `table2.yaml:smoke`)


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
    factors: dict[str, Factor] = field(default_factory=dict)  # file order
    claims: tuple[Claim, ...] = ()
    seed_std: float | None = None  # mIoU std over seeds, for `ablate plan --power` (a profile's comes first)
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

    def cells(self) -> dict[tuple[str, ...], str]:
        """The variant of each combination of factor levels (levels in factor order)."""
        return {tuple(v.levels[f] for f in self.factors): v.name for v in self.variants.values() if v.levels}

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
        _unknown_keys(raw, allowed, where, owner, problem)

    if not isinstance(data, dict):
        raise StudyError(f"{path.name}: a study file must be a mapping with `variants` and `profiles`")
    unknown_keys(data, _TOP_KEYS)
    for key in ("base", "profiles") if "factors" in data else ("base", "variants", "profiles"):
        if key not in data:
            problem("", f"missing required key `{key}`")

    base = path.parent / str(data.get("base", ""))
    if "base" in data and not base.is_file():
        problem("base", f"base config `{data['base']}` not found (looked for {base})")

    factor_levels = _factor_levels(data.get("factors"), problem)
    variants_raw = data.get("variants")
    if variants_raw is None and factor_levels:
        variants_raw = {}
    elif not isinstance(variants_raw, dict) or not variants_raw:
        problem("variants", "`variants` must map variant names to their settings")
        variants_raw = {}
    cells = _cells(variants_raw, factor_levels, problem)
    names = list(variants_raw) + [name for name in cells.values() if name not in variants_raw]
    baseline = data.get("baseline", next(iter(names), ""))
    if names and baseline not in names:
        problem("baseline", one_of(str(baseline), "baseline variant", names))
    baseline_paper = _as_dict(variants_raw.get(baseline, {})).get("paper") or {}

    levels_of = {name: dict(zip(factor_levels, cell)) for cell, name in cells.items()}
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
        if "levels" in raw and overrides:
            problem(f"{where}.overrides", f"variant `{name}`: a variant with `levels` takes its overrides from "
                                          "`factors`; give a factor a level instead")
        paper = _paper_numbers(name, raw.get("paper") or {}, baseline_paper, name == baseline,
                               lambda msg, k=where: problem(f"{k}.paper", msg))
        checkpoint = _checkpoint(path, name, raw.get("checkpoint"),
                                 lambda msg, k=where: problem(f"{k}.checkpoint", msg))
        variants[name] = Variant(str(name), str(raw.get("label", name)), dict(overrides), paper, levels_of.get(name),
                                 checkpoint)
    for name, levels in levels_of.items():  # every cell's overrides: its levels', factor by factor
        overrides = {}
        for factor, level in levels.items():
            for key, value in factor_levels[factor][level].items():
                overrides[key] = value
                locations.setdefault(f"variants.{name}.overrides.{key}",
                                     locations.get(f"factors.{factor}.{level}.{key}", path.name))
        label = variants[name].label if name in variants else ", ".join(f"{f} {lv}" for f, lv in levels.items())
        paper = variants[name].paper if name in variants else {}
        checkpoint = variants[name].checkpoint if name in variants else None
        variants[name] = Variant(name, label, overrides, paper, levels, checkpoint)
    base_levels = levels_of.get(baseline) or {f: next(iter(lv)) for f, lv in factor_levels.items()}
    factors = {f: Factor(f, lv, base_levels[f]) for f, lv in factor_levels.items()}

    reader = _ProfileReader(problems)
    profiles_raw, profile_locations, profiles_file = data.get("profiles") or {}, locations, path
    if isinstance(profiles_raw, str):  # another study's profiles, or a file of profiles alone
        shared = path.parent / profiles_raw
        if shared.is_file():
            profiles_file, (profiles_raw, profile_locations) = shared, reader.read(shared)
            locations.update({k: v for k, v in profile_locations.items() if k.startswith("profiles.")})
        else:
            problem("profiles", f"profiles file `{profiles_raw}` not found (looked for {shared})")
            profiles_raw = {}
    if not isinstance(profiles_raw, dict) or not profiles_raw:
        problem("profiles", "`profiles` must map profile names to their settings")
        profiles_raw = {}
    profiles = {}
    for name in profiles_raw:
        fields, lines = reader.resolve(profiles_file, profiles_raw, profile_locations, name)
        for key, line in lines.items():  # an inherited override's errors point at the parent's line
            locations.setdefault(f"profiles.{name}.overrides.{key}", line)
        seeds = fields.get("seeds")
        profiles[str(name)] = Profile(
            str(name), fields.get("description", ""), fields.get("overrides", {}), fields.get("data", "required"),
            tuple(seeds) if seeds is not None else None, fields.get("sec_per_iter"), fields.get("seed_std"),
            fields.get("extends"))

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
    seed_std = data.get("seed_std")
    if seed_std is not None and not _positive(seed_std):
        problem("seed_std", "`seed_std` must be a positive number (mIoU)")
        seed_std = None
    claims = _claims(data.get("claims"), factors, cells, list(variants), locations, path, problem)
    name = data.get("name", path.stem)
    if (why := bad_name(name)) is not None:
        problem("name" if "name" in data else "", f"study name {why}")

    if problems:
        raise StudyError("\n".join(dict.fromkeys(problems)))  # a parent profile's problem is met once per child
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
        factors=factors,
        claims=claims,
        seed_std=float(seed_std) if seed_std is not None else None,
        locations=locations,
    )


def _factor_levels(raw, problem) -> dict[str, dict[str, dict]]:
    """``factors:`` validated: ``{factor: {level: overrides}}``, file order."""
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not raw:
        problem("factors", "`factors` must map factor names to their levels, e.g. dwt: {off: {}, on: {...}}")
        return {}
    out, setters = {}, {}
    for factor, levels in raw.items():
        where = f"factors.{factor}"
        if (why := bad_name(factor)) is not None:
            problem(where, f"factor {why}")
        if not isinstance(levels, dict) or len(levels) < 2:
            problem(where, f"factor `{factor}` must map two or more level names to overrides, "
                           "e.g. {off: {}, on: {model.decode_head.use_dwt: true}}")
            continue
        out[str(factor)] = {}
        for level, overrides in levels.items():
            if (why := bad_name(str(level))) is not None:
                problem(f"{where}.{level}", f"factor `{factor}`: level {why}")
            if not isinstance(overrides, (dict, type(None))):
                problem(f"{where}.{level}", f"factor `{factor}` level `{level}`: overrides must be a mapping "
                                            "of dotted config keys ({} for none)")
                overrides = {}
            for key in overrides or {}:
                other = setters.setdefault(key.lstrip("+"), factor)
                if other != factor:
                    problem(f"{where}.{level}.{key}", f"factor `{factor}` sets `{key}`, which factor `{other}` "
                                                      "sets too: their combinations would depend on the order")
            out[str(factor)][str(level)] = dict(overrides or {})
    return out


def _cells(variants_raw: dict, factor_levels: dict, problem) -> dict[tuple[str, ...], str]:
    """The variant of every combination of levels: a variant of ``variants:`` that names it with
    ``levels:``, else a generated one (``dwt-on_attention-off``), in the factors' order."""
    cells: dict[tuple[str, ...], str] = {}
    for name, raw in variants_raw.items():
        levels = _as_dict(raw).get("levels")
        if levels is None:
            continue
        where = f"variants.{name}.levels"
        if not factor_levels:
            problem(where, f"variant `{name}`: `levels` needs `factors:` in the study")
            continue
        if not isinstance(levels, dict) or set(map(str, levels)) != set(factor_levels):
            problem(where, f"variant `{name}`: `levels` must give a level of each factor: "
                           + ", ".join(factor_levels))
            continue
        chosen = {str(f): str(lv) for f, lv in levels.items()}
        bad = [f for f in factor_levels if chosen[f] not in factor_levels[f]]
        for f in bad:
            problem(f"{where}.{f}", f"variant `{name}`: factor `{f}`: " + one_of(chosen[f], "level", factor_levels[f]))
        cell = tuple(chosen[f] for f in factor_levels)
        if not bad and cell in cells:
            problem(where, f"variant `{name}` has the levels of variant `{cells[cell]}`")
        elif not bad:
            cells[cell] = str(name)
    for cell in itertools.product(*factor_levels.values()) if factor_levels else ():
        if cell not in cells:
            generated = "_".join(f"{f}-{lv}" for f, lv in zip(factor_levels, cell))
            if generated in variants_raw:
                problem(f"variants.{generated}", f"variant `{generated}` is the generated name of levels it does "
                                                 "not have; name it otherwise or give it those `levels`")
            cells[cell] = generated
    return cells


def _claims(raw, factors, cells, variants, locations, path, problem) -> tuple[Claim, ...]:
    """``claims:`` parsed, every variant, factor and level checked (:mod:`ablate.contrasts`)."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        problem("claims", "`claims` must be a list of tests such as `dwt > baseline`, or of {claim: words, test: ...}")
        return ()
    claims = []
    for i, item in enumerate(raw):
        where = f"claims.{i}"
        if isinstance(item, dict):
            _unknown_keys(item, _CLAIM_KEYS, where, "claim: ", problem)
            test, text = item.get("test"), item.get("claim", item.get("test"))
        else:
            test, text = item, item
        if not isinstance(test, str) or not test.strip():
            problem(where, "a claim needs a `test`, e.g. `dwt > baseline` or `interaction(dwt, attention) > 0`")
            continue
        try:
            parts = parse_test(test)
            for part in parts:
                comparison_contrast(part, factors, cells, variants)
        except ValueError as exc:
            problem(f"{where}.test" if isinstance(item, dict) else where, f"claim `{test}`: {exc}")
            continue
        claims.append(Claim(str(text), test, parts, locations.get(where, path.name)))
    return tuple(claims)


class _ProfileReader:
    """Profiles with ``extends`` followed, in one file or across files; problems go to ``problems``."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        self._files: dict[Path, tuple[dict, dict]] = {}
        self._fields: dict[tuple[Path, str], dict] = {}

    def read(self, path: Path) -> tuple[dict, dict[str, str]]:
        """The profiles of another file (a study's, or a file of profiles alone) and their lines."""
        if path not in self._files:
            data, locations = _read_yaml(path)
            if isinstance(data, dict) and isinstance(data.get("profiles"), str):  # it shares a third's
                self._files[path] = self.read(path.parent / data["profiles"])
            elif isinstance(data, dict) and "profiles" in data:
                self._files[path] = (_as_dict(data["profiles"]), locations)
            else:
                data, locations = _read_yaml(path, prefix="profiles")
                self._files[path] = (_as_dict(data), locations)
        return self._files[path]

    def resolve(self, path: Path, raws: dict, locations: dict, name: str, chain: tuple = ()) -> tuple[dict, dict]:
        """Profile ``name`` of ``raws`` (read from ``path``) with its parents' settings under its own.

        Returns:
            Its fields (only those set, by it or a parent) and ``{override key: "file:line"}``.
        """
        def problem(key: str, message: str) -> None:
            self.problems.append(f"{locations.get(key, path.name)}: {message}")

        if (path, name) not in self._fields:
            self._fields[path, name] = _profile_fields(name, raws[name], problem)
        own = self._fields[path, name]
        lines = {k: locations.get(f"profiles.{name}.overrides.{k}", path.name) for k in own.get("overrides", {})}
        parent = own.get("extends")
        if parent is None:
            return own, lines
        file, _, parent_name = parent.rpartition(":")
        target, parent_raws, parent_locations = path, raws, locations
        if file:
            target = path.parent / file
            if not target.is_file():
                problem(f"profiles.{name}.extends", f"profile `{name}`: `extends: {parent}`: file `{file}` not "
                                                    f"found (looked for {target})")
                return own, lines
            parent_raws, parent_locations = self.read(target)
        chain = chain + ((path, name),)
        if (target, parent_name) in chain:
            loop = [n for _, n in chain[chain.index((target, parent_name)):]]
            loop = loop[loop.index(name):] + loop[:loop.index(name)] + [name]  # from this profile round to it
            problem(f"profiles.{name}.extends", f"profile `{name}` extends itself ({' -> '.join(loop)})")
            return own, lines
        if parent_name not in parent_raws:
            problem(f"profiles.{name}.extends", f"profile `{name}`: " + one_of(parent_name, "profile to extend",
                                                                             parent_raws))
            return own, lines
        inherited, inherited_lines = self.resolve(target, parent_raws, parent_locations, parent_name, chain)
        own_overrides = own.get("overrides", {})
        merged = {**inherited, **own}
        # the parent's overrides first: the child's apply after them, so a key in both is the child's
        merged["overrides"] = {**{k: v for k, v in inherited.get("overrides", {}).items() if k not in own_overrides},
                               **own_overrides}
        if "description" not in own:
            merged["description"] = f"`{parent}` " + (f"({inherited['description']}) " if inherited.get("description")
                                                      else "") + "with its own overrides"
        return merged, {**{k: v for k, v in inherited_lines.items() if k not in own_overrides}, **lines}


def _profile_fields(name, raw, problem) -> dict[str, Any]:
    """The settings a profile gives itself, each validated; a setting it does not give is absent."""
    where = f"profiles.{name}"
    if (why := bad_name(name)) is not None:
        problem(where, f"profile {why}")
    raw = _as_dict(raw)
    _unknown_keys(raw, _PROFILE_KEYS, where, f"profile `{name}`: ", problem)
    fields: dict[str, Any] = {}
    if "description" in raw:
        fields["description"] = str(raw["description"])
    if "data" in raw:
        if raw["data"] in _DATA_CHOICES:
            fields["data"] = raw["data"]
        else:
            problem(f"{where}.data", f"profile `{name}`: `data` must be one of {', '.join(_DATA_CHOICES)}")
    if raw.get("seeds") is not None:
        if _int_list(raw["seeds"]):
            fields["seeds"] = list(raw["seeds"])
        else:
            problem(f"{where}.seeds", f"profile `{name}`: `seeds` must be a list of integers")
    for key in ("sec_per_iter", "seed_std"):
        if raw.get(key) is not None:
            if _positive(raw[key]):
                fields[key] = float(raw[key])
            else:
                problem(f"{where}.{key}", f"profile `{name}`: `{key}` must be a positive number")
    if "overrides" in raw:
        if isinstance(raw["overrides"] or {}, dict):
            fields["overrides"] = dict(raw["overrides"] or {})
        else:
            problem(where, f"profile `{name}`: `overrides` must be a mapping of dotted config keys")
    if "extends" in raw:
        if isinstance(raw["extends"], str) and raw["extends"].strip():
            fields["extends"] = raw["extends"].strip()
        else:
            problem(f"{where}.extends", f"profile `{name}`: `extends` names a profile: `smoke`, or "
                                        "`other.yaml:smoke` in another file")
    return fields


def _unknown_keys(raw: dict, allowed, where: str, owner: str, problem) -> None:
    for key in raw:
        if key not in allowed:
            problem(f"{where}.{key}" if where else key, f"{owner}unknown key `{key}`" + _hint(key, allowed))


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


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _int_list(value) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value)


class _LineLoader(yaml.SafeLoader):
    """A safe loader that rejects duplicate keys and records the line of every mapping key.

    Booleans are YAML 1.2's (``true``/``false`` only): YAML 1.1 reads ``on``/``off``/``yes``/``no``
    as booleans too, which would turn the levels of ``dwt: {off: {}, on: {...}}`` into False/True.
    """


_LineLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_LineLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                  list("tTfF"))


def read_value(text: str) -> Any:
    """A value as a study file would read it (``20``, ``true``, ``[64, 64]``, ``on`` a string); raises yaml.YAMLError."""
    return yaml.load(text, Loader=_LineLoader)  # noqa: S506 - a SafeLoader subclass


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
            elif isinstance(value_node, yaml.SequenceNode) and not str(key).count("."):
                for index, item in enumerate(value_node.value):  # claims.0, claims.1: a claim's line
                    lines.setdefault(f"{dotted}.{index}", item.start_mark.line + 1)
                    if isinstance(item, yaml.MappingNode):
                        item._ablate_prefix = f"{dotted}.{index}"
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
