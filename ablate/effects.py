"""Effects and claims: estimates with 95 % intervals over seeds, and the seeds a difference needs.

Reads a runs frame (one row per counted run: ``variant``, ``seed`` and an mIoU column) and the
study's contrasts (:mod:`ablate.contrasts`: which differences of variant means each effect and
claim is). Writes nothing; :mod:`ablate.results` puts the frames into every report.

The model is an OLS fit of mIoU on the variant, with the seed as a block::

    mIoU(variant v, seed s) = mean_v + block_s + noise,   noise ~ N(0, seed_std^2), independent

A seed gives every variant the same data order and the same initial weights where they share
modules, so the block takes out what a seed does to all variants alike (with one variant per seed,
as in a randomized complete block design). Every effect and claim is a contrast ``sum w_v mean_v``
of the fitted means; its standard error comes from the residual variance, which pools every
variant (an assumption: the same noise in each), with ``runs - variants - seeds + 1`` degrees of
freedom when every seed ran every variant. The 95 % interval is ``estimate +- t(0.975, df) * se``.
With one seed there is no residual: the estimate stands, its interval is unknown (NaN); so it is
when a variant the contrast weighs has a single run (the pooled noise would give it a number, but
a difference resting on one run of a variant is not resolved by seeds).

A comparison of a claim (``a > b``) is ``supported`` when its interval lies above 0 (below, for
``<``), ``contradicted`` when it lies on the other side, and ``inconclusive`` otherwise, also
when it has no interval: a verdict never rests on a single run.
A claim of several comparisons (``and``) is supported when every one is, contradicted when one is.
No correction is made for the number of claims.

:func:`seeds_needed` answers ``ablate plan --power``: the fewest seeds per variant for which the
interval of a contrast excludes 0 on the side of a true difference with probability 0.8, given
the seed std: the noncentral t distribution with ``(variants - 1)(seeds - 1)`` degrees of freedom.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ablate.contrasts import Contrast, comparison_contrast, factorial_terms

ALPHA = 0.05  # two-sided: 95 % intervals
POWER = 0.8  # the chance ``ablate plan --power`` asks a true difference to be found with
MOST_SEEDS = 100_000  # beyond this, "more than" is the answer
# Columns of Results.effects (indexed by term) and of Results.claims (one row per comparison).
EFFECT_COLUMNS = ("contrast", "estimate", "se", "df", "ci_low", "ci_high", "n", "paper")
CLAIM_COLUMNS = ("claim", "test", "comparison", "contrast", "estimate", "se", "df", "ci_low", "ci_high", "n",
                 "paper", "verdict", "claim_verdict")
VERDICTS = ("supported", "contradicted", "inconclusive")


@dataclass(frozen=True)
class Estimate:
    """A contrast estimated from runs; NaN where the runs do not give the number."""

    estimate: float  # NaN: a variant it weighs has no run (or the seeds do not connect it)
    se: float  # NaN: no residual to estimate the noise from (one seed)
    df: int  # residual degrees of freedom of the fit
    ci_low: float
    ci_high: float
    n: int  # the fewest seeds of any variant the contrast weighs


class Fit:
    """OLS fit of one mIoU column on variant and seed (a block), from a profile's counted runs.

    Args:
        runs: one row per counted run with ``variant``, ``seed`` and ``column``; rows without a
            number in ``column`` and of other variants are left out.
        column: the runs frame's mIoU column (``miou_best`` or ``miou_last``).
        variants: every variant of the study, in study order (those without runs too).
    """

    def __init__(self, runs: pd.DataFrame, column: str, variants: list[str]):
        scores = runs[runs["variant"].isin(variants)].dropna(subset=[column])
        self.variants = list(variants)
        self.n = {v: int(c) for v, c in scores["variant"].value_counts().reindex(variants, fill_value=0).items()}
        seeds = sorted(int(s) for s in scores["seed"].unique())
        x = np.zeros((len(scores), len(variants) + max(len(seeds) - 1, 0)))
        for row, (variant, seed) in enumerate(zip(scores["variant"], scores["seed"])):
            x[row, variants.index(variant)] = 1.0
            if int(seed) != seeds[0]:  # the first seed's block is the reference: 0
                x[row, len(variants) + seeds.index(int(seed)) - 1] = 1.0
        y = scores[column].to_numpy(dtype=float)
        pinv = np.linalg.pinv(x) if len(y) else np.zeros((x.shape[1], 0))
        self._beta = pinv @ y
        self._row_space = pinv @ x  # projects onto what the runs can estimate
        self._unscaled = np.linalg.pinv(x.T @ x)
        rank = int(np.linalg.matrix_rank(x)) if len(y) else 0
        self.df = len(y) - rank
        residual = y - x @ self._beta
        self.seed_std = math.sqrt(float(residual @ residual) / self.df) if self.df > 0 else math.nan

    def estimate(self, contrast: Contrast) -> Estimate:
        """The contrast of the fitted variant means, with its 95 % interval."""
        w = np.zeros(self._beta.shape[0])
        for name, weight in contrast.weights:
            w[self.variants.index(name)] = weight
        n = min(self.n[name] for name, _ in contrast.weights)
        if n == 0 or not np.allclose(self._row_space @ w, w, atol=1e-9):
            return Estimate(math.nan, math.nan, self.df, math.nan, math.nan, n)
        value = float(w @ self._beta) + contrast.constant
        if self.df <= 0 or n < 2:  # never an interval that rests on one run of a variant
            return Estimate(value, math.nan, self.df, math.nan, math.nan, n)
        from scipy import stats  # lazy: scipy.stats takes a second to import, needed with 2+ seeds

        se = self.seed_std * math.sqrt(float(w @ self._unscaled @ w))
        half = float(stats.t.ppf(1 - ALPHA / 2, self.df)) * se
        return Estimate(value, se, self.df, value - half, value + half, n)


def effects_frame(study, fit: Fit) -> pd.DataFrame:
    """Every effect of the study's factors (:func:`ablate.contrasts.factorial_terms`), indexed by term.

    Columns :data:`EFFECT_COLUMNS`: the contrast in words, the estimate with its standard error,
    degrees of freedom and 95 % interval, n, and the paper's implied value (NaN without paper mIoU).
    """
    paper = _paper(study)
    rows = {}
    for term in factorial_terms(study.factors, study.cells()):
        rows[term.name] = _row(term.contrast, fit.estimate(term.contrast), paper)
    return pd.DataFrame.from_dict(rows, orient="index", columns=list(EFFECT_COLUMNS)).rename_axis("term")


def claims_frame(study, fit: Fit) -> pd.DataFrame:
    """One row per comparison of every claim, columns :data:`CLAIM_COLUMNS`, in the study's order."""
    paper, rows = _paper(study), []
    for claim in study.claims:
        parts = []
        for part in claim.parts:
            contrast = comparison_contrast(part, study.factors, study.cells(), list(study.variants))
            found = fit.estimate(contrast)
            parts.append({"claim": claim.text, "test": claim.test, "comparison": part.text,
                          **_row(contrast, found, paper), "verdict": verdict(part.op, found)})
        overall = claim_verdict([p["verdict"] for p in parts])
        rows.extend({**p, "claim_verdict": overall} for p in parts)
    return pd.DataFrame(rows, columns=list(CLAIM_COLUMNS))


