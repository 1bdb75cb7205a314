"""Results: one row per run -> one row per variant, the numbers every report format shows.

Reads the runs frame of :func:`ablate.collect.collect` (one row per run; :func:`frame` is the
notebook way to get it) and the study (baseline, paper numbers, which mIoU the comparison uses);
:func:`summarize` returns :class:`Results`. Writes nothing; rounding and symbols belong to
:mod:`ablate.report`. In a notebook::

    runs = frame("table2", "paper")
    results = summarize("table2", "paper", runs)
    results.variants.loc["dwt", "miou_best_delta"]

Per variant, over its runs that count (``done``; also ``stale`` ones, whose config changed since
they ran, with ``include_stale``): mean, std (ddof=1) and n of mIoU (best and last evaluation); the
difference of means to the baseline variant; with two or more seeds counted for both, a paired
t-test against the baseline over those seeds (``scipy.stats.ttest_rel``); the paper's value and our
difference to it, with a verdict ("within noise" when it is at most two of our standard deviations,
else the signed difference); Params and FLOPs with their deltas to the baseline, beside the paper's.
Variants with no finished run stay in the table with their status.

``Results.variants`` is indexed by ``variant`` in study order, with these columns (NaN where there
is no number; the CSV and the JSON's ``variants`` have the same names):

=====================  ===========================================================================
label                  the variant's label in the study
is_baseline            whether it is the study's baseline
status                 ``done``, ``pending``, ... when all its runs agree, else e.g. ``2 done, 1 failed``
runs                   its number of runs
n_done ... n_pending   its runs per status: ``n_done``, ``n_running``, ``n_queued``, ``n_failed``,
                       ``n_stale``, ``n_pending``
seeds_done             the seeds counted in the statistics, ascending (a list)
miou_best_mean         mean of the best evaluation's mIoU over the counted seeds (percent)
miou_best_std          its sample standard deviation (ddof=1); NaN with one seed
miou_best_n            the number of counted seeds
miou_best_delta        ``miou_best_mean`` minus the baseline's; NaN for the baseline
miou_best_p            two-sided p of the paired t-test against the baseline; NaN with under 2 pairs
                       or when every difference is the same
miou_best_paired_n     the seeds counted for both this variant and the baseline
miou_last_...          the same six for the last evaluation
paper_miou             the paper's mIoU
miou_vs_paper          our mean of the compared mIoU (``compare_miou``) minus the paper's
verdict                ``within noise``, else the signed ``miou_vs_paper`` (with ``(n=1)`` for one seed)
params_m               Params in millions (one measurement per variant: the seed does not change it)
params_m_delta         ``params_m`` minus the baseline's
paper_params_m         the paper's Params
paper_params_m_delta   the paper's Params minus the paper's baseline's
params_m_vs_paper      ``params_m`` minus the paper's
gmacs ...              the same five for FLOPs in G MACs: ``gmacs``, ``gmacs_delta``, ``paper_gmacs``,
                       ``paper_gmacs_delta``, ``gmacs_vs_paper``
=====================  ===========================================================================

``Results.released`` holds the checkpoints that ``ablate eval`` evaluated (released weights, or
our own), one row per ``evaluation.json`` given to :func:`summarize`, in study order; it has no
rows when there are none, and then no report format shows it. Its columns (:data:`RELEASED_COLUMNS`):

=====================  ===========================================================================
variant, label         the variant whose model the weights were loaded into, and its label
checkpoint             the checkpoint's file name (of the path or URL)
format                 ``0.x`` (keys renamed from mmseg 0.x) or ``1.x``
miou, aacc, macc       percent, mmseg's IoUMetric on the profile's validation split
trained_miou           our trained runs' mean of the compared mIoU (``compare_miou``)
miou_vs_trained        ``miou`` minus ``trained_miou``
paper_miou             the paper's mIoU
miou_vs_paper          ``miou`` minus ``paper_miou``
sha256                 of the checkpoint file
source, data_root      the path or URL evaluated, and the dataset root
images, evaluated_at   validation images evaluated, and when the evaluation finished
=====================  ===========================================================================

Read sites name these columns through :data:`MIOU` (per mIoU kind), :data:`PARAMS` and :data:`FLOPS`
(Results.compared gives the compared kind's), never by formatting strings. scipy is imported only for
a paired t-test or an interval, so a one-seed report does not pay for it.

A study with ``factors`` also gets ``Results.effects`` (one row per main effect and interaction)
and one with ``claims`` gets ``Results.claims`` (one row per comparison, with verdicts), both from
one OLS fit of the compared mIoU with seed as a block (:mod:`ablate.effects` says how, and
:mod:`ablate.contrasts` what each effect means); ``Results.seed_noise`` is that fit's residual std.
"""
from __future__ import annotations

