"""Runs as Slurm jobs, through submitit: one job per run, requeued when preempted or timed out.

Each job calls :class:`TrainJob`, which runs :func:`ablate.train.train` in the job's process (one
task per GPU, one task on CPU-only nodes; several tasks talk through torch.distributed). Slurm
signals a job (``--signal``, USR2) before its time limit, and a preemption can be announced the
same way; the job then saves a checkpoint at the end of the current iteration and requeues itself
(submitit), and the requeued job resumes from that checkpoint, as every worker does. A job that
Slurm requeues without a signal (``scontrol requeue``, preemption in ``REQUEUE`` mode) resumes
from its newest periodic checkpoint. submitit bounds only the requeues after *timeouts*
(:attr:`SlurmOptions.max_requeues`); preemptions requeue without bound.

Every job is submitted with ``--requeue``, ``--export=ALL`` (the job sees the submitting shell's
environment: the virtualenv's ``PATH``, ``PYTHONPATH``) and ``--chdir`` set to the directory
``ablate run`` ran in (relative paths of the configs, such as ``data_root``, mean the same). The
run folders and the virtualenv must be on a filesystem that the compute nodes share.

What the scheduler says of a job (:func:`query`) comes from the controller (``scontrol show
job``: squeue's state and reason) while it holds the job, then from ``sacct`` when accounting
answers, else the job is ``GONE``; a controller that does not answer leaves the job ``UNKNOWN``
and active, so that nothing is recorded as failed during an outage. submitit's own state polling
(sacct only: UNKNOWN without accounting, its warnings printed into ablate's output) is not used.

Writes submitit's files (the pickled job, the sbatch script, the job's stdout and stderr) to
``WORK_DIR/submitit/``, and for a job that ended without a result ``failed.json`` (with the
scheduler's state, exit code and reason) while releasing the run's lock (:meth:`SlurmLauncher.settle`).
Options come from the study's ``resources`` and ``slurm`` sections and from the command line
(see :meth:`SlurmOptions.from_study`). ``scheduler="local"`` runs the same jobs with submitit's
local executor on this machine, signals and requeues included.
"""
from __future__ import annotations

import dataclasses
import importlib
import math
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import submitit

from ablate.errors import LaunchError, did_you_mean, one_of
from ablate.launch import base
from ablate.launch.base import Launcher, RunHandle, RunOutcome, ended
from ablate.runs import Failure, JobState, RecordError, Result, Run, RunInfo, folder
from ablate.runs.lock import RunLock, live_holder, pid_alive
from ablate.study import Study

SUBMITIT_DIR = "submitit"
START_MARGIN_S = 60  # a job's time limit must leave this long, beyond the signal delay, to start and save
QUERY_EVERY_S = 3.0  # an attached handle asks the scheduler at most this often
ASK_TIMEOUT_S = 30  # a Slurm command that takes longer than this has not answered
# Always in the sbatch script: requeue on preemption or node failure even where the cluster's
# JobRequeue=0, and the submitting shell's environment (the venv's python, PYTHONPATH).
SBATCH_ALWAYS = {"requeue": True, "export": "ALL"}

# Slurm's job states. Ended: the job never runs again (the controller's PREEMPTED is PreemptMode
# CANCEL's; under REQUEUE it pends again); waiting: pending, or held after a requeue.
ENDED = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
         "PREEMPTED", "REVOKED", "TIMEOUT"}
