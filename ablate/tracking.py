"""Weights & Biases: every run of a study in one group, and the report's table beside them.

The only module of ablate that imports ``wandb``, and only inside the functions that talk to it:
with tracking off, ``wandb`` is never imported. Two entry points:

- ``ablate run --wandb``: :func:`run_overrides` adds a :class:`WandbBackend` (mmengine's
  ``WandbVisBackend`` with the additions below) to each run's ``visualizer.vis_backends`` before
  ``config.py`` is written, so the worker logs through mmengine's visualiser like any other
  backend (rank 0 only, as mmengine does under torchrun) and :mod:`ablate.train` stays unaware;
- ``ablate report --wandb``: :func:`log_report` logs a ``report`` job in the same group with the
  comparison as a ``wandb.Table``, a scatter of mIoU against GFLOPs and a bar chart of the mIoU
  delta against the baseline.

Names:

=========  ==========================================================================
project    the study's ``wandb.project``, default ``ablate-<study>``
entity     the study's ``wandb.entity`` (None: the account's default)
group      ``<study>/<profile>``
name       ``<variant>-seed<k>`` (job type ``train``); ``report`` (job type ``report``)
tags       the variant's switches (``use_dwt``; ``key=value`` when not ``true``) and the profile
config     ``overrides`` (the variant's dotted overrides) and the resolved config, as it ran
history    everything mmengine logs (``loss``, ``lr``, ... every logger interval; ``mIoU``,
           ``aAcc``, ``mAcc`` at each evaluation), at W&B step = training iteration = ``iter``
summary    ``miou_best``, ``miou_last``, ``best_iter``, ``aacc_last`` (as ``result.json``),
           ``params_m`` and ``gmacs`` (as ``ablate report``: the same measurement cache)
=========  ==========================================================================

Reads and writes, per run folder: ``wandb_id`` (the W&B run id, made on the first start; a
resumed run reads it and continues the same W&B run, ``--restart`` empties the folder and so
starts a new one) and W&B's own files under ``wandb/``. The report run keeps its files under
``<work_root>/<study>/<profile>/wandb/``. With ``WANDB_MODE=offline`` nothing leaves the machine;
``wandb sync`` uploads those folders later.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import re
import secrets
from functools import partial
from pathlib import Path
from typing import Any, Callable

from ablate.errors import AblateError
from ablate.study import Run, Study

ID_FILE = "wandb_id"
BACKEND = "ablate.tracking.WandbBackend"  # a dotted path: mmengine imports this module on demand
# Every logged metric is plotted against `iter`, the training iteration (W&B's step is set to it too).
DEFINE_METRICS = [dict(name="iter"), dict(name="*", step_metric="iter")]


def enabled(study: Study, flag: bool | None) -> bool:
    """Whether runs are tracked: ``--wandb``/``--no-wandb`` when given, else the study's ``wandb.enabled``."""
    return bool(study.wandb.get("enabled", False)) if flag is None else flag


def require(error: type[AblateError] = AblateError) -> None:
    """Raise ``error`` (one line) when the wandb package is missing; does not import it."""
    if importlib.util.find_spec("wandb") is None:
        raise error("--wandb: the `wandb` package is not installed here (`pip install wandb`); "
                    "or leave W&B off with --no-wandb")


def project(study: Study) -> str:
    """The W&B project of a study: its ``wandb.project``, default ``ablate-<study>``."""
    return str(study.wandb.get("project") or f"ablate-{study.name}")


def group(study: Study, profile: str) -> str:
    """The W&B group of a profile's runs and its report: ``<study>/<profile>``."""
    return f"{study.name}/{profile}"


def switch_tags(overrides: dict[str, Any]) -> list[str]:
    """``{"model.decode_head.use_dwt": True, "a.b.k": 3}`` -> ``["use_dwt", "k=3"]`` (W&B allows 64 characters)."""
    tags = []
    for dotted, value in overrides.items():
        leaf = dotted.lstrip("+").rsplit(".", 1)[-1]
        tags.append((leaf if value is True else f"{leaf}={value}")[:64])
    return tags


def naming(study: Study, run: Run) -> dict[str, Any]:
    """``wandb.init`` arguments that place one training run: project, entity, group, name, job type, tags."""
    return dict(
        project=project(study),
        entity=study.wandb.get("entity"),
        group=group(study, run.profile),
        name=f"{run.variant}-seed{run.seed}",
        job_type="train",
        tags=[*switch_tags(study.variant(run.variant).overrides), run.profile],
    )


def run_overrides(study: Study, run: Run, cfg) -> dict[str, Any]:
    """Config keys that make one run log to W&B: ``cfg``'s vis backends plus a :class:`WandbBackend`.

    Called by the orchestrator for each run while W&B is on (see :func:`overrides_for`). The keys
    sit under ``visualizer``, which the orchestrator ignores when it compares a run's config with
    the one it started with: turning W&B on or off neither restarts nor blocks a run.

    Args:
        study: the study (its ``wandb`` section and ``input_shape``).
        run: the run.
        cfg: its resolved config; its other vis backends are kept.
    """
    visualizer = cfg.get("visualizer") or {}
    backends = [b for b in (visualizer.get("vis_backends") or []) if b.get("type") != BACKEND]
    init_kwargs = dict(naming(study, run), resume="allow",
                       config=dict(overrides=dict(study.variant(run.variant).overrides)))
    backend = dict(type=BACKEND, init_kwargs=init_kwargs, define_metric_cfg=DEFINE_METRICS,
                   input_shape=list(study.input_shape))
    return {"visualizer.vis_backends": [*backends, backend]}


