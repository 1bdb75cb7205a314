"""The worker: ``python -m ablate.train WORK_DIR`` trains and evaluates one run.

Reads ``WORK_DIR/config.py`` and ``WORK_DIR/run.json`` (both written by ``ablate run``). Builds
mmengine's Runner with mmseg's registry and the config's ``custom_imports`` (freqfusion), resumes
from the newest complete ``iter_N.pth`` when the folder has one, trains, and makes sure the final
iteration was evaluated. Besides mmengine's own output (checkpoints, ``last_checkpoint``, a
timestamped log folder, and ``runtime_config.py``: the config as it actually ran) it writes:

- ``attempts.jsonl``: one line at every start (appended, never rewritten);
- ``progress.json`` about once a second and around every evaluation, through
  :class:`ProgressHook`: iteration, loss, ETA, phase, the evaluations so far, and the time of all
  attempts, so that a killed attempt loses nothing that its checkpoint kept;
- ``result.json``, atomically and last, when training and the final evaluation finished;
- ``failed.json`` when an exception ends the attempt: a one-line error and the log's tail;
- a checkpoint after the current iteration when asked through :data:`AFTER_ITERATION` (a Slurm
  job's preemption or time-limit signal), besides the config's periodic ones.

Every evaluation starts from the same random state (:class:`SeededValidation`), so that it
depends on the weights alone.

The worker takes the run's lock over from the ``ablate run`` that launched it (the token in
``run.json`` says it may; see :mod:`ablate.runs.lock`) and keeps it fresh while it trains. Under torchrun, or a Slurm job with
several tasks, every process trains and only rank 0 writes these files; on CPUs the processes
talk through gloo. Exit status: 0 done, 1 failed, 3 another live process holds the run's lock.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import sys
import time
import traceback
from pathlib import Path

from mmengine.config import Config  # the worker needs mmengine (and torch) anyway
from mmengine.hooks import Hook

from ablate import configs
from ablate.runs import Attempt, Evaluation, Progress, RecordError, Result, RunInfo, folder
from ablate.runs.lock import LockHeld, RunLock, new_token
from ablate.runs.records import ATTEMPTS_FILE, append_attempt, read_attempts

EXIT_FAILED = 1
PROGRESS_EVERY_S = 1.0
# Callables that the training loop runs once, with the runner, after the current iteration: a
# signal handler cannot save a checkpoint mid-iteration, so a Slurm job's preemption/time-limit
# handler (ablate.launch.slurm.save_before_requeue) puts its save-and-requeue here.
AFTER_ITERATION: list = []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ablate.train", description=__doc__.splitlines()[0])
    parser.add_argument("work_dir", type=Path, help="run folder with config.py (written by `ablate run`)")
    args = parser.parse_args(argv)
    # `ablate run` cancels with SIGTERM: leave through `finally` so that the lock is released.
    # (Jobs under submitit call train() directly: submitit's handlers own the signals there.)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    return train(args.work_dir)


def train(work_dir: str | os.PathLike) -> int:
    """Train, evaluate and record one run; returns the process exit status.

    Args:
        work_dir: the run folder; it must hold ``config.py``.
    """
    started = time.time()
    work_dir = folder.abspath(work_dir)
    rank, world_size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    lock, stop_heartbeat = None, None
    if rank == 0:
        try:
            info = RunInfo.read(work_dir) or RunInfo()
        except RecordError as exc:
            print(f"ablate.train: {exc}; taking the lock under a new token", file=sys.stderr)
            info = RunInfo()
        lock = RunLock(work_dir, info.lock_token or new_token())
        try:
            stale = lock.acquire()
        except LockHeld as exc:
            print(f"ablate.train: {work_dir} is {exc}; not training it", file=sys.stderr)
            return folder.EXIT_LOCKED
        if stale is not None:
            print(f"ablate.train: took over the stale lock of {stale}", file=sys.stderr)
        stop_heartbeat = lock.heartbeat()
    hook = ProgressHook(work_dir, started, write=rank == 0)
    runner = None
    try:
        runner = build_runner(work_dir, world_size, hook)
        runner.train()
        if rank == 0:
            hook.result(runner).write(work_dir)
        return 0
    except Exception as exc:  # noqa: BLE001 - any failure of a run is recorded, then reported
        trace = traceback.format_exc()
        print(trace, file=sys.stderr, flush=True)
        if rank == 0:
            folder.remove_partial_checkpoints(work_dir)  # a full disk leaves half an iter_N.pth
            log = _mmengine_log(runner)
            lines = folder.tail(log, 25).splitlines() + trace.splitlines()
            try:
                folder.record_failure(work_dir, _one_line(exc, hook.iteration),
                                      "\n".join(lines[-folder.TAIL_LINES:]), EXIT_FAILED)
            except OSError as write_error:  # the disk is full, or the folder read-only: say it here
                print(f"ablate.train: failed.json not written ({write_error.strerror or write_error}): "
                      f"{_one_line(exc, hook.iteration)}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    finally:
        if lock is not None:
            stop_heartbeat.set()
            lock.release()


def build_runner(work_dir: Path, world_size: int, hook: "ProgressHook"):
    """mmengine's Runner for the run folder, set to resume from its newest complete checkpoint."""
    from ablate import compat

    compat.apply()  # before mmseg: mmcv-lite ops, torch.load
    compat.trust_checkpoints_under(work_dir)  # our own checkpoints need weights_only=False
    import torch
    from mmengine.runner import Runner
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    compat.name_data_files()  # a corrupt image or label map fails naming its file
    path = work_dir / folder.CONFIG
    loaded = Config.fromfile(str(path))  # imports custom_imports, e.g. freqfusion
    # mmengine dumps the config it runs to work_dir/<basename>: keep ours (config.py, whose hash
    # the run folder records) and let it write what actually ran beside it.
    text = path.read_text()
    cfg = FormatOnceConfig(loaded.to_dict(), cfg_text=text, filename=str(work_dir / folder.RUNTIME_CONFIG))
    configs.remember_text(cfg, text)  # changes below (resume, launcher) make it format again
    cfg.work_dir = str(work_dir)
    checkpoint = _resumable_checkpoint(work_dir, move_bad=int(os.environ.get("RANK", "0")) == 0)
    if checkpoint is not None:
        cfg.resume, cfg.load_from = True, str(checkpoint[0])
    if world_size > 1:
        cfg.launcher = "pytorch"
        if not torch.cuda.is_available():
            cfg.merge_from_dict(compat.cpu_ddp_overrides())
            # mmengine's init_dist calls torch.cuda.set_device, which a CPU build lacks; a process
            # group made here first (env:// from torchrun) makes mmengine skip its own.
            torch.distributed.init_process_group(backend="gloo")
    hook.load(cfg, checkpoint[1] if checkpoint else 0)
    runner = Runner.from_cfg(cfg)
    runner.register_hook(hook, priority="VERY_LOW")
    runner.register_hook(SeededValidation())
    return runner