import math
import os
import statistics
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ablate import effects as fx
from ablate.contrasts import factorial_terms
from ablate.runs import CheckpointEval
from ablate.study import Study, load_study

ALPHA = 0.05  # a paired t-test below this marks the delta to the baseline
MARKER = "\u2020"  # dagger
# Run statuses in the order the `status` column lists mixed counts, with their count columns.
STATUS_COUNTS = {"done": "n_done", "running": "n_running", "queued": "n_queued", "failed": "n_failed",
                 "stale": "n_stale", "pending": "n_pending"}
# The columns of the runs frame this module reads (collect's frame has these and more).
REQUIRED_RUN_COLUMNS = ("profile", "variant", "seed", "status", "miou_best", "miou_last", "max_iters",
                        "params_m", "gmacs", "error")
_RUN_NUMBERS = ("miou_best", "miou_last", "max_iters", "params_m", "gmacs")


@dataclass(frozen=True)
class MiouColumns:
    """The variants-frame columns of one mIoU kind, and the runs-frame column they come from."""

    run: str
    mean: str
    std: str
    n: str
    delta: str
    p: str
    paired_n: str


@dataclass(frozen=True)
class CostColumns:
    """The variants-frame columns of Params or FLOPs, and the runs-frame and paper keys they come from."""

    ours: str  # also the runs frame's column
    delta: str
    paper: str
    paper_delta: str
    vs_paper: str
    paper_key: str  # the study's `paper:` key


MIOU = {
    "best": MiouColumns("miou_best", "miou_best_mean", "miou_best_std", "miou_best_n", "miou_best_delta",
                        "miou_best_p", "miou_best_paired_n"),
    "last": MiouColumns("miou_last", "miou_last_mean", "miou_last_std", "miou_last_n", "miou_last_delta",
                        "miou_last_p", "miou_last_paired_n"),
}
PARAMS = CostColumns("params_m", "params_m_delta", "paper_params_m", "paper_params_m_delta",
                     "params_m_vs_paper", "Params")
FLOPS = CostColumns("gmacs", "gmacs_delta", "paper_gmacs", "paper_gmacs_delta", "gmacs_vs_paper", "FLOPs")
# The columns of Results.variants, in order (the module docstring says what each holds).
VARIANT_COLUMNS = (
    "label", "is_baseline", "status", "runs", *STATUS_COUNTS.values(), "seeds_done",
    "miou_best_mean", "miou_best_std", "miou_best_n", "miou_best_delta", "miou_best_p", "miou_best_paired_n",
    "miou_last_mean", "miou_last_std", "miou_last_n", "miou_last_delta", "miou_last_p", "miou_last_paired_n",
    "paper_miou", "miou_vs_paper", "verdict",
    "params_m", "params_m_delta", "paper_params_m", "paper_params_m_delta", "params_m_vs_paper",
    "gmacs", "gmacs_delta", "paper_gmacs", "paper_gmacs_delta", "gmacs_vs_paper",
)
# The columns of Results.released, in order (the module docstring says what each holds).
RELEASED_COLUMNS = ("variant", "label", "checkpoint", "format", "miou", "aacc", "macc", "trained_miou",
                    "miou_vs_trained", "paper_miou", "miou_vs_paper", "sha256", "source", "data_root", "images",
                    "evaluated_at")