def overrides_for(study: Study) -> Callable[[Run, Any], dict[str, Any]]:
    """:func:`run_overrides` for ``study``, as the orchestrator's ``overrides`` takes it: ``f(run, cfg)``."""
    return partial(run_overrides, study)


def run_id(run_dir: str | os.PathLike, identity: str) -> str:
    """The W&B id of the run in ``run_dir``: read from its ``wandb_id``, or made now and written there.

    The id is ``identity`` (study, profile, variant, seed) made safe for W&B, and a random suffix
    drawn when the folder's first attempt starts: a rerun of an emptied folder is a new W&B run.
    """
    from ablate.io import atomic_write

    path = Path(run_dir) / ID_FILE
    try:
        known = path.read_text().strip()
    except OSError:
        known = ""
    if known:
        return known
    made = f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', identity).strip('-')[:48]}-{secrets.token_hex(4)}"
    with atomic_write(path) as tmp:
        tmp.write_text(made + "\n")
    return made


def summary(run_dir: Path, evaluations: list[dict], measurement: dict | None) -> dict[str, Any]:
    """A training run's W&B summary from its evaluations and its Params/FLOPs measurement.

    Args:
        run_dir: the run folder; its ``progress.json`` holds the evaluations of every attempt.
        evaluations: ``[{"iteration", "mIoU", "aAcc"}]`` seen by this attempt, used when
            ``progress.json`` has none.
        measurement: :func:`ablate.measure.measure_cached`'s result, or None.
    """
    from ablate.runs import Progress, RecordError

    try:
        progress = Progress.read(run_dir)
    except RecordError:
        progress = None
    if progress is not None and progress.evaluations:
        evaluations = [{"iteration": e.iteration, "mIoU": e.mIoU, "aAcc": e.aAcc} for e in progress.evaluations]
    out: dict[str, Any] = {}
    if evaluations:
        best = max(evaluations, key=lambda e: e["mIoU"])
        last = max(evaluations, key=lambda e: e["iteration"])
        out.update(miou_best=best["mIoU"], miou_last=last["mIoU"], best_iter=best["iteration"],
                   aacc_last=last.get("aAcc"))
    if measurement:
        out.update(params_m=measurement.get("params_m"), gmacs=measurement.get("gmacs"))
    return out


def _backend_class():
    """Build :class:`WandbBackend`: it subclasses mmengine's backend, whose module imports torch."""
    from mmengine.logging import print_log
    from mmengine.visualization import WandbVisBackend
    from mmengine.visualization.vis_backend import force_init_env

    class WandbBackend(WandbVisBackend):
        """mmengine's ``WandbVisBackend`` with a per-folder run id, an ``iter`` on every row and a summary.

        Args:
            save_dir: mmengine's ``<work_dir>/<timestamp>/vis_data`` (W&B writes to the run folder).
            init_kwargs: ``wandb.init`` arguments (:func:`run_overrides`); ``id`` and ``dir`` are added.
            define_metric_cfg: ``wandb.define_metric`` arguments.
            input_shape: (C, H, W) for the Params/FLOPs measurement of the summary.
        """

        def __init__(self, save_dir: str, init_kwargs: dict | None = None, define_metric_cfg=None,
                     input_shape=(3, 512, 512), **kwargs):
            super().__init__(save_dir, init_kwargs=dict(init_kwargs or {}), define_metric_cfg=define_metric_cfg,
                             **kwargs)
            self._input_shape = tuple(input_shape)
            self._cfg = None
            self._evaluations: list[dict] = []
            self._last_iter = 0

        def add_config(self, config, **kwargs) -> None:
            # mmengine's Runner calls this first, before wandb.init: the run folder gives the id.
            # Unlike mmengine's, no `run.log_code()`: it would copy every .py file under the cwd.
            self._cfg = config
            run_dir = Path(config.work_dir)
            meta = config.get("ablate") or {}
            identity = f"{meta.get('study')}-{meta.get('profile')}-{meta.get('variant')}-seed{meta.get('seed')}"
            self._init_kwargs.update(id=run_id(run_dir, identity), dir=str(run_dir))
            # a resumed run's config differs in resume/load_from
            self.experiment.config.update(config.to_dict(), allow_val_change=True)

        @force_init_env
        def add_scalars(self, scalar_dict: dict, step: int = 0, file_path=None, **kwargs) -> None:
            # Training rows carry `iter`. Evaluation rows do not; their step is the iteration (the
            # epoch with log_metric_by_epoch, hence the max). W&B's step is set to the iteration
            # too (mmengine lets W&B count calls): a resumed attempt then continues the history
            # where its checkpoint left it, and `wandb sync` keeps both attempts' rows. Rows of one
            # step merge (training and evaluation at the same iteration) until a later step comes.
            row = {**scalar_dict, "iter": int(scalar_dict.get("iter", max(step, self._last_iter)))}
            self._last_iter = row["iter"]
            if "mIoU" in row:
                self._evaluations.append({"iteration": row["iter"], "mIoU": float(row["mIoU"]),
                                          "aAcc": float(row.get("aAcc", float("nan")))})
            self._wandb.log(row, step=row["iter"])

        def close(self) -> None:
            if hasattr(self, "_wandb") and self._cfg is not None:  # initialised: rank 0 of a run
                try:
                    self._wandb.run.summary.update(summary(Path(self._cfg.work_dir), self._evaluations,
                                                           self._measure()))
                except Exception as exc:  # noqa: BLE001 - the run is done; a missing summary must not fail it
                    print_log(f"W&B summary not written: {type(exc).__name__}: {exc}", logger="current",
                              level=logging.WARNING)
            super().close()

        def _measure(self) -> dict | None:
            from ablate.measure import measure_cached  # lazy: torch and mmseg, loaded by the worker anyway

            from ablate.runs import WorkRoot

            # `ablate report` measures into the work root's cache; the same cache gives the same numbers.
            cache = WorkRoot.of(self._cfg.ablate.work_root).measure_cache
            try:
                return measure_cached(self._cfg, self._input_shape, cache)
            except Exception as exc:  # noqa: BLE001 - a model the counter cannot handle: summary without it
                print_log(f"W&B summary without Params/FLOPs: {type(exc).__name__}: {exc}", logger="current",
                          level=logging.WARNING)
                return None

    WandbBackend.__module__ = __name__
    WandbBackend.__qualname__ = "WandbBackend"
    return WandbBackend