def logged_evaluations(work_dir: Path) -> list[Evaluation]:
    """The evaluations mmengine logged in the run folder (``<timestamp>/vis_data/scalars.json`` of
    every attempt), by iteration, the latest attempt's where two attempts evaluated one iteration."""
    found: dict[int, Evaluation] = {}
    for path in sorted(work_dir.glob("*/vis_data/scalars.json")):  # timestamped folders: oldest first
        try:
            lines = path.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            try:
                row = json.loads(line)
                found[int(row["step"])] = Evaluation(int(row["step"]), float(row["mIoU"]), row.get("aAcc"),
                                                     row.get("mAcc"))
            except (ValueError, KeyError, TypeError):
                continue  # a training row, or a damaged line
    return [found[i] for i in sorted(found)]


def _resumable_checkpoint(work_dir: Path, move_bad: bool) -> tuple[Path, int] | None:
    """The newest checkpoint that loads; newer ones that do not are set aside (``.corrupt``) and named.

    A checkpoint whose zip index is intact can still hold damaged data (a disk error, a copy cut
    short and patched): without this every rerun would fail on it, though an older one is fine.
    """
    import torch

    for path, iteration in folder.checkpoints(work_dir):
        try:
            torch.load(path, map_location="cpu", weights_only=False)  # ours: written by this run's worker
            return path, iteration
        except Exception as exc:  # noqa: BLE001 - whatever unpickling raises, the file is unusable
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            if move_bad:
                os.replace(path, path.with_name(path.name + ".corrupt"))
            print(f"ablate.train: skipping {path.name}, which does not load ({type(exc).__name__}: {reason}); "
                  f"kept as {path.name}.corrupt", file=sys.stderr, flush=True)
    return None