@dataclass
class Results:
    """Everything a report shows, unrounded: the per-variant frame, the runs it came from, and prose."""

    study: str
    title: str
    profile: str
    profile_label: str
    comparable: bool  # whether the profile is the paper's schedule on real data
    include_stale: bool  # whether stale runs are counted
    baseline: str
    compare_miou: str  # "best" or "last": which mIoU is compared with the baseline and the paper
    input_shape: tuple[int, int, int]
    variants: pd.DataFrame  # indexed by variant, study order, columns VARIANT_COLUMNS
    runs: pd.DataFrame  # the runs frame summarized, as given
    measurements: dict[str, dict]
    conventions: dict[str, str]
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    # indexed by term, columns effects.EFFECT_COLUMNS; no rows without factors
    effects: pd.DataFrame = field(default_factory=lambda: _no_effects())
    # one row per comparison of a claim, columns effects.CLAIM_COLUMNS; no rows without claims
    claims: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(fx.CLAIM_COLUMNS)))
    seed_noise: dict[str, Any] = field(default_factory=dict)  # {"std": residual std (NaN: one seed), "df": ...}
    # checkpoints evaluated by `ablate eval`, one row each, columns RELEASED_COLUMNS
    released: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(RELEASED_COLUMNS)))

    @property
    def compared(self) -> MiouColumns:
        """The columns of the mIoU compared with the baseline and the paper."""
        return MIOU[self.compare_miou]

    @property
    def other(self) -> MiouColumns:
        """The columns of the mIoU shown beside it."""
        return MIOU["last" if self.compare_miou == "best" else "best"]

    def table(self) -> tuple[list[str], list[list[Any]]]:
        """Columns and rows of plain Python values (None for missing), as ``wandb.Table`` takes them."""
        columns = ["variant", *VARIANT_COLUMNS]
        return columns, [[record[c] for c in columns] for record in self.records()]

    def records(self) -> list[dict[str, Any]]:
        """The variant rows as JSON-ready dicts, ``variant`` first (NaN -> None)."""
        return [_plain(row) for row in self.variants.reset_index().to_dict("records")]

    def claim_records(self) -> list[dict[str, Any]]:
        """One dict per claim: its words, test, verdict and fewest seeds, with one dict per comparison."""
        out = []
        for (claim, test), rows in self.claims.groupby(["claim", "test"], sort=False):
            parts = [_plain({k: row[k] for k in ("comparison", "contrast", "estimate", "se", "df", "ci_low",
                                                 "ci_high", "n", "paper", "verdict")})
                     for row in rows.to_dict("records")]
            out.append({"claim": claim, "test": test, "verdict": rows["claim_verdict"].iloc[0],
                        "n": int(rows["n"].min()), "parts": parts})
        return out

    def to_dict(self) -> dict[str, Any]:
        """The machine-readable report: every number unrounded, with conventions and notes.

        ``released_weights`` (``Results.released``'s rows) is there only when checkpoints were evaluated.
        """
        data = {
            "study": self.study,
            "title": self.title,
            "profile": self.profile,
            "profile_label": self.profile_label,
            "comparable_to_paper": self.comparable,
            "include_stale": self.include_stale,
            "baseline": self.baseline,
            "compare_miou": self.compare_miou,
            "input_shape": list(self.input_shape),
            "significance_level": ALPHA,
            "conventions": dict(self.conventions),
            "notes": list(self.notes),
            "problems": list(self.problems),
            "variants": self.records(),
            "effects": [_plain(row) for row in self.effects.reset_index().to_dict("records")],
            "claims": self.claim_records(),
            "seed_noise": _plain(self.seed_noise),
            "runs": [_plain(row) for row in self.runs.to_dict("records")],
            "measurements": _plain(self.measurements),
        }
        if len(self.released):
            data["released_weights"] = [_plain(row) for row in self.released.to_dict("records")]
        return data


def frame(
    study: Study | str,
    profile: str,
    work_root: str | os.PathLike | None = None,
    measure: bool = True,
) -> pd.DataFrame:
    """The runs of one profile as collected from their folders: one row per run, in study order.

    Args:
        study: a study name or path (found as ``ablate`` finds it) or a loaded :class:`Study`.
        profile: a profile name of the study.
        work_root: root of the run folders; default ``$ABLATE_WORK_DIR`` or ``work_dirs``.
        measure: whether to fill Params and FLOPs (needs torch and mmseg; cached by model).
    """
    from ablate.collect import collect  # lazy: collect resolves configs (mmengine) to tell stale runs

    study = _study(study)
    study.profile(profile)  # an unknown profile is a StudyError naming the choices
    return collect(study, profile, work_root=work_root, measure=measure).runs


