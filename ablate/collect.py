"""Collect: a profile's run folders -> one row per run, with its status and numbers.

Reads every run of ``study.runs(profile)`` through :func:`ablate.runs.read_state` (the status
rules live there) and, unless told not to, each variant's Params and FLOPs from
:mod:`ablate.measure` (cached by model hash in the work root). Writes nothing but that cache.

Runs whose config differs from the one the study resolves now are ``stale``: the config of each
run is resolved with the data root its ``run.json`` records, and its run key compared with the
one the run trained with (``--set`` overrides recorded in ``run.json`` included). Files that cannot be read are named in :attr:`Collection.problems`;
their runs keep a row, with what the other files say.

The rows (:data:`RUN_COLUMNS`), one per run in study order: ``study``, ``profile``, ``variant``,
``seed``, ``status`` (a :class:`~ablate.runs.RunStatus` value), ``work_dir``; ``miou_best``,
``miou_last``, ``aacc`` (percent; of the evaluations so far for unfinished runs); ``iterations``,
``max_iters``; ``wall_time_s``, ``train_time_s``; ``params_m``, ``gmacs`` (the variant's model);
``error`` (why a failed run failed).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ablate.display import duration
from ablate.errors import AblateError
from ablate.runs import RunInfo, RunState, RunStatus, WorkRoot, read_state
from ablate.runs.state import JobStateFn
from ablate.study import Study

RUN_COLUMNS = (
    "study", "profile", "variant", "seed", "status", "work_dir", "miou_best", "miou_last", "aacc",
    "iterations", "max_iters", "wall_time_s", "train_time_s", "params_m", "gmacs", "error",
)
MeasureFn = Callable[[Any, tuple, Path], dict]  # measure_cached(cfg, input_shape, cache_dir)


@dataclass
class Collection:
    """What :func:`collect` found: the runs frame, their states, measurements and unreadable files."""

    runs: Any  # pandas.DataFrame with RUN_COLUMNS, one row per run
    states: list[RunState]
    measurements: dict[str, dict] = field(default_factory=dict)  # variant -> measure_cached(...) or {"error"}
    problems: list[str] = field(default_factory=list)  # one line per unreadable file


def states(study: Study, profile: str, work_root: str | os.PathLike | None = None,
           job_state: JobStateFn | None = None, judge_stale: bool = True) -> list[RunState]:
    """The state of every run of ``profile``, in ``study.runs`` order.

    Args:
        study: the loaded study.
        profile: a profile name of the study.
        work_root: root of the run folders; default ``$ABLATE_WORK_DIR`` or ``work_dirs``.
        job_state: asks schedulers about detached jobs (``ablate.launch.job_state``); None asks none.
        judge_stale: resolve each run's config to tell ``stale`` runs (needs mmengine).
    """
    expected = _expected_key(study) if judge_stale else None
    return [read_state(run, expected, job_state) for run in study.runs(profile, work_root=work_root)]


def _expected_key(study: Study):
    from ablate import configs  # lazy: mmengine

    def key(run, info: RunInfo | None) -> str | None:
        if info is None or info.data_root is None:
            return None  # the data root it trained on is unknown, so is the config it should have
        # its processes shared the total batch: the config it should have is the one for as many
        return configs.run_key(configs.resolve(study, run, data_root=info.data_root, sets=info.sets,
                                               processes=info.world_size))

    return key


def collect(
    study: Study,
    profile: str,
    work_root: str | os.PathLike | None = None,
    measure: bool | Mapping[str, dict] = True,
    job_state: JobStateFn | None = None,
) -> Collection:
    """One row per run of ``profile`` (see the module doc), with the variants' measurements.

    Args:
        study: the loaded study.
        profile: a profile name of the study.
        work_root: root of the run folders; default ``$ABLATE_WORK_DIR`` or ``work_dirs``.
        measure: True measures each variant (needs torch and mmseg; cached), False leaves
            ``params_m``/``gmacs`` empty, and a mapping ``{variant: measurement}`` uses those numbers
            (what :func:`measure_variants` returns; tests inject them this way).
        job_state: see :func:`states`.
    """
    import pandas as pd

    found = states(study, profile, work_root, job_state)
    if measure is True:
        measure = measure_variants(study, profile, work_root)
    measurements = dict(measure or {})
    rows = [run_row(state, measurements.get(state.run.variant) or {}) for state in found]
    frame = pd.DataFrame(rows, columns=list(RUN_COLUMNS))
    problems = [line for state in found for line in state.problems]
    return Collection(frame, found, measurements, problems)


def with_measurements(collection: Collection, measurements: Mapping[str, dict]) -> Collection:
    """``collection`` with each run's ``params_m`` and ``gmacs`` from its variant's measurement."""
    runs = collection.runs.copy()
    for column in ("params_m", "gmacs"):
        runs[column] = [_measured(measurements.get(v) or {}, column) for v in runs["variant"]]
    return Collection(runs, collection.states, dict(measurements), collection.problems)


def run_row(state: RunState, measurement: Mapping[str, Any]) -> dict[str, Any]:
    """The row of one run: the result's numbers, or those of the evaluations so far."""
    run, result, progress = state.run, state.result, state.progress
    evaluations = state.evaluations
    last = evaluations[-1] if evaluations else None
    timing = result if result is not None else progress
    return {
        "study": run.study, "profile": run.profile, "variant": run.variant, "seed": run.seed,
        "status": state.status.value, "work_dir": str(run.work_dir),
        "miou_best": max(e.mIoU for e in evaluations) if evaluations else (result.miou_best if result else None),
        "miou_last": last.mIoU if last else (result.miou_last if result else None),
        "aacc": result.aacc_last if result is not None else (last.aAcc if last else None),
        "iterations": state.iteration, "max_iters": state.max_iters,
        "wall_time_s": timing.wall_time_s if timing is not None else None,
        "train_time_s": timing.train_time_s if timing is not None else None,
        "params_m": _measured(measurement, "params_m"), "gmacs": _measured(measurement, "gmacs"),
        "error": state.error,
    }