def __getattr__(name: str):
    # PEP 562: mmengine resolves `type='ablate.tracking.WandbBackend'` in the worker; the class is
    # made on that first access so that `ablate run` (which imports this module) stays without torch.
    if name == "WandbBackend":
        cls = globals()["WandbBackend"] = _backend_class()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------- report


def log_report(study: Study, results, work_root: str | os.PathLike | None = None) -> str:
    """Log a ``report`` job in the profile's group: the comparison table and two charts.

    Args:
        study: the study.
        results: :class:`~ablate.results.Results` of one profile; ``results.table()`` is logged as
            ``comparison``, unrounded, with the columns of the JSON report's ``variants``.
        work_root: root of the run folders; W&B's files go to ``<work_root>/<study>/<profile>/wandb``.

    Returns:
        The run's URL, or its local folder when offline (``wandb sync`` uploads it).

    Raises:
        ReportError: wandb is not installed, or W&B refused the run (not logged in, say).
    """
    from ablate.errors import ReportError

    require(ReportError)
    import wandb  # lazy: only `ablate report --wandb`

    columns, data = results.table()
    records = [dict(zip(columns, row)) for row in data]
    miou = results.compared
    points = [[r["label"], r["gmacs"], r[miou.mean]] for r in records
              if r["gmacs"] is not None and r[miou.mean] is not None]
    deltas = [[r["label"], r[miou.delta] if not r["is_baseline"] else 0.0] for r in records
              if r["is_baseline"] or r[miou.delta] is not None]
    from ablate.runs import WorkRoot

    folder = WorkRoot.of(work_root).profile_dir(study.name, results.profile)  # W&B writes its wandb/ here
    folder.mkdir(parents=True, exist_ok=True)
    config = dict(study=results.study, profile=results.profile, profile_label=results.profile_label,
                  baseline=results.baseline, compare_miou=results.compare_miou,
                  input_shape=list(results.input_shape), conventions=dict(results.conventions),
                  notes=list(results.notes))
    try:
        run = wandb.init(project=project(study), entity=study.wandb.get("entity"),
                         group=group(study, results.profile), name="report", job_type="report",
                         tags=[results.profile, "report"], config=config, dir=str(folder))
    except wandb.errors.Error as exc:
        first = str(exc).strip().splitlines()
        raise ReportError(f"W&B: {first[0] if first else type(exc).__name__}; WANDB_MODE=offline logs the "
                          "report locally, for `wandb sync` later") from None
    with run:
        gflops = wandb.Table(columns=["variant", "GFLOPs", "mIoU"], data=points)
        delta = wandb.Table(columns=["variant", "delta mIoU"], data=deltas)
        run.log({
            "comparison": wandb.Table(columns=columns, data=data),
            "miou_vs_gflops": wandb.plot.scatter(gflops, "GFLOPs", "mIoU",
                                                 title=f"mIoU ({results.compare_miou}) vs GFLOPs (GMACs)"),
            "delta_miou": wandb.plot.bar(delta, "variant", "delta mIoU",
                                         title=f"mIoU ({results.compare_miou}) vs {results.baseline}"),
        })
        return run.url or str(run.settings.sync_dir)