def summarize(
    study: Study | str,
    profile: str,
    runs: pd.DataFrame,
    measurements: dict[str, dict] | None = None,
    problems: list[str] | None = None,
    include_stale: bool = False,
    released: list[CheckpointEval] | None = None,
) -> Results:
    """Aggregate a profile's runs per variant and compare them with the baseline and the paper.

    Args:
        study: a study name or path, or the loaded :class:`Study` (baseline, paper, ``compare_miou``).
        profile: the profile the runs belong to (runs of another profile are a ValueError).
        runs: one row per run with at least :data:`REQUIRED_RUN_COLUMNS` (:func:`frame`, or built by hand).
        measurements: ``{variant: measurement}`` for Params/FLOPs missing from ``runs`` and for notes
            on uncounted operators and failed measurements.
        problems: lines about runs that could not be read, kept for the report.
        include_stale: count ``stale`` runs (config changed since they ran) as if done.
        released: checkpoints evaluated by ``ablate eval`` (:func:`ablate.evaluate.read_evaluations`)
            for ``Results.released``; evaluations of another profile or of unknown variants are a ValueError.
    """
    study = _study(study)
    spec = study.profile(profile)
    given, runs = runs, _checked_runs(runs, profile)
    measurements = dict(measurements or {})
    counted = runs[runs["status"].isin(["done", "stale"] if include_stale else ["done"])]
    names = pd.Index(list(study.variants), name="variant")

    variants = pd.DataFrame({"label": [study.variant(name).label for name in names],
                             "is_baseline": names == study.baseline}, index=names)
    variants = variants.join(_run_counts(runs, counted, names))
    for cols in MIOU.values():
        variants = variants.join(_miou_stats(counted, cols, names, study.baseline))
    compared = MIOU[study.compare_miou]
    variants["paper_miou"] = _paper(study, names, "mIoU")
    variants["miou_vs_paper"] = variants[compared.mean] - variants["paper_miou"]
    variants["verdict"] = [verdict(d, s, n) for d, s, n in
                           variants[["miou_vs_paper", compared.std, compared.n]].itertuples(index=False)]
    for cost in (PARAMS, FLOPS):
        variants = variants.join(_cost_stats(study, runs, measurements, names, cost))
    variants = variants[list(VARIANT_COLUMNS)]
    fit = fx.Fit(counted, compared.run, list(names))
    effects = fx.effects_frame(study, fit) if study.factors else _no_effects()
    claims = fx.claims_frame(study, fit)

    comparable = spec.data != "synthetic" and not spec.overrides
    return Results(
        study=study.name, title=study.title, profile=profile,
        profile_label=profile_label(study, profile, runs, comparable), comparable=comparable,
        include_stale=include_stale, baseline=study.baseline, compare_miou=study.compare_miou,
        input_shape=tuple(study.input_shape), variants=variants, runs=given, measurements=measurements,
        conventions=conventions(study), notes=_notes(study, runs, variants, measurements, include_stale) + _fit_notes(
            study, fit, counted, pd.concat([effects, claims])), problems=list(problems or []), effects=effects,
        claims=claims,
        seed_noise={"std": fit.seed_std, "df": fit.df, "mIoU": study.compare_miou},
        released=_released(study, profile, variants, released or []),
    )


def _released(study: Study, profile: str, variants: pd.DataFrame, records: list[CheckpointEval]) -> pd.DataFrame:
    """One row per evaluated checkpoint, in study order, beside our trained mIoU and the paper's."""
    foreign = [f"{r.profile}/{r.variant}" for r in records if r.profile != profile or r.variant not in variants.index]
    if foreign:
        raise ValueError(f"evaluations of {', '.join(foreign)} given for profile `{profile}` of `{study.name}`")
    order = list(variants.index)
    rows = []
    for r in sorted(records, key=lambda r: (order.index(r.variant), r.evaluated_at or "")):
        trained, paper = variants.at[r.variant, MIOU[study.compare_miou].mean], variants.at[r.variant, "paper_miou"]
        rows.append({
            "variant": r.variant, "label": variants.at[r.variant, "label"],
            "checkpoint": Path(r.source.split("?")[0]).name, "format": r.format,
            "miou": r.miou, "aacc": r.aacc, "macc": r.macc, "trained_miou": trained,
            "miou_vs_trained": r.miou - trained, "paper_miou": paper, "miou_vs_paper": r.miou - paper,
            "sha256": r.sha256, "source": r.source, "data_root": r.data_root, "images": r.images,
            "evaluated_at": r.evaluated_at,
        })
    frame = pd.DataFrame(rows, columns=list(RELEASED_COLUMNS))
    return frame.astype(dict.fromkeys(("miou", "aacc", "macc", "trained_miou", "miou_vs_trained", "paper_miou",
                                       "miou_vs_paper"), float))


