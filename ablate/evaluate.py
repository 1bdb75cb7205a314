"""``ablate eval``: checkpoints evaluated on a profile's validation split, recorded beside the runs.

The cheapest reproduction of a table is to evaluate the weights its authors released. This
module loads a checkpoint into a variant's model and runs mmengine's validation loop over the
profile's validation split: the loop, dataloader and metric (mmseg's ``IoUMetric``) that
training evaluates with, each evaluation from the same random state
(:class:`ablate.train.SeededValidation`), so one of our own ``iter_N.pth`` gives the mIoU its
run recorded.

Reads: the study (the variant's config, resolved as ``ablate run`` resolves it, with the
profile's data root) and the checkpoint, a file or an http(s) URL, through :mod:`ablate.convert`:
mmseg 0.x key names are renamed, loading is strict, and a file from elsewhere is read with
``torch.load(weights_only=True)``. A file under the work root is one of ablate's own run
checkpoints and is read as such (mmengine pickles objects into them).

Writes ``<work root>/<study>/<profile>/<variant>/eval-<stem>-<sha256[:8]>/``
(:meth:`ablate.runs.WorkRoot.eval_dir`): mmengine's output (``config.py``, the config as
evaluated, and a timestamped folder with the full log), then ``evaluation.json``
(:class:`~ablate.runs.CheckpointEval`), atomically and last. :func:`read_evaluations` gives the
finished ones to ``ablate report``.

torch, mmengine and mmseg are imported inside :func:`evaluate`, so that reading the records
(``ablate report``) does not load them.
"""
from __future__ import annotations

import os
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path

from ablate import configs
from ablate.errors import CheckpointError, ConfigError, one_of
from ablate.runs import CheckpointEval, Evaluation, Progress, RecordError, Result, WorkRoot, folder
from ablate.study import Study

ProgressFn = Callable[[int, int], None]  # (images evaluated, images in the split)
# Deprecation chatter of mmseg 1.2's own configs and hooks, on every build: not the user's to fix.
NOISE = (r".*pkg_resources", r"Fail to import", r".*build_loss", r".*avg_non_ignore", r"The draw is False",
         r".*reduce_zero_label. will be deprecated")
# The run-only parts of a resolved config: an evaluation builds none of them. The checkpoint hook
# goes too: with `save_best` it would save the evaluated weights again as a "best" checkpoint.
NOT_EVALUATED = ("train_dataloader", "train_cfg", "optim_wrapper", "param_scheduler", "test_dataloader",
                 "test_cfg", "test_evaluator")


def _is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def checkpoints_to_evaluate(study: Study, given: list[str]) -> list[tuple[str, str]]:
    """The (variant, checkpoint) pairs to evaluate, in study order; every problem in one error.

    Args:
        study: the loaded study.
        given: ``--checkpoint`` values, ``VARIANT=PATH`` or ``VARIANT=URL``; none: the variants'
            ``checkpoint:`` in the study file.

    Returns:
        Pairs whose checkpoint is an http(s) URL or the absolute path of an existing file.

    Raises:
        CheckpointError: a malformed value, an unknown or repeated variant, a missing file, or
            nothing to evaluate; one line per problem.
    """
    problems, chosen = [], {}
    for item in given:
        variant, sep, source = (part.strip() for part in item.partition("="))
        if not sep or not variant or not source:
            problems.append(f"--checkpoint `{item}`: expected VARIANT=PATH or VARIANT=URL, e.g. baseline=iter_40.pth")
        elif variant not in study.variants:
            problems.append(f"--checkpoint `{item}`: {one_of(variant, 'variant', study.variants)}")
        elif variant in chosen:
            problems.append(f"--checkpoint `{item}`: variant `{variant}` is given twice")
        else:
            chosen[variant] = source if "://" in source else str(folder.abspath(Path(source).expanduser()))
    if not given:
        chosen = {name: v.checkpoint for name, v in study.variants.items() if v.checkpoint}
        if not chosen:
            raise CheckpointError(f"nothing to evaluate: give --checkpoint VARIANT=PATH (or =URL), or give variants "
                                  f"of {study.path.name} a `checkpoint:`")
    for variant, source in chosen.items():
        if "://" in source and not _is_url(source):
            problems.append(f"{variant}: {source}: only http:// and https:// URLs are fetched")
        elif "://" not in source and not Path(source).is_file():
            problems.append(f"{variant}: {source}: no such checkpoint file")
    if problems:
        raise CheckpointError("\n".join(problems))
    return [(name, chosen[name]) for name in study.variants if name in chosen]


