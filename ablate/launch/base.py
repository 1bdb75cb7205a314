"""The launcher interface: submit runs, poll them, cancel them; failures come back as values.

A backend is one small class (as a submitit ``Executor`` or a Hydra ``Launcher``): it starts the
worker (``python -m ablate.train WORK_DIR``, see :mod:`ablate.train`) for each run it is given and
turns a finished worker into a :class:`RunOutcome`. It reads the run folder to decide the outcome
(``result.json`` means done) and writes ``failed.json`` only for a worker that died without
writing one itself (killed, out of memory). Everything else in the run folder is the business of
:mod:`ablate.launch.orchestrate` (before the launch) and of the worker (during it).
"""
from __future__ import annotations

import abc
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

from ablate.launch import rundir
from ablate.study import Run

STATUSES = ("done", "failed", "skipped", "submitted")
WORKER = "ablate.train"  # module run as the worker: `python -m WORKER WORK_DIR`, or WORKER.train(WORK_DIR)


@dataclass(frozen=True)
class RunOutcome:
    """What became of one run (Hydra's ``JobReturn``): the CLI picks the exit code from these.

    ``status`` is ``done`` (trained and evaluated; ``result`` holds its result.json), ``failed``
    (``error`` says why in one line; failed.json has the log's tail), ``skipped`` (not launched:
    finished earlier, or another process owns it; ``note`` says which) or ``submitted`` (handed to
    a scheduler with ``--detach``; ``note`` names the job).
    """

    run: Run
    status: str
    error: str | None = None
    note: str = ""
    result: dict | None = field(default=None, compare=False)

    @property
    def work_dir(self) -> Path:
        return self.run.work_dir


@dataclass(eq=False)
class RunHandle:
    """A run handed to a launcher; ``job_id`` is the pid or scheduler id once it has one."""

    run: Run
    job_id: str | None = None
    native: Any = None  # the backend's own object: a Popen, a submitit Job
    outcome: RunOutcome | None = None  # set once, when the run has ended


class Launcher(abc.ABC):
    """Starts workers for runs and reports how each ended."""

    name: ClassVar[str]
    processes_per_run: int = 1  # the world size of one run
    can_detach: ClassVar[bool] = False  # whether runs go on after `ablate run` exits

    @abc.abstractmethod
    def submit(self, runs: Sequence[Run]) -> list[RunHandle]:
        """Start (or queue) one worker per run; returns at once, one handle per run, in order."""

    @abc.abstractmethod
    def poll(self, handle: RunHandle) -> RunOutcome | None:
        """The run's outcome once it has ended, else None; cheap enough to call twice a second."""

    @abc.abstractmethod
    def cancel(self, handle: RunHandle) -> None:
        """Stop the run (a queued one never starts); its folder stays resumable."""

    def warm_up(self) -> None:
        """Get ready to launch: called once, when there are runs to launch, before their folders
        are prepared (configs written), so that slow preparations can overlap with that."""

    def run_info(self) -> dict:
        """Keys this backend adds to each launched run's ``run.json``."""
        return {}

    def attach(self, run: Run, info: dict) -> RunHandle | None:
        """A handle on a job that an earlier ``ablate run --detach`` left running, if it still runs.

        Args:
            run: the run.
            info: its ``run.json``, which names the launcher and job id of that submission.
        """
        return None


def worker_command(work_dir: Path) -> list[str]:
    """The command that trains one run: ``python -m ablate.train WORK_DIR`` (see :data:`WORKER`)."""
    return [sys.executable, "-m", WORKER, str(rundir.abspath(work_dir))]


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
    result = rundir.read(run.work_dir, rundir.RESULT)
    if result is not None and result.get("status") == "done":
        return RunOutcome(run, "done", result=result)
    if exit_code == rundir.EXIT_LOCKED:
        return RunOutcome(run, "skipped", note="another live process took its lock")
    failed = rundir.read(run.work_dir, rundir.FAILED)
    if failed is None:
        error = error or describe_exit(exit_code)
        rundir.write_failed(run.work_dir, error, rundir.tail(log) if log else "", exit_code)
        return RunOutcome(run, "failed", error=error)
    return RunOutcome(run, "failed", error=str(failed.get("error") or describe_exit(exit_code)))


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