def _checked_runs(runs: pd.DataFrame, profile: str) -> pd.DataFrame:
    """A copy of ``runs`` with float numbers and int seeds; ValueError for what cannot be summarized."""
    missing = [c for c in REQUIRED_RUN_COLUMNS if c not in runs.columns]
    if missing:
        raise ValueError(f"the runs frame has no column {', '.join(missing)}")
    unknown = set(runs["status"]) - set(STATUS_COUNTS)
    if unknown:
        raise ValueError(f"unknown run status {', '.join(sorted(unknown))}; known: {', '.join(STATUS_COUNTS)}")
    profiles = set(runs["profile"])
    if profiles - {profile}:
        raise ValueError(f"runs of profiles {sorted(profiles)} given for profile `{profile}`")
    twice = runs[runs.duplicated(["variant", "seed"])]
    if len(twice):
        listed = ", ".join(f"{v}/seed{s}" for v, s in twice[["variant", "seed"]].itertuples(index=False))
        raise ValueError(f"runs listed twice: {listed}")
    return runs.astype({"seed": int, **dict.fromkeys(_RUN_NUMBERS, float)})


def _run_counts(runs: pd.DataFrame, counted: pd.DataFrame, names: pd.Index) -> pd.DataFrame:
    """Per variant: its runs per status, their total, the status in words, and the counted seeds."""
    counts = (pd.crosstab(runs["variant"], runs["status"])
              .reindex(index=names, columns=list(STATUS_COUNTS), fill_value=0))
    out = counts.set_axis(list(STATUS_COUNTS.values()), axis=1)
    out["status"] = [_status(row) for row in counts.to_dict("records")]
    out["runs"] = counts.sum(axis=1)
    seeds = counted.groupby("variant")["seed"].agg(lambda s: sorted(int(x) for x in s))
    out["seeds_done"] = [seeds.get(name, []) for name in names]
    return out


def _miou_stats(counted: pd.DataFrame, cols: MiouColumns, names: pd.Index, base: str) -> pd.DataFrame:
    """mean, std (ddof=1), n, delta to the baseline's mean and the paired t-test, one row per variant."""
    scores = counted.dropna(subset=[cols.run])
    stats = (scores.groupby("variant")[cols.run]
             .agg([statistics.fmean, _stdev, "count"])  # fmean/stdev: exactly rounded, as a hand check
             .set_axis([cols.mean, cols.std, cols.n], axis=1)
             .reindex(names))
    stats[cols.n] = stats[cols.n].fillna(0).astype(int)
    stats[cols.delta] = (stats[cols.mean] - stats.at[base, cols.mean]).where(names != base)
    by_seed = scores.pivot(index="seed", columns="variant", values=cols.run)  # seeds ascending
    paired = [_paired(by_seed, name, base) for name in names]
    stats[cols.p] = pd.Series([p for _, p in paired], index=names, dtype=float)  # None (no test) -> NaN
    stats[cols.paired_n] = [n for n, _ in paired]
    return stats


def _paired(by_seed: pd.DataFrame, name: str, base: str) -> tuple[int, float | None]:
    """The seeds both ``name`` and the baseline have a score for, and the paired test over them."""
    if name == base or name not in by_seed or base not in by_seed:
        return 0, None
    pairs = by_seed[[name, base]].dropna()
    return len(pairs), paired_p(pairs[name].tolist(), pairs[base].tolist())


