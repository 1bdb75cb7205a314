"""Collect: run folders -> one row per run, with its status and numbers.

Reads, for every run of ``study.runs(profile)``, the files a run leaves in its work_dir
(``result.json``, ``lock``, ``failed.json``, ``progress.json``, checkpoints; see CONTRACTS.md) and,
unless told not to, each variant's Params and FLOPs from :mod:`ablate.measure` (cached by model
hash). Writes nothing but the measurement cache.

A run's status is the first that applies:

- ``done``: it has a ``result.json`` (written last, atomically: the run finished and evaluated);
- ``running``: its ``lock`` is held by a live process (read and judged by :mod:`ablate.launch.lock`,
  as ``ablate run`` does: a pid on this host must run, one on another host must keep the lock's
  heartbeat fresh);
- ``failed``: it has a ``failed.json``;
- ``pending``: nothing, or checkpoints only (the next ``ablate run`` resumes it).

A ``result.json`` that cannot be read is not guessed at: its run is left out of the rows and a
one-line problem naming the file is reported instead (see :func:`collect`).
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ablate.errors import AblateError, ReportError
from ablate.io import read_json
from ablate.launch import rundir
from ablate.launch.lock import live_holder
from ablate.study import Run, Study

STATUSES = ("done", "running", "failed", "pending")
ROW_KEYS = (
    "study", "profile", "variant", "seed", "status", "work_dir", "miou_best", "miou_last", "aacc",
    "iterations", "max_iters", "wall_time_s", "params_m", "gmacs", "error",
)
MeasureFn = Callable[[Any, tuple, Path], dict]  # measure_cached(cfg, input_shape, cache_dir)


def collect(
    study: Study,
    profile: str,
    work_root: str | os.PathLike | None = None,
    measure: bool | Mapping[str, dict] = True,
    problems: list[str] | None = None,
) -> list[dict]:
    """One row per run of ``profile``, in ``study.runs`` order, with the keys of :data:`ROW_KEYS`.

    Args:
        study: the loaded study.
        profile: a profile name of the study.
        work_root: root of the run folders; default ``$ABLATE_WORK_DIR`` or ``work_dirs``.
        measure: True measures each variant (needs torch and mmseg; cached), False leaves
            ``params_m``/``gmacs`` None, and a mapping ``{variant: measurement}`` uses those numbers
            (what :func:`measure_variants` returns; tests inject them this way).
        problems: a list that receives one line per unreadable ``result.json``; those runs are left
            out of the rows. Without it, unreadable files raise one :class:`ReportError` naming all.
    """
    rows, found = [], []
    for run in study.runs(profile, work_root=work_root):
        row = read_run(run, found)
        if row is not None:
            rows.append(row)
    if found and problems is None:
        raise ReportError("\n".join(found))
    if problems is not None:
        problems.extend(found)
    if measure is True:
        measure = measure_variants(study, profile, work_root)
    if measure:
        add_measurements(rows, measure)
    return rows


def read_run(run: Run, problems: list[str]) -> dict | None:
    """The row of one run, or None (and a line in ``problems``) when its result.json is corrupt."""
    work_dir = run.work_dir
    row: dict[str, Any] = dict.fromkeys(ROW_KEYS)
    row.update(study=run.study, profile=run.profile, variant=run.variant, seed=run.seed,
               work_dir=str(work_dir))
    result_path = work_dir / "result.json"
    if result_path.is_file():
        try:
            result = _checked_result(read_json(result_path))
        except (ValueError, OSError) as exc:
            problems.append(f"{result_path}: unreadable result.json ({_one_line(exc)}); "
                            f"run {run.key} left out")
            return None
        row.update(status="done", miou_best=result["miou_best"], miou_last=result["miou_last"],
                   aacc=_number(result.get("aacc_last")), iterations=_int(result.get("iterations")),
                   max_iters=_int(result.get("max_iters")), wall_time_s=_number(result.get("wall_time_s")))
        return row

    progress = rundir.read(work_dir, rundir.PROGRESS)  # rewritten often; a torn read is not an error
    row["iterations"] = _int(progress.get("iteration")) if progress else None
    row["max_iters"] = _int(progress.get("max_iters")) if progress else None
    if row["iterations"] is None:
        checkpoint = rundir.latest_checkpoint(work_dir)  # complete ones only, as a resume would use
        row["iterations"] = checkpoint[1] if checkpoint else None
    if live_holder(work_dir) is not None:
        row["status"] = "running"
    elif (work_dir / rundir.FAILED).is_file():
        failed = rundir.read(work_dir, rundir.FAILED)
        row["status"] = "failed"
        row["error"] = str(failed.get("error") or "no error message") if failed else "unreadable failed.json"
    else:
        row["status"] = "pending"
    return row


def _checked_result(result) -> dict:
    """``result`` when it is a result.json object with both mIoU numbers, else ValueError."""
    if not isinstance(result, dict):
        raise ValueError("not a JSON object")
    for key in ("miou_best", "miou_last"):
        if _number(result.get(key)) is None:
            raise ValueError(f"`{key}` is {result.get(key)!r}, not a number")
    return result


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
        work_root: root of the run folders; the cache lives in ``<work_root>/.measure``.
        measure_fn: ``measure_cached(cfg, input_shape, cache_dir)``; default :mod:`ablate.measure`'s.
        cache_dir: where measurements are cached by model hash; default ``<work_root>/.measure``.
    """
    if measure_fn is None:
        try:
            from ablate.measure import measure_cached  # lazy: imports torch and mmseg
        except ImportError as exc:
            return {name: {"error": f"cannot measure here: {_one_line(exc)}"} for name in study.variants}
        measure_fn = measure_cached
    from ablate import configs  # lazy: mmengine

    runs = study.runs(profile, work_root=work_root)
    cache = Path(cache_dir) if cache_dir is not None else runs[0].work_dir.parents[3] / ".measure"
    measurements = {}
    for run in runs:
        if run.variant in measurements:
            continue
        try:
            cfg = configs.resolve(study, run)
            measurements[run.variant] = dict(measure_fn(cfg, tuple(study.input_shape), cache))
        except (ImportError, AblateError) as exc:
            measurements[run.variant] = {"error": _one_line(exc)}
    return measurements


def add_measurements(rows: list[dict], measurements: Mapping[str, dict]) -> None:
    """Fill ``params_m`` and ``gmacs`` of each row from its variant's measurement (in place)."""
    for row in rows:
        found = measurements.get(row["variant"]) or {}
        row["params_m"] = _number(found.get("params_m"))
        row["gmacs"] = _number(found.get("gmacs"))


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _int(value) -> int | None:
    number = _number(value)
    return int(number) if number is not None else None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
