"""Results: collected rows -> one row per variant, the numbers every report format shows.

Reads the rows of :func:`ablate.collect.collect` and the study (baseline, paper numbers, which mIoU
the comparison uses) and returns :class:`Results`: one dict of unrounded numbers per variant, the
notes and conventions a reader needs, and the problems met on the way. Writes nothing; rounding and
symbols belong to :mod:`ablate.report`.

Per variant, over its finished seeds: mean, std (ddof=1) and n of mIoU (best and last evaluation);
the difference of means to the baseline variant; with two or more seeds finished by both, a paired
t-test against the baseline over those seeds (``scipy.stats.ttest_rel``); the paper's value and our
difference to it, with a verdict ("within noise" when it is at most two of our standard deviations,
else the signed difference); Params and FLOPs with their deltas to the baseline, beside the paper's.
Variants with no finished run stay in the table with their status.

Plain Python throughout (no pandas, no numpy): a report is a handful of rows, and ``ablate report``
should not spend its time importing. scipy is imported only for a paired t-test.
"""
from __future__ import annotations

import math
import statistics
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ablate.study import Study

ALPHA = 0.05  # a paired t-test below this marks the delta to the baseline
MARKER = "\u2020"  # dagger
MIOU_KINDS = ("best", "last")
_STATUS_ORDER = ("done", "running", "failed", "pending")
# The columns of Results.variants (and of the CSV, the JSON's "variants" and Results.table()), in order:
# identity and status; mIoU best and last (mean, std, n, delta to the baseline, paired-test p, pairs);
# the paper's mIoU and ours against it; Params and FLOPs, ours and the paper's, with deltas.
VARIANT_COLUMNS = (
    "variant", "label", "is_baseline", "status", "runs", *(f"n_{s}" for s in _STATUS_ORDER), "seeds_done",
    *(f"miou_{k}_{s}" for k in MIOU_KINDS for s in ("mean", "std", "n", "delta", "p", "paired_n")),
    "paper_miou", "miou_vs_paper", "verdict",
    *(f"{p}{k}{s}" for k in ("params_m", "gmacs")
      for p, s in (("", ""), ("", "_delta"), ("paper_", ""), ("paper_", "_delta"), ("", "_vs_paper"))),
)


@dataclass
class Results:
    """Everything a report shows, unrounded.

    ``variants`` is one dict per variant, in study order, with the keys of :data:`VARIANT_COLUMNS`
    in that order and plain Python values (None for missing).
    """

    study: str
    title: str
    profile: str
    profile_label: str
    comparable: bool  # whether the profile is the paper's schedule on real data
    baseline: str
    compare_miou: str  # "best" or "last": which mIoU is compared with the baseline and the paper
    input_shape: tuple[int, int, int]
    variants: list[dict[str, Any]]
    runs: list[dict]
    measurements: dict[str, dict]
    conventions: dict[str, str]
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def table(self) -> tuple[list[str], list[list[Any]]]:
        """Columns and rows of plain Python values (None for missing), as ``wandb.Table`` takes them."""
        columns = list(VARIANT_COLUMNS)
        return columns, [[record[c] for c in columns] for record in self.records()]

    def records(self) -> list[dict[str, Any]]:
        """The variant rows as JSON-ready dicts (copies; NaN -> None)."""
        return [{k: _plain(v) for k, v in row.items()} for row in self.variants]

    def to_dict(self) -> dict[str, Any]:
        """The machine-readable report: every number unrounded, with conventions and notes."""
        return {
            "study": self.study,
            "title": self.title,
            "profile": self.profile,
            "profile_label": self.profile_label,
            "comparable_to_paper": self.comparable,
            "baseline": self.baseline,
            "compare_miou": self.compare_miou,
            "input_shape": list(self.input_shape),
            "significance_level": ALPHA,
            "conventions": dict(self.conventions),
            "notes": list(self.notes),
            "problems": list(self.problems),
            "variants": self.records(),
            "runs": [{k: _plain(v) for k, v in row.items()} for row in self.runs],
            "measurements": {k: _plain(v) for k, v in self.measurements.items()},
        }