def _cost_stats(study: Study, runs: pd.DataFrame, measurements: dict, names: pd.Index,
                cost: CostColumns) -> pd.DataFrame:
    """Params or FLOPs per variant, ours and the paper's, each with its delta to its baseline."""
    # the same model for every seed: any run's number will do, else the variant's measurement
    ours = runs.groupby("variant")[cost.ours].first().reindex(names)
    measured = pd.Series([_number((measurements.get(name) or {}).get(cost.ours)) for name in names],
                         index=names, dtype=float)
    out = pd.DataFrame({cost.ours: ours.fillna(measured), cost.paper: _paper(study, names, cost.paper_key)})
    out[cost.delta] = out[cost.ours] - out.at[study.baseline, cost.ours]
    out[cost.paper_delta] = out[cost.paper] - out.at[study.baseline, cost.paper]
    out[cost.vs_paper] = out[cost.ours] - out[cost.paper]
    return out


def _stdev(values: pd.Series) -> float:
    return statistics.stdev(values) if len(values) >= 2 else math.nan


def _paper(study: Study, names: pd.Index, key: str) -> pd.Series:
    """The paper's ``key`` per variant, NaN where the study gives none."""
    return pd.Series([study.variant(name).paper.get(key) for name in names], index=names, dtype=float)


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
    None or NaN ``diff``: no verdict (None).
    """
    if _missing(diff):
        return None
    if n >= 2 and not _missing(std) and abs(diff) <= 2 * std:
        return "within noise"
    signed = _signed(diff)
    return signed if n >= 2 else f"{signed} (n={n})"


def _signed(value: float) -> str:
    text = f"{value:+.2f}"
    return "+0.00" if text == "-0.00" else text


def profile_label(study: Study, profile: str, runs: pd.DataFrame, comparable: bool) -> str:
    """``"smoke profile: synthetic data, 40 iterations — not comparable to the paper's numbers"``."""
    spec = study.profile(profile)
    parts = ["synthetic data" if spec.data == "synthetic" else "real data"]
    iters = spec.overrides.get("train_cfg.max_iters")
    if iters is None and runs["max_iters"].notna().any():  # not set by the profile: the runs' longest
        iters = int(runs["max_iters"].max())
    if iters is not None:
        parts.append(f"{iters} iterations")
    tail = "the paper's schedule" if comparable else "not comparable to the paper's numbers"
    return f"{profile} profile: {', '.join(parts)} \u2014 {tail}"


def conventions(study: Study) -> dict[str, str]:
    """What each number means; every report format prints these (about the paper only when it has numbers)."""
    shape = "x".join(str(s) for s in study.input_shape)
    paper = any(v.paper for v in study.variants.values())
    out = {
        "mIoU": ("percent, mmseg IoUMetric on the validation split; `best` is the best evaluation of a run, "
                 f"`last` its last; comparisons with the baseline{' and the paper' if paper else ''} use "
                 f"`{study.compare_miou}`"),
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
    if not paper:
        del out["paper FLOPs"], out["paper"]
        out["statistics"] = out["statistics"][:out["statistics"].index("; `within noise`")]
    if study.factors or study.claims:
        out.update(_evidence_conventions(study))
    return out


def _evidence_conventions(study: Study) -> dict[str, str]:
    """How effects, intervals and verdicts are defined, in the study's own names."""
    out = {}
    base = study.variant(study.baseline)
    if study.factors:
        terms = factorial_terms(study.factors, study.cells())
        main = next(t for t in terms if len(t.levels) == 1)
        example = f"`{main.name}` = {main.contrast.text()}"
        pair = next((t for t in terms if len(t.levels) == 2), None)
        if pair is not None:
            example += f"; `{pair.name}` = {pair.contrast.text()}"
        out["effects"] = (
            f"treatment coding from the baseline `{base.name}` ("
            + ", ".join(f"{f.name} {f.reference}" for f in study.factors.values())
            + "): a factor's effect is the difference its level makes with every other factor at the "
            "baseline's level (a simple effect, as each row of an ablation table adds one change to the "
            "baseline), an interaction the difference of those differences: " + example + ". These are the "
            "OLS coefficients of the factorial model in treatment coding; the main effect averaged over the "
            "other factors' levels is not shown (for 2x2: the effect plus half the interaction)"
            + ("; paper: the same contrast of the paper's mIoU" if any(v.paper for v in study.variants.values())
               else ""))
    out["intervals"] = (
        f"95 % confidence intervals over seeds from one OLS fit of the {study.compare_miou} mIoU on the variant "
        "with the seed as a block (one noise level for every variant): estimate ± t(0.975, df) · se; "
        "n: the fewest seeds of a variant in the contrast; under 2 leaves the interval unknown")
    if study.claims:
        out["claims"] = (
            "supported: the 95 % interval of the difference lies on the claimed side of 0; contradicted: on "
            "the other side; inconclusive: it contains 0, or a compared variant has fewer than 2 seeds (never "
            "a verdict from one run); several comparisons: supported if all are, contradicted if one is; "
            "no correction for the number of claims")
    return out


