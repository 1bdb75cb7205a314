"""The launcher interface: submit runs, and handles that answer for them; failures come back as values.

A backend is one small class (as a submitit ``Executor`` or a Hydra ``Launcher``): its
:meth:`Launcher.submit` starts the worker (``python -m ablate.train WORK_DIR``, see
:mod:`ablate.train`) of each run it is given and returns one :class:`RunHandle` per run. A
handle answers its own run's state (:meth:`RunHandle.poll`) and stops it
(:meth:`RunHandle.cancel`), so that :mod:`ablate.launch.orchestrate` never needs to know which
backend it drives. A worker that ended becomes a :class:`RunOutcome` (:func:`ended`): the run
folder decides it (``result.json`` means done), and the launcher writes ``failed.json`` only for a
worker that died without writing one itself (killed, out of memory). Everything else in the run
folder is the business of the orchestrator (before the launch) and of the worker (during it).
"""
from __future__ import annotations

import abc
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Sequence

from ablate.runs import JobState, RecordError, Result, Run, RunInfo, folder
from ablate.runs.records import Failure

WORKER = "ablate.train"  # module run as the worker: `python -m WORKER WORK_DIR`, or WORKER.train(WORK_DIR)


@dataclass(frozen=True)
class RunOutcome:
    """What became of one run (Hydra's ``JobReturn``): the CLI picks the exit code from these.

    ``status`` is ``done`` (trained and evaluated; ``result`` holds its result.json), ``failed``
    (``error`` says why in one line; failed.json has the log's tail), ``skipped`` (not launched,
    or stopped before it ended: finished earlier, another process owns it, cancelled; ``note``
    says which) or ``submitted`` (handed to a scheduler with ``--detach``; ``note`` names the job).
    """

    run: Run
    status: str
    error: str | None = None
    note: str = ""
    result: Result | None = field(default=None, compare=False)

    @property
    def work_dir(self) -> Path:
        return self.run.work_dir


class RunHandle(abc.ABC):
    """One run handed to a launcher; it answers for the run until the run has ended.

    Args:
        run: the run.
        job_id: the pid or the scheduler's job id, once the run has one.
    """

    def __init__(self, run: Run, job_id: str | None = None):
        self.run = run
        self.job_id = job_id
        self.outcome: RunOutcome | None = None  # set once, when the run has ended

    @abc.abstractmethod
    def poll(self) -> RunOutcome | None:
        """The run's outcome once it has ended, else None; cheap enough to call twice a second."""

    @abc.abstractmethod
    def cancel(self) -> None:
        """Ask the run to stop and return at once (a queued run never starts); its folder stays
        resumable, and :meth:`poll` answers ``skipped`` once it has stopped."""

    def kill(self) -> None:
        """Stop the run now, where :meth:`cancel` was not heeded in time."""
        self.cancel()

    @property
    def waiting(self) -> bool:
        """Whether the run still waits for a slot or for the scheduler."""
        return False


class Launcher(abc.ABC):
    """Starts workers for runs; one handle per run reports how each ended."""

    name: ClassVar[str]
    can_detach: ClassVar[bool] = False  # whether runs go on after `ablate run` exits
    on_this_machine: ClassVar[bool] = True  # whether workers run here (and see this machine's devices)
    processes_per_run: int = 1  # the world size of one run

    @abc.abstractmethod
    def submit(self, runs: Sequence[Run]) -> list[RunHandle]:
        """Start (or queue) one worker per run; returns at once, one handle per run, in order."""

    def run_info(self) -> dict:
        """Fields of :class:`~ablate.runs.RunInfo` this backend sets in each launched run's ``run.json``."""
        return {}

    def attach(self, run: Run, info: RunInfo) -> RunHandle | None:
        """A handle on a job that an earlier ``ablate run --detach`` left queued or running, if any.

        Args:
            run: the run.
            info: its ``run.json``, which names the launcher and job id of that submission.
        """
        return None

    @classmethod
    def job_state(cls, run: Run, info: RunInfo) -> JobState | None:
        """The scheduler's word on the job ``run.json`` records, or None where no scheduler
        knows it (runs on this machine answer through their lock instead)."""
        return None

    @classmethod
    def settle(cls, run: Run, info: RunInfo, job: JobState) -> bool:
        """Record that the job ``run.json`` names has ended without a result, where no handle saw it
        end (a detached run): release the run's lock if it still carries ``info.lock_token``, and
        write ``failed.json`` with the scheduler's reason unless the worker wrote one. Returns
        whether anything changed. Runs on this machine need nothing: their lock ends with them.

        Args:
            run: the run.
            info: its ``run.json``.
            job: the scheduler's word on that job, an ended one (``job.active`` is False).
        """
        return False


def worker_command(work_dir: Path) -> list[str]:
    """The command that trains one run: ``python -m ablate.train WORK_DIR`` (see :data:`WORKER`)."""
    return [sys.executable, "-m", WORKER, str(folder.abspath(work_dir))]


def ended(run: Run, exit_code: int | None, log: Path | None, error: str | None = None) -> RunOutcome:
    """The outcome of a worker that has exited, from what it left in the run folder.

    ``result.json`` means done. Otherwise the worker's own ``failed.json`` explains the failure;
    a worker that could not write one (killed, out of memory) gets one here, with ``log``'s tail.

    Args:
        run: the run.
        exit_code: the worker's exit status (negative: killed by that signal), None if unknown.
        log: the worker's captured output, for the tail.
        error: what to record when the worker left no failed.json; default: from ``exit_code``.
    """
    try:
        result = Result.read(run.work_dir)
    except RecordError:
        result = None
    if result is not None and result.status == "done":
        return RunOutcome(run, "done", result=result)
    if exit_code == folder.EXIT_LOCKED:
        return RunOutcome(run, "skipped", note="another live process took its lock")
    try:
        failure = Failure.read(run.work_dir)
    except RecordError:
        failure = None
    if failure is None:
        error = error or describe_exit(exit_code)
        try:
            failure = folder.record_failure(run.work_dir, error, folder.tail(log), exit_code)
        except OSError as exc:  # a full disk or a read-only folder: the outcome still says why
            return RunOutcome(run, "failed", error=f"{error} (failed.json not written: {exc.strerror or exc})")
    return RunOutcome(run, "failed", error=failure.error)


def describe_exit(exit_code: int | None) -> str:
    """One line for a worker that ended without a result: its exit status or the signal that ended it."""
    if exit_code is None:
        return "the worker ended without a result (exit status unknown)"
    signum = -exit_code if exit_code < 0 else exit_code - 128 if exit_code > 128 else 0
    if signum in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
        reason = {signal.SIGKILL: " (out of memory, or kill -9)"}.get(signum, "")
        return f"the worker was killed by {signal.Signals(signum).name}{reason}"
    if exit_code == 0:
        return "the worker exited without writing result.json"
    return f"the worker exited with status {exit_code}; see failed.json's log tail"
