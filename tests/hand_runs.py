"""Runs frames built by hand in the shape of :func:`ablate.collect.collect`'s, for the results and report tests.

The tests of aggregation and rendering then need no run folders and do not depend on how collect
reads them: each number in a frame is one the test wrote down.
"""
import math

import pandas as pd

# mIoU = mean + seed shift (0, 1, 2) + a residual that sums to 0 over every variant and every seed:
# baseline 40 (+1 -1 0), dwt 44 (-1 +1 0), attention 40.5, dwt_attention 41.2; cell means are those + 1.
KNOWN = {  # Table 2's four variants x seeds 0, 1, 2; tests/test_effects.py works out its effects by hand
    "baseline": {0: 41.0, 1: 40.0, 2: 42.0},
    "dwt": {0: 43.0, 1: 46.0, 2: 46.0},
    "attention": {0: 40.5, 1: 41.5, 2: 42.5},
    "dwt_attention": {0: 41.2, 1: 42.2, 2: 43.2},
}

# collect's runs frame: these columns, in this order
COLUMNS = ("study", "profile", "variant", "seed", "status", "work_dir", "miou_best", "miou_last", "aacc",
           "iterations", "max_iters", "wall_time_s", "train_time_s", "params_m", "gmacs", "error")


def runs_frame(study, best, profile="smoke", last_offset=1.0, measured=None, failed=None, status=None):
    """One row per run of ``study.runs(profile)``, in that order, as collect would return it.

    Args:
        study: the loaded study (its variants and seeds give the rows).
        best: ``{variant: {seed: mIoU (best)}}``; a run with a number is ``done`` and its last mIoU is
            ``best - last_offset``; a run without one is ``pending``.
        profile: the profile of every row.
        last_offset: how much lower the last evaluation is than the best.
        measured: ``{variant: measurement}``; ``params_m`` and ``gmacs`` fill that variant's rows, as
            collect fills them from ablate.measure.
        failed: ``{(variant, seed): error}``: those runs failed with that message.
        status: ``{(variant, seed): status}``: overrides the status (a stale run keeps its numbers).
    """
    measured, failed, status = measured or {}, failed or {}, status or {}
    rows = []
    for run in study.runs(profile, work_root="work_dirs"):
        key = (run.variant, run.seed)
        value = best.get(run.variant, {}).get(run.seed)
        done = value is not None
        found = measured.get(run.variant) or {}
        rows.append({
            "study": study.name, "profile": profile, "variant": run.variant, "seed": run.seed,
            "status": status.get(key, "failed" if key in failed else "done" if done else "pending"),
            "work_dir": str(run.work_dir),
            "miou_best": value if done else math.nan, "miou_last": value - last_offset if done else math.nan,
            "aacc": 70.0 if done else math.nan, "iterations": 40.0 if done else math.nan,
            "max_iters": 40.0 if done else math.nan, "wall_time_s": 10.0 if done else math.nan,
            "train_time_s": 9.0 if done else math.nan,
            "params_m": found.get("params_m", math.nan), "gmacs": found.get("gmacs", math.nan),
            "error": failed.get(key),
        })
    return pd.DataFrame(rows, columns=list(COLUMNS))


def empty_runs():
    """A runs frame with collect's columns and no rows (a profile nothing has run under)."""
    return pd.DataFrame(columns=list(COLUMNS))