def describe(state: RunState) -> str:
    """A few words on where a run stands beyond its status: why it failed, when it ends, where it resumes."""
    progress = state.progress
    if state.status is RunStatus.FAILED:
        return state.error or ""
    if state.status is RunStatus.STALE:
        return "config changed since it ran: `ablate run --restart` trains it again"
    if state.job is not None and state.job.active:
        reason = f" ({state.job.reason})" if state.job.reason else ""
        return f"job {state.job.job_id} {state.job.state.lower()}{reason}"
    if state.status is RunStatus.QUEUED:
        return "waiting for a free slot"
    if state.status is RunStatus.RUNNING and progress is not None:
        return "evaluating" if progress.phase == "eval" else f"ETA {duration(progress.eta_s)}"
    if state.status is RunStatus.PENDING and state.checkpoint is not None:
        return f"resumes from iteration {state.checkpoint[1]}"
    return ""


def measure_variants(
    study: Study,
    profile: str,
    work_root: str | os.PathLike | None = None,
    measure_fn: MeasureFn | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, dict]:
    """Params and FLOPs of each variant's model at ``study.input_shape``, measured once per variant.

    The seed does not change the model, so each variant's first run is resolved and measured. A
    measurement that cannot be made here (torch or mmseg missing, a user error) becomes
    ``{"error": "..."}`` so the report says so instead of failing; other exceptions are bugs and raise.

    Args:
        study: the loaded study.
        profile: profile whose configs are resolved (its overrides may change the model).
        work_root: root of the run folders; the cache lives in its ``.measure``.
        measure_fn: ``measure_cached(cfg, input_shape, cache_dir)``; default :mod:`ablate.measure`'s.
        cache_dir: where measurements are cached by model hash; default the work root's cache.
    """
    if measure_fn is None:
        try:
            from ablate.measure import measure_cached  # lazy: imports torch and mmseg
        except ImportError as exc:
            return {name: {"error": f"cannot measure here: {_one_line(exc)}"} for name in study.variants}
        measure_fn = measure_cached
    from ablate import configs  # lazy: mmengine

    cache = Path(cache_dir) if cache_dir is not None else WorkRoot.of(work_root).measure_cache
    measurements = {}
    for run in study.runs(profile, work_root=work_root):
        if run.variant in measurements:
            continue
        try:
            cfg = configs.resolve(study, run)
            measurements[run.variant] = dict(measure_fn(cfg, tuple(study.input_shape), cache))
        except (ImportError, AblateError) as exc:
            measurements[run.variant] = {"error": _one_line(exc)}
    return measurements


def _measured(measurement: Mapping[str, Any], key: str) -> float:
    """A measured number, NaN where the measurement has none (failed, or not made)."""
    value = measurement.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else float("nan")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