def aggregate(
    study: Study,
    profile: str,
    rows: list[dict],
    measurements: dict[str, dict] | None = None,
    problems: list[str] | None = None,
) -> Results:
    """Aggregate collected rows per variant and compare them with the baseline and the paper.

    Args:
        study: the loaded study (baseline, paper numbers, ``compare_miou``).
        profile: the profile the rows belong to.
        rows: :func:`ablate.collect.collect` rows (runs of other profiles are an error).
        measurements: ``{variant: measurement}`` for notes on uncounted operators and failures.
        problems: lines about runs that could not be read (corrupt result.json), kept for the report.
    """
    measurements = dict(measurements or {})
    profiles = {row["profile"] for row in rows}
    if profiles - {profile}:
        raise ValueError(f"rows of profiles {sorted(profiles)} given for profile `{profile}`")
    done = [row for row in rows if row["status"] == "done"]
    scores = {kind: _scores(done, f"miou_{kind}") for kind in MIOU_KINDS}
    variants = [_variant_record(study, name, [row for row in rows if row["variant"] == name], scores, measurements)
                for name in study.variants]
    base_rec = next(rec for rec in variants if rec["variant"] == study.baseline)
    for rec in variants:
        for key in ("params_m", "gmacs", "paper_params_m", "paper_gmacs"):
            rec[f"{key}_delta"] = _minus(rec[key], base_rec[key])
        for key in ("params_m", "gmacs"):
            rec[f"{key}_vs_paper"] = _minus(rec[key], rec[f"paper_{key}"])
    variants = [{column: rec[column] for column in VARIANT_COLUMNS} for rec in variants]

    spec = study.profile(profile)
    comparable = spec.data != "synthetic" and not spec.overrides
    label = profile_label(study, profile, rows, comparable)
    return Results(
        study=study.name, title=study.title, profile=profile, profile_label=label, comparable=comparable,
        baseline=study.baseline, compare_miou=study.compare_miou, input_shape=tuple(study.input_shape),
        variants=variants, runs=[dict(r) for r in rows], measurements=measurements,
        conventions=conventions(study), notes=_notes(variants, rows, measurements, study),
        problems=list(problems or []),
    )


def _scores(done: list[dict], key: str) -> dict[str, dict[int, float]]:
    """``{variant: {seed: row[key]}}`` of the finished runs with a number there, seeds ascending."""
    scores: dict[str, dict[int, float]] = {}
    for row in sorted(done, key=lambda r: r["seed"]):
        if not _missing(row.get(key)):
            scores.setdefault(row["variant"], {}).setdefault(row["seed"], float(row[key]))
    return scores


def _variant_record(study: Study, name: str, runs: list[dict], scores: dict[str, dict[str, dict[int, float]]],
                    measurements: dict) -> dict[str, Any]:
    """One variant's row before the Params/FLOPs deltas: status counts, mIoU statistics, the paper."""
    variant, base = study.variant(name), study.baseline
    counts = Counter(row["status"] for row in runs)
    rec: dict[str, Any] = {
        "variant": name, "label": variant.label, "is_baseline": name == base, "status": _status(counts),
        "runs": len(runs), **{f"n_{s}": counts.get(s, 0) for s in _STATUS_ORDER},
        "seeds_done": sorted(int(row["seed"]) for row in runs if row["status"] == "done"),
    }
    for kind in MIOU_KINDS:
        rec.update(_miou_stats(scores[kind], name, base, prefix=f"miou_{kind}"))
    compared = f"miou_{study.compare_miou}"
    rec["paper_miou"] = variant.paper.get("mIoU")
    rec["miou_vs_paper"] = _minus(rec[f"{compared}_mean"], rec["paper_miou"])
    rec["verdict"] = verdict(rec["miou_vs_paper"], rec[f"{compared}_std"], rec[f"{compared}_n"])
    for key, metric in (("params_m", "Params"), ("gmacs", "FLOPs")):
        # the same model for every seed: any row's measurement will do
        values = [row.get(key) for row in runs if not _missing(row.get(key))]
        rec[key] = float(values[0]) if values else _measured(measurements, name, key)
        rec[f"paper_{key}"] = variant.paper.get(metric)
    return rec


def _miou_stats(scores: dict[str, dict[int, float]], name: str, base: str, prefix: str) -> dict[str, Any]:
    """mean, std (ddof=1), n, delta to the baseline's mean and the paired t-test for one variant."""
    mine, theirs = scores.get(name, {}), scores.get(base, {})
    n = len(mine)
    stats = {f"{prefix}_mean": statistics.fmean(mine.values()) if n else None,
             f"{prefix}_std": statistics.stdev(mine.values()) if n >= 2 else None,
             f"{prefix}_n": n, f"{prefix}_delta": None, f"{prefix}_p": None, f"{prefix}_paired_n": 0}
    if name != base:
        base_mean = statistics.fmean(theirs.values()) if theirs else None
        stats[f"{prefix}_delta"] = _minus(stats[f"{prefix}_mean"], base_mean)
        common = [seed for seed in mine if seed in theirs]
        stats[f"{prefix}_paired_n"] = len(common)
        stats[f"{prefix}_p"] = paired_p([mine[s] for s in common], [theirs[s] for s in common])
    return stats


def paired_p(values: list[float], baseline: list[float]) -> float | None:
    """Two-sided p-value of a paired t-test (same seeds, same order), or None with under 2 pairs.

    None also when every difference is equal (the test statistic is undefined); scipy's warning
    about that is silenced, the report says "no test" instead.
    """
    if len(values) < 2 or len(values) != len(baseline):
        return None
    diffs = [a - b for a, b in zip(values, baseline)]
    if max(diffs) - min(diffs) == 0:
        return None
    from scipy.stats import ttest_rel  # lazy: scipy.stats takes a second to import, needed with 2+ seeds

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(ttest_rel(values, baseline).pvalue)
    return p if math.isfinite(p) else None


