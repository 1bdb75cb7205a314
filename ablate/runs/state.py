"""A run folder read into one :class:`RunState`: the single place that decides a run's status.

:func:`read_state` reads every file of a run folder (the records, the lock, the checkpoints) and
returns them typed, with the status, the first rule that applies:

1. ``done``: ``result.json`` is there (written last, atomically: the run trained and evaluated);
   ``stale`` instead when the config it trained with differs from the one the study resolves
   now (``expected_key``);
2. ``queued`` / ``running``: the scheduler says the run's job waits / runs (``job_state``; jobs
   of a detached ``ablate run``), or a live process holds the lock: ``ablate run`` itself while
   the run waits for a free slot (queued), the worker once it trains (running);
3. ``failed``: ``failed.json`` is there;
4. ``stale``: checkpoints trained with another config than the one resolved now;
5. ``pending``: nothing, or checkpoints only (the next ``ablate run`` resumes from the newest).

A file that cannot be read is never guessed at: it is left out (the status is decided from the
rest) and named in :attr:`RunState.problems`. Reading changes nothing on disk.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ablate.runs import folder
from ablate.runs.layout import Run
from ablate.runs.lock import LAUNCHER, Holder, live_holder
from ablate.runs.records import Evaluation, Failure, Progress, Record, RecordError, Result, RunInfo


class RunStatus(str, enum.Enum):
    """Where a run stands; the values are what tables and JSON print."""

    PENDING = "pending"  # not started, or checkpoints only: `ablate run` (re)starts it
    QUEUED = "queued"  # launched, waiting for a free slot or for the scheduler
    RUNNING = "running"  # a worker trains or evaluates it
    DONE = "done"  # trained and evaluated
    FAILED = "failed"  # the last attempt failed; failed.json says why
    STALE = "stale"  # trained with a config other than the one the study resolves now

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class JobState:
    """What a scheduler says about the job of a run."""

    job_id: str
    state: str  # the scheduler's word (PENDING, RUNNING, COMPLETED, ...; GONE when nobody knows the job)
    active: bool  # waiting or running
    queued: bool = False  # waiting to start
    reason: str | None = None  # why it waits, or how it ended
    exit_code: int | None = None  # of an ended job's process (negative: the signal that killed it)


# (run, its run.json) -> the scheduler's word on its job, or None where no scheduler knows it
JobStateFn = Callable[[Run, RunInfo], "JobState | None"]
# (run, its run.json or None) -> the config key the study resolves for it now, or None if unknown
ExpectedKeyFn = Callable[[Run, "RunInfo | None"], "str | None"]


@dataclass(frozen=True)
class RunState:
    """Everything a run folder says about its run, typed, and the status decided from it."""

    run: Run
    status: RunStatus
    info: RunInfo | None = None
    progress: Progress | None = None
    result: Result | None = None
    failure: Failure | None = None
    failure_unreadable: bool = False
    holder: Holder | None = None  # the live process holding the lock
    job: JobState | None = None
    checkpoint: tuple[Path, int] | None = None  # the newest complete one
    recorded_key: str | None = None  # the config key the folder's training was made with
    expected_key: str | None = None  # the config key the study resolves now
    problems: tuple[str, ...] = ()  # unreadable files, one line each

    @property
    def iteration(self) -> int | None:
        """Training iterations done: the result's, else the progress' while a worker runs, else the
        newest checkpoint's (where the run resumes: a killed attempt's later iterations are lost),
        else the last attempt's progress."""
        if self.result is not None and self.result.iterations is not None:
            return self.result.iterations
        if self.progress is not None and (self.status is RunStatus.RUNNING or self.checkpoint is None):
            return self.progress.iteration
        return self.checkpoint[1] if self.checkpoint else None

    @property
    def max_iters(self) -> int | None:
        for record in (self.result, self.progress):
            if record is not None and record.max_iters is not None:
                return record.max_iters
        return None

    @property
    def evaluations(self) -> list[Evaluation]:
        """Evaluations so far, by iteration: the result's, else those progress.json keeps."""
        source = self.result if self.result is not None else self.progress
        return sorted(source.evaluations, key=lambda e: e.iteration) if source is not None else []

    @property
    def error(self) -> str | None:
        """Why the run failed, for failed runs."""
        if self.status is not RunStatus.FAILED:
            return None
        return self.failure.error if self.failure is not None else "failed.json is unreadable"


def read_state(run: Run, expected_key: ExpectedKeyFn | None = None, job_state: JobStateFn | None = None) -> RunState:
    """Read ``run``'s folder and decide its status (the rules of the module doc).

    Args:
        run: the run.
        expected_key: gives the config key the study resolves for the run now; with it, runs
            trained with another config are ``stale``. None: staleness is not judged.
        job_state: asks the scheduler about the run's job (``ablate.launch.job_state``); None: no
            scheduler is asked, and a detached job that waits shows as ``pending``.
    """
    work_dir = run.work_dir
    problems: list[str] = []
    info, progress, result = (_read(cls, work_dir, problems) for cls in (RunInfo, Progress, Result))
    failure = _read(Failure, work_dir, problems)
    failure_unreadable = failure is None and (work_dir / Failure.FILE).exists()
    checkpoint = folder.latest_checkpoint(work_dir) if work_dir.is_dir() else None
    recorded = (result.run_key if result is not None else None) or (info.run_key if info else None)
    expected = expected_key(run, info) if expected_key is not None and recorded is not None else None
    changed = expected is not None and expected != recorded
    job = job_state(run, info) if job_state is not None and info is not None and info.job_id else None
    holder = live_holder(work_dir)

    if result is not None:
        status = RunStatus.STALE if changed else RunStatus.DONE
    elif job is not None and job.active:
        status = RunStatus.QUEUED if job.queued else RunStatus.RUNNING
    elif holder is not None:
        status = RunStatus.QUEUED if holder.role == LAUNCHER else RunStatus.RUNNING
    elif failure is not None or failure_unreadable:
        status = RunStatus.FAILED
    elif changed and checkpoint is not None:
        status = RunStatus.STALE
    else:
        status = RunStatus.PENDING
    return RunState(run, status, info, progress, result, failure, failure_unreadable, holder, job, checkpoint,
                    recorded, expected, tuple(problems))


def _read(cls: type[Record], work_dir: Path, problems: list[str]):
    try:
        return cls.read(work_dir)
    except RecordError as exc:
        problems.append(str(exc))
        return None