def _fit_notes(study: Study, fit, counted: pd.DataFrame, estimates: pd.DataFrame) -> list[str]:
    """What the seeds allow: the noise they show and whether it hides the paper's differences, or that
    one seed shows none. ``estimates``: the effects and claims rows (``ci_low``, ``ci_high``, ``paper``)."""
    if not (study.factors or study.claims) or counted.empty:
        return []
    if fit.df <= 0:
        return ["one seed per variant: effects have no interval and claims no verdict; "
                "`ablate plan --power` says how many seeds the paper's differences need"]
    note = (f"seed noise: residual std {fit.seed_std:.2f} mIoU over seeds ({fit.df} df; each seed's shift "
            "common to all variants removed)")
    half = ((estimates["ci_high"] - estimates["ci_low"]) / 2).min()
    paper = estimates["paper"].abs().max()
    if not (pd.isna(half) or pd.isna(paper)) and half > paper:
        note += (f"; the narrowest 95 % interval is ±{half:.2f}, wider than every difference the paper "
                 f"reports (at most {paper:.2f}): at these seeds, noise hides them")
    return [note + "; `ablate plan --power` turns it into the seeds each difference needs"]


def _no_effects() -> pd.DataFrame:
    return pd.DataFrame(columns=list(fx.EFFECT_COLUMNS)).rename_axis("term")


def _notes(study: Study, runs: pd.DataFrame, variants: pd.DataFrame, measurements: dict,
           include_stale: bool) -> list[str]:
    """Lines about runs that are not done and about measurements that are missing or incomplete."""
    notes = []
    for row in runs.itertuples(index=False):
        run = f"run `{row.variant}/seed{row.seed}`"
        if row.status == "failed":
            notes.append(f"{run} failed: {row.error}")
        elif row.status == "stale":
            counted = "counted (include_stale)" if include_stale else "left out of the statistics"
            notes.append(f"{run} is stale: its config changed since it ran; {counted}")
        elif row.status != "done":
            notes.append(f"{run} is {row.status}")
    schedules = runs.loc[runs["status"].isin(["done", "stale"]), "max_iters"].dropna().value_counts().sort_index()
    if len(schedules) > 1:  # `ablate run --set train_cfg.max_iters=...` on some runs
        notes.append("runs trained for different numbers of iterations: "
                     + ", ".join(f"{int(iters)} ({count} runs)" for iters, count in schedules.items()))
    for name in study.variants:
        found = measurements.get(name) or {}
        if "error" in found:
            notes.append(f"Params/FLOPs of `{name}` not measured: {found['error']}")
        uncounted = found.get("uncounted") or {}
        if uncounted:
            ops = ", ".join(f"{op} x{count}" for op, count in sorted(uncounted.items()))
            notes.append(f"FLOPs of `{name}` leave out operators that carry compute: {ops} "
                         "(see `ablate measure --audit`)")
    missing = [name for name in variants.index[variants[FLOPS.ours].isna()]
               if "error" not in (measurements.get(name) or {})]
    if missing:
        notes.append("Params/FLOPs not measured for " + ", ".join(f"`{v}`" for v in missing)
                     + " (run `ablate report` without --no-measure, on a machine with torch and mmseg)")
    return notes


def _status(counts: dict[str, int]) -> str:
    total = sum(counts.values())
    if total == 0:
        return "no runs"
    for status in STATUS_COUNTS:
        if counts[status] == total:
            return status
    return ", ".join(f"{counts[s]} {s}" for s in STATUS_COUNTS if counts[s])


def _study(study: Study | str | os.PathLike) -> Study:
    return study if isinstance(study, Study) else load_study(str(study))


def _number(value) -> float | None:
    """A measurement's number, or None (missing, a bool, or not a number)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _missing(value) -> bool:
    """None or NaN: no number."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _plain(value):
    """JSON-ready: NaN -> None, numpy scalars -> Python, containers recursively."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
