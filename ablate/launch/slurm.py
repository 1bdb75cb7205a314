"""Runs as Slurm jobs, through submitit: one job per run, requeued when preempted or timed out.

Each job calls :class:`TrainJob`, which runs :func:`ablate.train.train` in the job's process (one
task per GPU; several tasks talk through torch.distributed). When Slurm signals a preemption or
the end of the time limit, submitit asks the job to checkpoint; :class:`TrainJob` simply requeues
itself, and the requeued job resumes from the run's newest checkpoint, as every worker does. At
most :attr:`SlurmOptions.max_requeues` requeues happen per job.

Writes submitit's files (the pickled job, the sbatch script, the job's stdout and stderr) to
``WORK_DIR/submitit/``. Options come from the study's ``resources`` and ``slurm`` sections and
from the command line (see :meth:`SlurmOptions.from_study`). ``scheduler="local"`` runs the same
jobs with submitit's local executor on this machine, signals and requeues included; the tests use
it, since no Slurm cluster is at hand.
"""
from __future__ import annotations

import dataclasses
import importlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import submitit

from ablate.errors import LaunchError, did_you_mean
from ablate.launch import base
from ablate.launch.base import Launcher, RunHandle, RunOutcome, ended
from ablate.runs import JobState, Run, RunInfo, folder
from ablate.runs.lock import pid_alive
from ablate.study import Study

SUBMITIT_DIR = "submitit"
_ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL",
          "DEADLINE", "PREEMPTED", "FINISHED", "INTERRUPTED", "NO PROCESS AND NO RESULT"}