def evaluate(study: Study, profile: str, variant: str, source: str, data_root: str | os.PathLike,
             work_root: str | os.PathLike | None = None, progress: ProgressFn | None = None,
             cache_dir: str | os.PathLike | None = None) -> tuple[CheckpointEval, Path]:
    """Evaluate one checkpoint with ``variant``'s model on ``profile``'s validation split; record it.

    Args:
        study: the loaded study.
        profile: the profile whose config (validation pipeline, data) is used.
        variant: whose config builds the model the weights are loaded into.
        source: the checkpoint: a file (absolute path) or an http(s) URL.
        data_root: the dataset root (``ablate.launch.orchestrate.data_root_for``).
        work_root: root of the run folders; default ``$ABLATE_WORK_DIR`` or ``work_dirs``.
        progress: called with (images evaluated, images in the split) as evaluation goes.
        cache_dir: where downloads go (default: torch.hub's ``checkpoints`` folder).

    Returns:
        The record written, and the folder it was written to.

    Raises:
        CheckpointError: the checkpoint cannot be downloaded or read, or does not fit the model
            (the message lists the keys that do not match).
        ConfigError: the config's ``custom_imports`` do not import, or its evaluator gives no mIoU.
    """
    from ablate import compat, convert  # lazy: torch, mmengine and mmseg

    started = time.time()
    root = WorkRoot.of(work_root)
    path = convert.fetch(source, cache_dir) if _is_url(source) else Path(source)
    if not path.is_file():
        raise CheckpointError(f"{source}: no such checkpoint file")
    sha256 = convert.sha256_of(path)
    # ablate's own checkpoints hold mmengine's message hub, which only a full unpickling reads
    trusted = not _is_url(source) and path.resolve().is_relative_to(root.path.resolve())
    eval_dir = root.eval_dir(study.name, profile, variant, source, sha256)
    run = study.runs(profile, variants=[variant], work_root=root)[0]  # the seed does not change the model
    cfg = configs.resolve(study, run, data_root=data_root)
    run_key = configs.run_key(cfg)

    compat.apply()  # before mmseg: mmcv-lite ops
    with warnings.catch_warnings():
        for noise in NOISE:
            warnings.filterwarnings("ignore", message=noise)
        runner = _build_runner(cfg, eval_dir, variant, progress)
        info = convert.load_weights(runner.model, path, trusted=trusted)
        metrics = runner.val()
    if "mIoU" not in metrics:
        raise ConfigError(f"{study.path.name}: the val_evaluator of `{variant}` gives no mIoU "
                          f"(it gives {', '.join(metrics) or 'nothing'}); evaluations need mmseg's IoUMetric")
    record = CheckpointEval(
        study=study.name, profile=profile, variant=variant, source=source, sha256=sha256, format=info["format"],
        miou=_percent(metrics["mIoU"]), aacc=_percent(metrics.get("aAcc")), macc=_percent(metrics.get("mAcc")),
        converted=info["converted"], trusted=trusted, iteration=folder.checkpoint_iter(path) if trusted else None,
        images=len(runner.val_dataloader.dataset), data_root=str(folder.abspath(data_root)), run_key=run_key,
        evaluated_at=folder.now(), wall_time_s=round(time.time() - started, 2),
    )
    record.write(eval_dir)
    return record, eval_dir