def _mmengine_log(runner) -> Path | None:
    if runner is None:
        return None
    return Path(runner.log_dir) / f"{runner.timestamp}.log"


def _one_line(exc: BaseException, iteration: int | None) -> str:
    where = f" at iteration {iteration}" if iteration is not None else ""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    # An error in a DataLoader worker is re-raised as "Caught X in DataLoader worker process 0.
    # Original Traceback ...": its last line is the original message (with the file's path).
    message = (lines[-1].split(": ", 1)[-1] if lines and lines[0].startswith("Caught ") else
               lines[0] if lines else "")[:200]
    return f"{type(exc).__name__}{where}: {message}" if message else f"{type(exc).__name__}{where}"


class FormatOnceConfig(Config):
    """``Config`` whose ``pretty_text`` is formatted once per content (:func:`ablate.configs.config_text`).

    mmengine's Runner formats its config for the dump, the log, the visualizer and the meta of
    every checkpoint: ten yapf runs, 6 s, in a 40-iteration smoke run.
    """

    pretty_text = property(configs.config_text)


class SeededValidation(Hook):
    """Starts every evaluation from one random state, and gives training its own back afterwards.

    Some heads draw random numbers at inference: mmseg's LightHamHead (SegNeXt's) starts its NMF
    from fresh ``torch.rand`` bases on every forward pass. Unseeded, an evaluation's mIoU depends on
    how much randomness training drew before it (0.1 apart on the smoke set); seeded, it depends on
    the weights and the data alone, so ``ablate eval`` of a run's checkpoint gives the mIoU the run
    recorded. Training gets its own random state back: an evaluation does not change its course.
    """

    priority = "VERY_HIGH"
    SEED = 0

    def before_val_epoch(self, runner) -> None:
        import torch

        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        self.saved = torch.get_rng_state(), cuda
        torch.manual_seed(self.SEED)  # every device's generator

    def after_val_epoch(self, runner, metrics=None) -> None:
        import torch

        cpu, cuda = self.saved
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