@dataclass(frozen=True)
class SlurmOptions:
    """How each run's job is submitted (generic ``resources`` of the study, then ``slurm``)."""

    partition: str | None = None  # sbatch --partition; None: the cluster's default
    account: str | None = None  # sbatch --account charged for the jobs; None: the user's default
    qos: str | None = None  # sbatch --qos
    constraint: str | None = None  # sbatch --constraint, e.g. "a100"
    timeout_min: int = 4320  # time limit of one job in minutes (sbatch --time); on expiry it requeues
    gpus_per_run: int = 1  # GPUs of one run, one task (process) each (--gpus-per-node, --ntasks-per-node)
    cpus_per_run: int = 8  # CPU cores of one run, split over its tasks (--cpus-per-task)
    mem_gb: float | None = None  # memory of one job (--mem); None: the partition's default
    max_requeues: int = 3  # preemptions or timeouts after which a job is not requeued again
    signal_delay_s: int = 120  # Slurm signals the job this long before its time limit (--signal)
    setup: tuple[str, ...] = ()  # shell lines run before the job, e.g. "module load cuda/12.1"
    additional: dict[str, Any] = field(default_factory=dict)  # further sbatch options, {"mail-type": "END"}
    scheduler: str = "slurm"  # "slurm"; "local": submitit's local executor, jobs on this machine (tests)

    @classmethod
    def from_study(cls, study: Study, **overrides: Any) -> "SlurmOptions":
        """Options from the study's ``resources`` and ``slurm`` sections, then ``overrides`` (not None).

        Raises:
            LaunchError: an unknown key in either section.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        generic = {"gpus_per_run", "cpus_per_run", "timeout_min", "mem_gb"}
        values: dict[str, Any] = {}
        problems = []
        for section, allowed in (("resources", generic), ("slurm", names)):
            for key, value in (getattr(study, section) or {}).items():
                if section == "resources" and key == "total_batch":  # the config's, not the job's
                    continue
                if key not in allowed:
                    problems.append(f"{study.path.name}: `{section}.{key}` is not a Slurm option"
                                    + did_you_mean(key, sorted(allowed)))
                elif value is not None:
                    values[key] = tuple(value) if key == "setup" else value
        if problems:
            raise LaunchError("\n".join(problems))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @property
    def tasks(self) -> int:
        return max(1, self.gpus_per_run)


class TrainJob(submitit.helpers.Checkpointable):
    """What a job runs: the worker, in-process; requeued as it is on preemption or timeout.

    Args:
        work_dir: the run folder (absolute).
        worker: the worker module, whose ``train(work_dir)`` runs (:data:`ablate.launch.base.WORKER`).
    """

    def __init__(self, work_dir: str, worker: str = base.WORKER):
        self.work_dir, self.worker = work_dir, worker

    def __call__(self) -> int:
        if submitit.JobEnvironment().num_tasks > 1:
            # RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT for torch.distributed's env:// init
            submitit.helpers.TorchDistributedEnvironment().export()
        return importlib.import_module(self.worker).train(self.work_dir)  # torch and mmseg load here


class SlurmLauncher(Launcher):
    """Submits one submitit job per run; the jobs outlive ``ablate run`` (``--detach``)."""

    name = "slurm"
    can_detach = True
    on_this_machine = False

    def __init__(self, options: SlurmOptions = SlurmOptions()):
        if options.scheduler not in ("slurm", "local"):
            raise LaunchError(f"unknown Slurm scheduler `{options.scheduler}`; choose from slurm, local")
        if options.scheduler == "slurm" and shutil.which("sbatch") is None:
            raise LaunchError("--launcher slurm: `sbatch` is not on PATH; run `ablate run` on a Slurm login node")
        self.options = options
        self.processes_per_run = options.tasks

    def executor(self, run: Run) -> submitit.Executor:
        """The submitit executor of one run, its parameters set."""
        o = self.options
        logs = folder.abspath(run.work_dir) / SUBMITIT_DIR
        if o.scheduler == "local":
            executor = submitit.LocalExecutor(logs, max_num_timeout=o.max_requeues)
            executor.update_parameters(timeout_min=o.timeout_min, gpus_per_node=o.gpus_per_run,
                                       tasks_per_node=o.tasks, signal_delay_s=o.signal_delay_s,
                                       setup=list(o.setup))
            return executor
        executor = submitit.SlurmExecutor(logs, max_num_timeout=o.max_requeues)
        params: dict[str, Any] = dict(
            job_name=f"{run.study}-{run.variant}-seed{run.seed}", time=o.timeout_min, nodes=1,
            ntasks_per_node=o.tasks, cpus_per_task=max(1, o.cpus_per_run // o.tasks),
            signal_delay_s=o.signal_delay_s, partition=o.partition, account=o.account, qos=o.qos,
            constraint=o.constraint, setup=list(o.setup) or None, additional_parameters=dict(o.additional) or None,
        )
        if o.gpus_per_run:
            params["gpus_per_node"] = o.gpus_per_run
        if o.mem_gb is not None:
            params["mem"] = f"{o.mem_gb:g}GB"
        executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
        return executor

    def submission_script(self, run: Run) -> str:
        """The sbatch script that :meth:`submit` would send for ``run`` (Slurm only)."""
        executor = self.executor(run)
        # submitit builds the script inside submit(); this is the same call, without sbatch.
        return executor._make_submission_file_text(executor._submitit_command_str, "0")

    def submit(self, runs: Sequence[Run]) -> list[RunHandle]:
        handles = []
        for run in runs:
            try:
                job = self.executor(run).submit(TrainJob(str(folder.abspath(run.work_dir)), base.WORKER))
            except Exception as exc:  # noqa: BLE001 - sbatch refusing a job is the user's to fix
                raise LaunchError(f"{run.key}: submission failed: {str(exc).strip().splitlines()[-1]}") from None
            handles.append(SlurmHandle(run, str(job.job_id), job))
        return handles

    def run_info(self) -> dict:
        return {"scheduler": self.options.scheduler}

    def attach(self, run: Run, info: RunInfo) -> RunHandle | None:
        if info.launcher != self.name or not info.job_id or info.scheduler != self.options.scheduler:
            return None
        state = self.job_state(run, info)
        if state is None or not state.active:
            return None
        if self.options.scheduler == "local":
            return SlurmHandle(run, info.job_id, None)
        return SlurmHandle(run, info.job_id, submitit.SlurmJob(run.work_dir / SUBMITIT_DIR, info.job_id))

    @classmethod
    def job_state(cls, run: Run, info: RunInfo) -> JobState | None:
        if not info.job_id:
            return None
        if info.scheduler == "local":  # the job id is the pid of submitit's local controller
            alive = info.job_id.isdigit() and pid_alive(int(info.job_id))
            return JobState(info.job_id, "RUNNING" if alive else "FINISHED", active=alive)
        word = submitit.SlurmJob(run.work_dir / SUBMITIT_DIR, info.job_id).state.upper()
        finished = word.split()[0] in _ENDED or word in _ENDED
        return JobState(info.job_id, word, active=not finished, queued=word.startswith("PENDING"))


class SlurmHandle(RunHandle):
    """A submitted job: its state comes from the scheduler (submitit's view of sacct)."""

    def __init__(self, run: Run, job_id: str, job: submitit.Job | None):
        super().__init__(run, job_id)
        self.job = job  # None: a local-scheduler job of an earlier `ablate run`, known by its pid

    def poll(self) -> RunOutcome | None:
        if self.outcome is not None:
            return self.outcome
        if self.job is None:
            if pid_alive(int(self.job_id)):
                return None
            state = "FINISHED"
        else:
            if not self.job.done():
                return None
            state = self.job.state
        log = _job_log(self.run, self.job_id)
        self.outcome = ended(self.run, None, log, error=f"job {self.job_id} ended ({state}) without a result")
        return self.outcome

    def cancel(self) -> None:
        if self.job is not None and self.outcome is None:
            self.job.cancel(check=False)
            self.outcome = RunOutcome(self.run, "skipped", note=f"job {self.job_id} cancelled")


def _job_log(run: Run, job_id: str | None) -> Path | None:
    """The stderr file of a job's first task (where a traceback lands)."""
    if not job_id:
        return None
    return folder.abspath(run.work_dir) / SUBMITIT_DIR / f"{job_id}_0_log.err"