WAITING = {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD", "SPECIAL_EXIT"}
GONE = "GONE"


@dataclass(frozen=True)
class SlurmOptions:
    """How each run's job is submitted (generic ``resources`` of the study, then ``slurm``)."""

    partition: str | None = None  # sbatch --partition; None: the cluster's default
    account: str | None = None  # sbatch --account charged for the jobs; None: the user's default
    qos: str | None = None  # sbatch --qos
    constraint: str | None = None  # sbatch --constraint, e.g. "a100"
    timeout_min: int = 4320  # time limit of one job in minutes (sbatch --time); on expiry it requeues
    gpus_per_run: int = 1  # GPUs of one run, one task (process) each (--gpus-per-node); 0: CPUs only, one task
    cpus_per_run: int | None = None  # CPU cores of one run, split over its tasks (--cpus-per-task); None: Slurm's default
    mem_gb: float | None = None  # memory of one job (--mem); None: the partition's default
    max_requeues: int = 3  # requeues after a timeout, then the job fails (submitit's count; preemptions are not bounded)
    signal_delay_s: int = 120  # Slurm signals the job this long before its time limit (--signal); it saves and requeues
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
        save_within_s: after the preemption/timeout signal, how long to wait for the end of an
            iteration to save a checkpoint at before requeueing without one.
    """

    def __init__(self, work_dir: str, worker: str = base.WORKER, save_within_s: float = 60.0):
        self.work_dir, self.worker, self.save_within_s = work_dir, worker, save_within_s

    def __call__(self) -> int:
        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            # RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT for torch.distributed's env:// init
            submitit.helpers.TorchDistributedEnvironment().export()
        # Before torch loads, as the local pool does: one OpenMP thread per CPU the job was given
        # (without cgroup binding torch starts one per core of the node, however many jobs share
        # it) and idle threads that sleep instead of spinning. A value the job inherits wins.
        os.environ.setdefault("OMP_NUM_THREADS", os.environ.get("SLURM_CPUS_PER_TASK", "1"))
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        worker = importlib.import_module(self.worker)  # torch and mmseg load here
        # Only rank 0 requeues (submitit's rule); a worker without the hook (a test's) keeps submitit's handler.
        if env.global_rank == 0 and hasattr(worker, "AFTER_ITERATION"):
            save_before_requeue(worker.AFTER_ITERATION, self.save_within_s)
        return worker.train(self.work_dir)


def save_before_requeue(after_iteration: list[Callable], within_s: float) -> None:
    """Make the preemption/timeout signal save a checkpoint before submitit requeues the job.

    submitit's handler (installed before the job's function runs) requeues at once, mid-iteration,
    losing everything since the last periodic checkpoint. This wraps it: the signal puts a callable
    on the worker's ``after_iteration`` list (:data:`ablate.train.AFTER_ITERATION`), which the
    training loop calls with the runner after the current iteration; it saves a checkpoint there
    and then runs submitit's handler (requeue and exit, or fail once the timeouts are used up).
    Should no iteration end within ``within_s`` (start-up, an evaluation), SIGALRM runs submitit's
    handler without a new checkpoint, before Slurm's kill.
    """
    usr_sig = getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)
    requeue = signal.getsignal(usr_sig)

    def requeue_now(*_) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        after_iteration.clear()
        requeue(usr_sig, None)

    def save_then_requeue(runner) -> None:
        try:
            save_checkpoint(runner)
        finally:  # a failed save still requeues: the job resumes from an older checkpoint
            requeue_now()

    def on_signal(*_) -> None:
        if save_then_requeue not in after_iteration:  # a second signal while waiting changes nothing
            after_iteration.append(save_then_requeue)
            signal.signal(signal.SIGALRM, requeue_now)
            signal.setitimer(signal.ITIMER_REAL, within_s)

    signal.signal(usr_sig, on_signal)


def save_checkpoint(runner) -> None:
    """Save ``iter_N.pth`` after iteration N as the config's CheckpointHook does (unless it just did)."""
    from mmengine.hooks import CheckpointHook

    hook = next((h for h in runner.hooks if isinstance(h, CheckpointHook)), None)
    if hook is None:  # the config saves no checkpoints: there is nothing to resume from anyway
        return
    if hook.last_ckpt is not None and Path(hook.last_ckpt).name == hook.filename_tmpl.format(runner.iter + 1):
        return
    runner.logger.info(f"Saving checkpoint at {runner.iter + 1} iterations before the job is requeued")
    hook._save_checkpoint(runner)  # noqa: SLF001 - mmengine is pinned; this is its own periodic save