def verdict(op: str, found: Estimate) -> str:
    """``supported`` / ``contradicted`` / ``inconclusive`` for ``lhs op rhs`` from the interval of lhs - rhs."""
    if math.isnan(found.ci_low):
        return "inconclusive"
    above, below = found.ci_low > 0, found.ci_high < 0
    if (above and op == ">") or (below and op == "<"):
        return "supported"
    if above or below:
        return "contradicted"
    return "inconclusive"


def claim_verdict(verdicts: list[str]) -> str:
    """A claim of several comparisons: supported if all are, contradicted if one is, else inconclusive."""
    if verdicts and all(v == "supported" for v in verdicts):
        return "supported"
    return "contradicted" if "contradicted" in verdicts else "inconclusive"


def power(seeds: int, difference: float, seed_std: float, sum_squares: float, variants: int) -> float:
    """The chance that the 95 % interval of a contrast lies on the side of a true ``difference``.

    Args:
        seeds: seeds per variant.
        difference: the true value of the contrast (mIoU).
        seed_std: the noise of one run (mIoU).
        sum_squares: the contrast's sum of squared weights (2 for ``a - b``, 4 for a 2x2 interaction).
        variants: variants in the fit (they set the residual degrees of freedom).
    """
    from scipy import stats  # lazy, as above

    df = (variants - 1) * (seeds - 1)
    shift = abs(difference) / (seed_std * math.sqrt(sum_squares / seeds))
    return float(stats.nct.sf(stats.t.ppf(1 - ALPHA / 2, df), df, shift))


def seeds_needed(difference: float, seed_std: float, sum_squares: float, variants: int,
                 target: float = POWER) -> int | None:
    """The fewest seeds per variant (2 or more) with :func:`power` at least ``target``; None beyond
    :data:`MOST_SEEDS` or for a difference of 0."""
    if difference == 0 or variants < 2:
        return None

    def enough(n: int) -> bool:
        return power(n, difference, seed_std, sum_squares, variants) >= target

    high = 2
    while not enough(high):  # power grows with the seeds: double, then bisect
        if high >= MOST_SEEDS:
            return None
        high = min(2 * high, MOST_SEEDS)
    low = high // 2 if high > 2 else 1
    while high - low > 1:  # enough(high), not enough(low) (or low = 1, below the least)
        middle = (low + high) // 2
        low, high = (low, middle) if enough(middle) else (middle, high)
    return high


def _paper(study) -> dict[str, float | None]:
    return {name: v.paper.get("mIoU") for name, v in study.variants.items()}


def _row(contrast: Contrast, found: Estimate, paper: dict) -> dict:
    implied = contrast.of(paper)
    return {"contrast": contrast.text(), "estimate": found.estimate, "se": found.se, "df": found.df,
            "ci_low": found.ci_low, "ci_high": found.ci_high, "n": found.n,
            "paper": math.nan if implied is None else round(implied, 6)}  # the paper prints 2 decimals: no float noise