class ProgressHook(Hook):
    """Records progress and evaluations of a run in ``progress.json`` (rank 0 writes).

    Every process keeps the evaluations (mmengine gives each rank the same metrics), so that all
    ranks agree on whether the final iteration still needs one.

    Args:
        work_dir: the run folder.
        started: when this worker process started (``time.time()``).
        write: whether this process writes the files (rank 0).
    """

    priority = "VERY_LOW"

    def __init__(self, work_dir: Path, started: float, write: bool):
        self.work_dir, self.started, self.write = work_dir, started, write
        try:
            previous = Progress.read(work_dir) or Progress(iteration=0)
        except RecordError as exc:
            recovered = logged_evaluations(work_dir)
            print(f"ablate.train: {exc}; earlier attempts are taken from {ATTEMPTS_FILE}, "
                  f"{len(recovered)} earlier evaluations from mmengine's scalars.json", file=sys.stderr)
            previous = Progress(iteration=0, evaluations=recovered)
        self.base_wall, self.base_train = previous.wall_time_s, previous.train_time_s
        self.evaluations: list[Evaluation] = list(previous.evaluations)
        self.max_iters, self.start_iter, self.loss = 0, 0, None
        self.iteration: int | None = None  # the last one finished; None until training starts
        self.phase = "train"
        self.train_started, self.train_time, self.last_write = None, 0.0, 0.0
        self.chance_miou = None

    def load(self, cfg, start_iter: int) -> None:
        """Settings from the run's config; ``start_iter`` is the checkpoint resumed from (0: none)."""
        from ablate.data.synthetic import read_meta

        self.max_iters = int(cfg.train_cfg.get("max_iters", 0))
        self.start_iter = start_iter
        # Evaluations after the checkpoint belong to an attempt whose later iterations are redone.
        self.evaluations = [e for e in self.evaluations if e.iteration <= start_iter]
        if self.write:
            append_attempt(self.work_dir, Attempt(folder.now(), start_iter, os.getpid(), socket.gethostname()))
        data_root = (cfg.get("val_dataloader") or {}).get("dataset", {}).get("data_root")
        meta = read_meta(data_root) if data_root else None
        self.chance_miou = meta.get("chance_miou") if meta else None

    def before_train(self, runner) -> None:
        self.train_started, self.iteration = time.time(), runner.iter
        self._write(runner.iter, force=True)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        loss = (outputs or {}).get("loss")
        if loss is not None:
            value = float(loss.item() if hasattr(loss, "item") else loss)
            self.loss = value if math.isfinite(value) else None  # JSON has no NaN
        self.iteration = runner.iter + 1
        self._write(self.iteration, force=self.iteration >= self.max_iters)
        while AFTER_ITERATION:
            AFTER_ITERATION.pop(0)(runner)

    def before_val_epoch(self, runner) -> None:
        self.phase = "eval"
        self._write(runner.iter, force=True)

    def after_val_epoch(self, runner, metrics=None) -> None:
        self.phase = "train"
        if not metrics or "mIoU" not in metrics:
            return
        iteration = runner.iter
        self.evaluations = [e for e in self.evaluations if e.iteration != iteration]
        scores = {k: round(float(metrics[k]), 2) for k in ("mIoU", "aAcc", "mAcc") if k in metrics}
        self.evaluations.append(Evaluation(iteration, **scores))
        self._write(iteration, force=True)

    def after_train(self, runner) -> None:
        # A run resumed from its final checkpoint, or killed between that checkpoint and the
        # evaluation that follows it, has no evaluation of its final weights yet.
        final = runner.iter >= self.max_iters
        if final and runner.val_loop is not None and not any(e.iteration == runner.iter for e in self.evaluations):
            runner.val_loop.run()
        self.train_time = time.time() - self.train_started
        self.phase = "done"
        self._write(runner.iter, force=True)

    def result(self, runner) -> Result:
        """The run's result.json record; raises when no evaluation was recorded."""
        evaluations = sorted(self.evaluations, key=lambda e: e.iteration)
        if not evaluations:
            raise RuntimeError("training finished without an evaluation: the config needs a val_dataloader, "
                               "val_evaluator and train_cfg.val_interval")
        best, last = max(evaluations, key=lambda e: e.mIoU), evaluations[-1]
        meta = runner.cfg.get("ablate") or {}
        try:
            info = RunInfo.read(self.work_dir) or RunInfo()
        except RecordError:
            info = RunInfo()
        return Result(
            miou_best=best.mIoU, miou_last=last.mIoU,
            study=meta.get("study"), profile=meta.get("profile"), variant=meta.get("variant"), seed=meta.get("seed"),
            config_hash=configs.text_hash((self.work_dir / folder.CONFIG).read_text()), run_key=info.run_key,
            aacc_last=last.aAcc, macc_last=last.mAcc, best_iter=best.iteration, evaluations=evaluations,
            iterations=runner.iter, max_iters=self.max_iters,
            wall_time_s=round(self.base_wall + time.time() - self.started, 2),
            train_time_s=round(self.base_train + self.train_time, 2),
            resumed_from=self.start_iter or None, attempts=read_attempts(self.work_dir),
            finished_at=folder.now(), chance_miou=self.chance_miou, world_size=runner.world_size,
            total_batch=runner.world_size * int(runner.cfg.train_dataloader.batch_size),
        )

    def _write(self, iteration: int, force: bool = False) -> None:
        now = time.time()
        if not self.write or (not force and now - self.last_write < PROGRESS_EVERY_S):
            return
        self.last_write = now
        in_train = now - self.train_started if self.train_started else 0.0
        done = iteration - self.start_iter
        eta = in_train / done * (self.max_iters - iteration) if done > 0 else None
        Progress(
            iteration=iteration, max_iters=self.max_iters, loss=self.loss,
            eta_s=round(eta, 1) if eta is not None else None, phase=self.phase, updated_at=folder.now(),
            pid=os.getpid(), wall_time_s=round(self.base_wall + now - self.started, 2),
            train_time_s=round(self.base_train + (self.train_time or in_train), 2),
            evaluations=self.evaluations, attempts=read_attempts(self.work_dir),
        ).write(self.work_dir)


if __name__ == "__main__":
    sys.exit(main())