def _build_runner(cfg, eval_dir: Path, variant: str, progress: ProgressFn | None):
    """mmengine's Runner for the validation loop alone, writing into ``eval_dir``, console quiet."""
    import logging

    from mmengine.hooks import Hook
    from mmengine.runner import Runner
    from mmengine.utils import import_modules_from_strings
    from mmseg.utils import register_all_modules

    from ablate.train import FormatOnceConfig, SeededValidation

    imports = (cfg.get("custom_imports") or {}).get("imports") or []
    try:
        import_modules_from_strings(imports, allow_failed_imports=False)  # freqfusion's head, into the registry
    except ImportError as exc:
        raise ConfigError(f"custom_imports {imports} of the config do not import: {exc}") from None
    register_all_modules(init_default_scope=False)
    for key in NOT_EVALUATED:
        cfg[key] = None
    if cfg.get("default_hooks"):
        cfg.default_hooks.checkpoint = None
    cfg.work_dir, cfg.load_from, cfg.resume = str(eval_dir), None, False
    # mmengine keeps loggers and visualizers by name: the experiment's, to the second, and mmseg's
    # configs name their visualizer `visualizer`. A second Runner in this process (the next
    # variant; training, in tests) would log and write vis_data into the first one's folder.
    cfg.experiment_name = f"eval-{variant}-{uuid.uuid4().hex[:8]}"
    if cfg.get("visualizer"):
        cfg.visualizer.name = cfg.experiment_name
    # mmengine dumps the config to work_dir/<basename of its filename>: config.py, as evaluated
    cfg = FormatOnceConfig(cfg.to_dict(), cfg_text=configs.config_text(cfg), filename=str(eval_dir / folder.CONFIG))

    class QuietRunner(Runner):
        """Logs everything to its log file and only errors to the console: ``ablate eval`` reports progress."""

        def build_logger(self, *args, **kwargs):
            logger = super().build_logger(*args, **kwargs)
            for handler in logger.handlers:
                if not isinstance(handler, logging.FileHandler):
                    handler.setLevel(logging.ERROR)
            return logger

    class ProgressHook(Hook):
        priority = "VERY_LOW"

        def before_val_epoch(self, runner) -> None:
            self.done, self.total = 0, len(runner.val_dataloader.dataset)
            progress(0, self.total)

        def after_val_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
            self.done += len(outputs or ())  # one prediction per image
            progress(self.done, self.total)

    runner = QuietRunner.from_cfg(cfg)
    runner.register_hook(SeededValidation())  # as the worker evaluates: the same weights give the same mIoU
    if progress is not None:
        runner.register_hook(ProgressHook())
    return runner


def trained_evaluation(record: CheckpointEval) -> tuple[str, Evaluation] | None:
    """For a run's own ``iter_N.pth``: the run (``variant/seedK``) and its evaluation of iteration N in training.

    None for other checkpoints, or when the run folder recorded no evaluation at that iteration.
    """
    if not record.trusted or record.iteration is None:
        return None
    run_dir = Path(record.source).parent
    try:
        found = Result.read(run_dir) or Progress.read(run_dir)
    except RecordError:
        return None
    for evaluation in found.evaluations if found is not None else []:
        if evaluation.iteration == record.iteration:
            return f"{run_dir.parent.name}/{run_dir.name}", evaluation
    return None


def read_evaluations(study: Study, profile: str,
                     work_root: str | os.PathLike | None = None) -> tuple[list[CheckpointEval], list[str]]:
    """The finished evaluations of ``profile``'s variants, in study order, and the unreadable ones.

    A folder without ``evaluation.json`` holds an evaluation that is running or was killed: it is
    left out. An ``evaluation.json`` that cannot be read is named, one line, in the second list.
    """
    root = WorkRoot.of(work_root)
    found, problems = [], []
    for variant in study.variants:
        for eval_dir in root.eval_dirs(study.name, profile, variant):
            try:
                record = CheckpointEval.read(eval_dir)
            except RecordError as exc:
                problems.append(str(exc))
                continue
            if record is not None:
                found.append(record)
    return found, problems


def _percent(value) -> float | None:
    """mmseg's metric, already in percent, rounded as training records it."""
    return None if value is None else round(float(value), 2)