class SlurmLauncher(Launcher):
    """Submits one submitit job per run; the jobs outlive ``ablate run`` (``--detach``).

    Raises:
        LaunchError: an unknown scheduler, no ``sbatch``, a time limit too short for the signal
            delay, or CPUs or GPUs that no node of the partition has (when ``sinfo`` answers).
    """

    name = "slurm"
    can_detach = True
    on_this_machine = False

    def __init__(self, options: SlurmOptions = SlurmOptions()):
        if options.scheduler not in ("slurm", "local"):
            raise LaunchError(f"unknown Slurm scheduler `{options.scheduler}`; choose from slurm, local")
        if options.scheduler == "slurm" and shutil.which("sbatch") is None:
            raise LaunchError("--launcher slurm: `sbatch` is not on PATH; run `ablate run` on a Slurm login node")
        if options.timeout_min * 60 < options.signal_delay_s + START_MARGIN_S:
            least = math.ceil((options.signal_delay_s + START_MARGIN_S) / 60)
            raise LaunchError(f"--time {options.timeout_min}: a job must run longer than the signal delay "
                              f"(slurm.signal_delay_s: {options.signal_delay_s} s) plus {START_MARGIN_S} s to start "
                              f"and save a checkpoint; give --time {least} or more")
        if options.scheduler == "slurm":
            check_partition(options)
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
            ntasks_per_node=o.tasks, signal_delay_s=o.signal_delay_s, partition=o.partition, account=o.account,
            qos=o.qos, constraint=o.constraint, setup=list(o.setup) or None,
            additional_parameters={**SBATCH_ALWAYS, "chdir": os.getcwd(), **o.additional},
        )
        if o.cpus_per_run:
            params["cpus_per_task"] = max(1, o.cpus_per_run // o.tasks)
        if o.gpus_per_run:  # none on CPU-only clusters: a gres request there is refused
            params["gpus_per_node"] = o.gpus_per_run
        if o.mem_gb is not None:
            params["mem"] = f"{o.mem_gb:g}GB"
        executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
        return executor

    def submission_script(self, run: Run) -> str:
        """The sbatch script that :meth:`submit` would send for ``run`` (Slurm only)."""
        executor = self.executor(run)
        # submitit builds the script inside submit(); this is the same call, without sbatch
        # (a private method: constraints.txt pins submitit).
        return executor._make_submission_file_text(executor._submitit_command_str, "0")

    def submit(self, runs: Sequence[Run]) -> list[RunHandle]:
        handles = []
        save_within_s = self.options.signal_delay_s / 2  # the other half is for the save and the requeue
        for run in runs:
            try:
                job = self.executor(run).submit(TrainJob(str(folder.abspath(run.work_dir)), base.WORKER,
                                                         save_within_s))
            except Exception as exc:  # noqa: BLE001 - sbatch refusing a job is the user's to fix
                raise LaunchError(f"{run.key}: submission failed: {str(exc).strip().splitlines()[-1]}") from None
            local = self.options.scheduler == "local"  # Slurm jobs are asked of Slurm, not of submitit
            handles.append(SlurmHandle(run, str(job.job_id), self.options.scheduler, job if local else None))
        return handles

    def run_info(self) -> dict:
        return {"scheduler": self.options.scheduler}

    def attach(self, run: Run, info: RunInfo) -> RunHandle | None:
        if info.launcher != self.name or not info.job_id or info.scheduler != self.options.scheduler:
            return None
        state = self.job_state(run, info)
        if state is None or not state.active:
            return None
        return SlurmHandle(run, info.job_id, self.options.scheduler, None)

    @classmethod
    def job_state(cls, run: Run, info: RunInfo) -> JobState | None:
        if not info.job_id:
            return None
        if info.scheduler == "local":  # the job id is the pid of submitit's local controller
            alive = info.job_id.isdigit() and pid_alive(int(info.job_id))
            return JobState(info.job_id, "RUNNING" if alive else "FINISHED", active=alive)
        return query(info.job_id)

    @classmethod
    def settle(cls, run: Run, info: RunInfo, job: JobState) -> bool:
        if job.active or not info.lock_token or (run.work_dir / Result.FILE).exists():
            return False
        holder = live_holder(run.work_dir)
        if holder is not None and holder.token != info.lock_token:
            return False  # another `ablate run` has taken the run over since
        lock = RunLock(run.work_dir, info.lock_token)
        held = lock.holder()
        changed = held is not None and held.token == info.lock_token
        lock.release()  # the job's worker can no longer release it: it is gone
        try:
            recorded = Failure.read(run.work_dir) is not None
        except RecordError:
            recorded = True  # damaged, but the worker's: read_state names it
        if not recorded:
            folder.record_failure(run.work_dir, end_message(job), folder.tail(_job_log(run, job.job_id)),
                                  job.exit_code)
        return changed or not recorded


class SlurmHandle(RunHandle):
    """A submitted job: its state comes from the scheduler (:func:`query`; local: its process).

    Args:
        run: the run.
        job_id: Slurm's job id, or the pid of submitit's local controller.
        scheduler: ``slurm`` or ``local``.
        job: submitit's job of a local job submitted by this process; None for Slurm jobs, and
            for local jobs of an earlier `ablate run` (known by the pid of their controller).
    """

    def __init__(self, run: Run, job_id: str, scheduler: str, job: submitit.Job | None):
        super().__init__(run, job_id)
        self.scheduler, self.job = scheduler, job
        self.asked_at = 0.0

    def poll(self) -> RunOutcome | None:
        if self.outcome is not None:
            return self.outcome
        if self.scheduler == "local":
            alive = not self.job.done() if self.job is not None else pid_alive(int(self.job_id))
            state = JobState(self.job_id, "RUNNING" if alive else "FINISHED", active=alive)
        else:
            if time.time() - self.asked_at < QUERY_EVERY_S:
                return None
            self.asked_at = time.time()
            state = query(self.job_id)
        if state.active:
            return None
        self.outcome = ended(self.run, state.exit_code, _job_log(self.run, self.job_id), error=end_message(state))
        return self.outcome

    def cancel(self) -> None:
        if self.outcome is not None:
            return
        if self.scheduler == "slurm":
            _ask("scancel", self.job_id)
        elif self.job is not None:
            self.job.cancel(check=False)
        else:
            return  # a local job of an earlier `ablate run`: not ours to stop
        self.outcome = RunOutcome(self.run, "skipped", note=f"job {self.job_id} cancelled")


# --------------------------------------------------------------------------- the scheduler's word


def query(job_id: str) -> JobState:
    """What Slurm says of a job: the controller while it holds the job, then sacct, else ``GONE``.

    The controller's word is the current one: a cancelled or requeued job stays COMPLETING until
    its processes are gone (up to KillWait), where sacct already says CANCELLED; a preempted job
    pends again where sacct keeps PREEMPTED; and a waiting job has squeue's reason. The controller
    forgets a job MinJobAge after its end; then accounting, when it answers, says how it ended.
    A controller that does not answer leaves the job ``UNKNOWN`` and active.
    """
    try:
        live = _from_controller(job_id)
    except _NoAnswer as exc:
        return JobState(job_id, "UNKNOWN", active=True, reason=f"no answer from Slurm: {exc}")
    if live is not None:
        return live
    accounted = _from_sacct(job_id)
    if accounted is not None and not accounted.active:
        return accounted
    last = f"; sacct last recorded it {accounted.state}" if accounted is not None else ""
    return JobState(job_id, GONE, active=False, reason=f"neither the controller nor sacct knows it{last}")


class _NoAnswer(Exception):
    """The controller did not answer (down, unreachable, a client missing): says nothing of the job."""


def _from_sacct(job_id: str) -> JobState | None:
    """The job's last allocation as accounting records it; None without accounting or a record."""
    code, out = _ask("sacct", "-X", "-n", "-P", "-j", job_id, "-o", "JobID,State,ExitCode,Reason")
    if code != 0:  # "Slurm accounting storage is disabled", or sacct missing
        return None
    for line in out.splitlines():
        fields = line.split("|")
        if len(fields) == 4 and fields[0] == job_id:
            return _job_state(job_id, fields[1], fields[2], fields[3])
    return None


def _from_controller(job_id: str) -> JobState | None:
    """The job as slurmctld holds it (for MinJobAge after it ends); None when it does not know it."""
    code, out = _ask("scontrol", "show", "job", "-o", job_id)
    if code != 0:
        if "Invalid job id" in out:
            return None
        raise _NoAnswer(out.strip().splitlines()[-1] if out.strip() else f"scontrol exited with {code}")
    fields = dict(re.findall(r"(?:^|\s)(JobState|Reason|ExitCode)=(\S*)", out))
    if "JobState" not in fields:
        raise _NoAnswer(f"unexpected `scontrol show job` output: {out.strip()[:200]}")
    return _job_state(job_id, fields["JobState"], fields.get("ExitCode", ""), fields.get("Reason", ""))


def _job_state(job_id: str, word: str, exit_code: str, reason: str) -> JobState:
    """A JobState from Slurm's words: ``CANCELLED by 0``, exit code ``0:15`` (status:signal), reason."""
    word = (word.split() or ["UNKNOWN"])[0].rstrip("+").upper()
    reason = None if reason in ("", "None", "(null)") else reason
    status, _, signum = exit_code.partition(":")
    code = -int(signum) if signum.isdigit() and int(signum) else int(status) if status.isdigit() else None
    if word not in ENDED:
        return JobState(job_id, word, active=True, queued=word in WAITING, reason=reason)
    return JobState(job_id, word, active=False, reason=reason, exit_code=code)


def end_message(job: JobState) -> str:
    """One line for a job that ended without a result: the scheduler's state, exit code, reason."""
    if job.state == GONE:
        return f"job {job.job_id} is gone: {job.reason} (it ended without a result)"
    details = [_describe_code(job.exit_code)] if job.exit_code else []
    details += [f"reason {job.reason}"] if job.reason else []
    return f"job {job.job_id} ended {job.state} without a result" + (f" ({', '.join(details)})" if details else "")


def _describe_code(exit_code: int) -> str:
    """``exit status 1``, ``killed by SIGTERM``."""
    if exit_code >= 0:
        return f"exit status {exit_code}"
    try:
        return f"killed by {signal.Signals(-exit_code).name}"
    except ValueError:
        return f"killed by signal {-exit_code}"


def _ask(*command: str) -> tuple[int, str]:
    """Run a Slurm client command: (exit status, stdout and stderr); 127 when it is not installed."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=ASK_TIMEOUT_S)
    except FileNotFoundError:
        return 127, f"{command[0]}: not found"
    except subprocess.TimeoutExpired:
        return 124, f"{command[0]}: no answer within {ASK_TIMEOUT_S} s"
    return done.returncode, done.stdout + done.stderr


# --------------------------------------------------------------------------- the partition


def check_partition(options: SlurmOptions) -> None:
    """Refuse CPUs or GPUs per run that no node of the partition has (when ``sinfo`` answers).

    Slurm itself accepts such a job and leaves it pending forever (reason ``PartitionConfig``),
    or refuses a GPU request on a cluster without GPUs with "Invalid generic resource".
    """
    code, out = _ask("sinfo", "-h", "-N", "-o", "%P|%c|%G")
    if code != 0:
        return
    nodes: dict[str, list[tuple[int, int]]] = {}
    default = None
    for line in out.splitlines():
        fields = line.split("|")
        if len(fields) != 3 or not fields[1].rstrip("+").isdigit():
            continue
        name = fields[0].rstrip("*")
        default = name if fields[0].endswith("*") else default
        gpus = sum(int(n) for n in re.findall(r"(?:^|,)gpu(?::[^:,(]+)?:(\d+)", fields[2]))
        nodes.setdefault(name, []).append((int(fields[1].rstrip("+")), gpus))
    partition = options.partition or default
    if partition is None or not nodes:
        return
    if partition not in nodes:
        raise LaunchError(f"--partition: {one_of(partition, 'Slurm partition', sorted(nodes))}")
    cpus, gpus = max(c for c, _ in nodes[partition]), max(g for _, g in nodes[partition])
    if options.cpus_per_run and options.cpus_per_run > cpus:
        raise LaunchError(f"cpus_per_run {options.cpus_per_run} (--cpus-per-run, resources.cpus_per_run): partition "
                          f"`{partition}` has at most {cpus} CPUs per node")
    if options.gpus_per_run > gpus:
        has = f"at most {gpus} GPUs per node" if gpus else "no GPUs (no gres/gpu); --gpus-per-run 0 runs on CPUs"
        raise LaunchError(f"gpus_per_run {options.gpus_per_run} (--gpus-per-run, resources.gpus_per_run): "
                          f"partition `{partition}` has {has}")


def _job_log(run: Run, job_id: str | None) -> Path | None:
    """The stderr file of a job's first task (where a traceback lands; requeues append to it)."""
    if not job_id:
        return None
    return folder.abspath(run.work_dir) / SUBMITIT_DIR / f"{job_id}_0_log.err"