def verdict(diff: float | None, std: float | None, n: int) -> str | None:
    """``"within noise"`` when ``|diff| <= 2 std`` of our seeds, else the signed difference.

    With fewer than two seeds there is no noise estimate: the difference is given with ``(n=1)``.
    """
    if diff is None:
        return None
    if n >= 2 and std is not None and abs(diff) <= 2 * std:
        return "within noise"
    signed = _signed(diff)
    return signed if n >= 2 else f"{signed} (n={n})"


def _signed(value: float) -> str:
    text = f"{value:+.2f}"
    return "+0.00" if text == "-0.00" else text


def profile_label(study: Study, profile: str, rows: list[dict], comparable: bool) -> str:
    """``"smoke profile: synthetic data, 40 iterations — not comparable to the paper's numbers"``."""
    spec = study.profile(profile)
    parts = ["synthetic data" if spec.data == "synthetic" else "real data"]
    iters = spec.overrides.get("train_cfg.max_iters")
    if iters is None:  # the profile does not set it: the longest schedule among the runs
        found = [row.get("max_iters") for row in rows if not _missing(row.get("max_iters"))]
        iters = int(max(found)) if found else None
    if iters is not None:
        parts.append(f"{iters} iterations")
    tail = "the paper's schedule" if comparable else "not comparable to the paper's numbers"
    return f"{profile} profile: {', '.join(parts)} \u2014 {tail}"


def conventions(study: Study) -> dict[str, str]:
    """What each number means; every report format prints these."""
    shape = "x".join(str(s) for s in study.input_shape)
    return {
        "mIoU": ("percent, mmseg IoUMetric on the validation split; `best` is the best evaluation of a run, "
                 f"`last` its last; comparisons with the baseline and the paper use `{study.compare_miou}`"),
        "Params": "all parameters of the segmentor, in millions",
        "FLOPs": (f"G multiply-accumulates (MACs) for one {shape} image in inference mode, the mmseg/mmengine "
                  "table convention; every matrix product is counted, also inside attention (SDPA) and CARAFE"),
        "paper FLOPs": ("the paper counted FLOPs with a module-hook counter that does not see matrix products, "
                        "so its numbers leave out e.g. the attention's QK^T and AV; ours include them"),
        "statistics": (f"mean \u00b1 std (ddof=1) over n seeds; {MARKER}: paired t-test against the baseline "
                       f"over the seeds both finished, p < {ALPHA}; `within noise`: "
                       "|ours \u2212 paper| \u2264 2 std of our seeds"),
        "paper": ("Params and FLOPs of non-baseline rows are printed as deltas to the paper's baseline, "
                  "as the paper does"),
    }


def _notes(variants: list[dict], rows: list[dict], measurements: dict, study: Study) -> list[str]:
    """Lines about runs that are not done and about measurements that are missing or incomplete."""
    notes = []
    for row in rows:
        run = f"run `{row['variant']}/seed{row['seed']}`"
        if row["status"] == "failed":
            notes.append(f"{run} failed: {row.get('error')}")
        elif row["status"] != "done":
            notes.append(f"{run} is {row['status']}")
    for name in study.variants:
        found = measurements.get(name) or {}
        if "error" in found:
            notes.append(f"Params/FLOPs of `{name}` not measured: {found['error']}")
        uncounted = found.get("uncounted") or {}
        if uncounted:
            ops = ", ".join(f"{op} x{count}" for op, count in sorted(uncounted.items()))
            notes.append(f"FLOPs of `{name}` leave out operators that carry compute: {ops} "
                         "(see `ablate measure --audit`)")
    missing = [rec["variant"] for rec in variants
               if _missing(rec["gmacs"]) and "error" not in (measurements.get(rec["variant"]) or {})]
    if missing:
        notes.append("Params/FLOPs not measured for " + ", ".join(f"`{v}`" for v in missing)
                     + " (run `ablate report` without --no-measure, on a machine with torch and mmseg)")
    return notes


def _status(counts: Counter) -> str:
    total = sum(counts.values())
    if total == 0:
        return "no runs"
    for status in _STATUS_ORDER:
        if counts.get(status) == total:
            return status
    return ", ".join(f"{counts[s]} {s}" for s in _STATUS_ORDER if counts.get(s))


def _measured(measurements: dict, name: str, key: str) -> float | None:
    value = (measurements.get(name) or {}).get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _minus(a, b) -> float | None:
    if _missing(a) or _missing(b):
        return None
    return float(a) - float(b)


def _missing(value) -> bool:
    """None or NaN: no number."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _plain(value):
    """JSON-ready: NaN -> None, numpy scalars (from a measurement) -> Python, containers recursively."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
