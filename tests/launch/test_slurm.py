"""The Slurm launcher without a cluster: the launcher contract through submitit's local executor,
the generated sbatch script, options from the study and their checks (time limit, partition
sizes from sinfo), job states read from Slurm's answers (as Slurm 22.05 prints them),
how an ended job is settled, the checkpoint on the preemption/timeout signal, --detach, and
requeue-and-resume. tests/slurm/ runs the same against a real slurmctld."""
import json
import os
import signal
import time
from types import SimpleNamespace

import pytest

from ablate.errors import LaunchError
from ablate.launch import slurm
from ablate.launch.slurm import SlurmLauncher, SlurmOptions, end_message, query, save_before_requeue
from ablate.runs import Failure, JobState, RunInfo, WorkRoot, folder
from ablate.runs.lock import RunLock
from ablate.study import load_study

from .contract import LauncherContract

# What Slurm 22.05 answers (accounting off, then on), as the commands print it.
SACCT_OFF = (1, "Slurm accounting storage is disabled\n")
UNKNOWN_JOB = (1, "slurm_load_jobs error: Invalid job id specified\n")
NO_CONTROLLER = (1, "slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n")
SINFO = (0, "debug*|2|(null)\nhigh|2|(null)\ngpu|64|gpu:a100:4(S:0-1)\ngpu|32|gpu:2,tmpdisk:100\n")


def scontrol(state: str, reason: str = "None", exit_code: str = "0:0", job_id: str = "12") -> tuple[int, str]:
    return 0, (f"JobId={job_id} JobName=tiny-a-seed0 UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=4294901759 "
               f"Nice=0 Account=(null) QOS=(null) JobState={state} Reason={reason} Dependency=(null) Requeue=1 "
               f"Restarts=1 BatchFlag=1 Reboot=0 ExitCode={exit_code} RunTime=00:00:01 TimeLimit=00:30:00 "
               "NodeList=node1 BatchHost=node1 NumNodes=1 NumCPUs=1 NumTasks=1 CPUs/Task=1 WorkDir=/tmp/a b\n")


def sacct(state: str, exit_code: str = "0:0", reason: str = "None", job_id: str = "12") -> tuple[int, str]:
    return 0, f"{job_id}|{state}|{exit_code}|{reason}\n"


@pytest.fixture
def slurm_says(monkeypatch):
    """``slurm_says(sacct=(code, output), scontrol=..., sinfo=...)``: what Slurm's commands answer;
    a command not given is not installed. Returns the list of commands asked."""
    asked = []

    def say(**answers):
        def ask(*command):
            asked.append(command)
            return answers.get(command[0], (127, f"{command[0]}: not found"))

        monkeypatch.setattr(slurm, "_ask", ask)
        monkeypatch.setattr(slurm.shutil, "which", lambda name: f"/usr/bin/{name}")
        return asked

    return say


class TestSlurmLauncher(LauncherContract):
    def make_launcher(self):
        return SlurmLauncher(SlurmOptions(scheduler="local", timeout_min=10))


# --------------------------------------------------------------------------- the sbatch script


def test_the_submission_script_carries_the_options(tmp_path, slurm_says):
    slurm_says(sinfo=SINFO)
    options = SlurmOptions(partition="gpu", account="proj42", qos="high", timeout_min=600, gpus_per_run=2,
                           cpus_per_run=16, mem_gb=64, signal_delay_s=120, setup=("module load cuda/12.1",),
                           additional={"mail-type": "END"})
    run = WorkRoot(tmp_path).run("table2", "paper", "dwt", 1)
    script = SlurmLauncher(options).submission_script(run)
    submitit_dir = run.work_dir / "submitit"
    for directive in ("--partition=gpu", "--account=proj42", "--qos=high", "--time=600", "--nodes=1",
                      "--gpus-per-node=2", "--ntasks-per-node=2", "--cpus-per-task=8", "--mem=64GB",
                      "--signal=USR2@120", "--job-name=table2-dwt-seed1", "--mail-type=END", "--requeue",
                      "--export=ALL", f"--chdir={os.getcwd()}",
                      f"--output={submitit_dir}/%j_0_log.out", f"--error={submitit_dir}/%j_0_log.err"):
        assert f"#SBATCH {directive}\n" in script, directive
    assert "module load cuda/12.1" in script
    assert "submitit.core._submit" in script and "export SUBMITIT_EXECUTOR=slurm" in script


def test_a_cpu_only_run_asks_for_no_gpus_and_slurms_default_cpus(tmp_path, slurm_says):
    slurm_says(sinfo=SINFO)
    launcher = SlurmLauncher(SlurmOptions(gpus_per_run=0))
    script = launcher.submission_script(WorkRoot(tmp_path).run("tiny", "smoke", "a", 0))
    assert launcher.processes_per_run == 1 and "#SBATCH --ntasks-per-node=1\n" in script
    assert "gpu" not in script and "gres" not in script and "--cpus-per-task" not in script


def test_gpus_per_run_0_is_a_slurm_option_only(tiny_study):
    from ablate.launch import make_launcher

    tiny_study.write_text(tiny_study.read_text().replace('"gpus_per_run": 1', '"gpus_per_run": 0'))
    launcher = make_launcher("slurm", load_study("tiny"))
    assert launcher.options.gpus_per_run == 0 and launcher.processes_per_run == 1
    with pytest.raises(LaunchError, match="--gpus-per-run 0: must be at least 1"):
        make_launcher("torchrun", load_study("tiny"), gpus_per_run=0)


def test_without_sbatch_slurm_is_refused(monkeypatch):
    monkeypatch.setattr(slurm.shutil, "which", lambda name: None)
    with pytest.raises(LaunchError, match="`sbatch` is not on PATH"):
        SlurmLauncher(SlurmOptions())


def test_a_time_limit_shorter_than_the_signal_delay_and_start_up_is_refused(slurm_says):
    slurm_says()
    with pytest.raises(LaunchError) as error:
        SlurmLauncher(SlurmOptions(timeout_min=2, signal_delay_s=120))
    assert str(error.value) == ("--time 2: a job must run longer than the signal delay (slurm.signal_delay_s: 120 s) "
                                "plus 60 s to start and save a checkpoint; give --time 3 or more")
    SlurmLauncher(SlurmOptions(timeout_min=3, signal_delay_s=120))


@pytest.mark.parametrize("options, message", [
    (dict(cpus_per_run=8, gpus_per_run=0), "cpus_per_run 8 (--cpus-per-run, resources.cpus_per_run): partition "
                                           "`debug` has at most 2 CPUs per node"),
    (dict(gpus_per_run=1), "gpus_per_run 1 (--gpus-per-run, resources.gpus_per_run): partition `debug` has no GPUs "
                           "(no gres/gpu); --gpus-per-run 0 runs on CPUs"),
    (dict(partition="gpu", gpus_per_run=8), "partition `gpu` has at most 4 GPUs per node"),
    (dict(partition="gpu", cpus_per_run=96), "partition `gpu` has at most 64 CPUs per node"),
    (dict(partition="hihg", gpus_per_run=0), "--partition: unknown Slurm partition `hihg`; did you mean `high`?; "
                                             "choose from debug, gpu, high"),
])
def test_cpus_and_gpus_are_checked_against_the_partitions_nodes(slurm_says, options, message):
    slurm_says(sinfo=SINFO)
    with pytest.raises(LaunchError) as error:
        SlurmLauncher(SlurmOptions(**options))
    assert message in str(error.value) and "\n" not in str(error.value)
    SlurmLauncher(SlurmOptions(partition="gpu", gpus_per_run=4, cpus_per_run=64))


def test_without_an_answer_from_sinfo_nothing_is_checked(slurm_says):
    asked = slurm_says(sinfo=(1, "sinfo: error: Unable to contact slurm controller (connect failure)\n"))
    SlurmLauncher(SlurmOptions(cpus_per_run=512, gpus_per_run=8))
    assert asked[0][0] == "sinfo"


def test_options_come_from_the_study_then_the_flags(tiny_study):
    study = load_study("tiny")
    options = SlurmOptions.from_study(study, partition="a100", timeout_min=None)
    assert (options.partition, options.timeout_min, options.cpus_per_run, options.scheduler) == ("a100", 30, 2, "local")


def test_an_unknown_study_option_is_named(tiny_study):
    tiny_study.write_text(tiny_study.read_text().replace('"scheduler": "local"', '"partitoin": "gpu"'))
    with pytest.raises(LaunchError, match=r"`slurm.partitoin` is not a Slurm option; did you mean `partition`\?"):
        SlurmOptions.from_study(load_study("tiny"))


# --------------------------------------------------------------------------- job states


@pytest.mark.parametrize("answers, expected", [
    # the controller, while it holds the job (accounting on or off)
    (dict(sacct=SACCT_OFF, scontrol=scontrol("RUNNING")), JobState("12", "RUNNING", active=True)),
    (dict(sacct=SACCT_OFF, scontrol=scontrol("PENDING", "PartitionConfig")),
     JobState("12", "PENDING", active=True, queued=True, reason="PartitionConfig")),
    (dict(sacct=SACCT_OFF, scontrol=scontrol("CANCELLED", exit_code="0:15")),
     JobState("12", "CANCELLED", active=False, exit_code=-15)),
    (dict(sacct=SACCT_OFF, scontrol=scontrol("FAILED", "NonZeroExitCode", "1:0")),
     JobState("12", "FAILED", active=False, reason="NonZeroExitCode", exit_code=1)),
    # sacct says CANCELLED at once; the job's processes are killed (KillWait) while the controller says
    (dict(sacct=sacct("CANCELLED by 0"), scontrol=scontrol("COMPLETING")), JobState("12", "COMPLETING", active=True)),
    # sacct keeps PREEMPTED for the attempt; the job pends again
    (dict(sacct=sacct("PREEMPTED"), scontrol=scontrol("PENDING", "BeginTime")),
     JobState("12", "PENDING", active=True, queued=True, reason="BeginTime")),
    # the controller has forgotten it (MinJobAge): sacct says how it ended, else it is gone
    (dict(sacct=sacct("TIMEOUT", "0:1", "TimeLimit"), scontrol=UNKNOWN_JOB),
     JobState("12", "TIMEOUT", active=False, reason="TimeLimit", exit_code=-1)),
    (dict(sacct=sacct("PREEMPTED", "0:15"), scontrol=UNKNOWN_JOB),
     JobState("12", "PREEMPTED", active=False, exit_code=-15)),
    (dict(sacct=SACCT_OFF, scontrol=UNKNOWN_JOB),
     JobState("12", "GONE", active=False, reason="neither the controller nor sacct knows it")),
    (dict(sacct=(0, ""), scontrol=UNKNOWN_JOB),
     JobState("12", "GONE", active=False, reason="neither the controller nor sacct knows it")),
    (dict(sacct=sacct("RUNNING"), scontrol=UNKNOWN_JOB),
     JobState("12", "GONE", active=False, reason="neither the controller nor sacct knows it; sacct last "
                                                 "recorded it RUNNING")),
    # a controller that does not answer says nothing: the job is not taken for ended
    (dict(sacct=sacct("CANCELLED by 0"), scontrol=NO_CONTROLLER),
     JobState("12", "UNKNOWN", active=True, reason="no answer from Slurm: slurm_load_jobs error: Unable to contact "
                                                    "slurm controller (connect failure)")),
    (dict(), JobState("12", "UNKNOWN", active=True, reason="no answer from Slurm: scontrol: not found")),
])
def test_the_job_state_comes_from_the_controller_else_sacct_else_it_is_gone(slurm_says, answers, expected):
    slurm_says(**answers)
    assert query("12") == expected


def test_an_ended_job_is_described_by_its_state_exit_code_and_reason():
    assert end_message(JobState("7", "CANCELLED", False, exit_code=-15)) == (
        "job 7 ended CANCELLED without a result (killed by SIGTERM)")
    assert end_message(JobState("7", "FAILED", False, reason="NonZeroExitCode", exit_code=1)) == (
        "job 7 ended FAILED without a result (exit status 1, reason NonZeroExitCode)")
    assert end_message(JobState("7", "GONE", False, reason="neither the controller nor sacct knows it")) == (
        "job 7 is gone: neither the controller nor sacct knows it (it ended without a result)")


# --------------------------------------------------------------------------- settling an ended job


@pytest.fixture
def launched(tmp_path):
    """A run that `ablate run --detach` launched as Slurm job 12, its lock held by the job's worker on node1."""
    run = WorkRoot(tmp_path).run("tiny", "smoke", "a", 0)
    RunInfo(launcher="slurm", scheduler="slurm", job_id="12", lock_token="tok").write(run.work_dir)
    (run.work_dir / "lock").write_text("4242 node1 tok worker -\n")  # fresh: live for 10 minutes
    (run.work_dir / "submitit").mkdir()
    (run.work_dir / "submitit" / "12_0_log.err").write_text("srun: error: node1: task 0: Terminated\n")
    return run


def test_a_job_that_ended_unseen_fails_with_the_schedulers_reason_and_frees_its_lock(launched, slurm_says):
    from ablate.launch import job_state, settle
    from ablate.runs import RunStatus, read_state

    slurm_says(sacct=SACCT_OFF, scontrol=scontrol("CANCELLED", exit_code="0:15"))
    before = read_state(launched, job_state=job_state)
    assert before.status is RunStatus.RUNNING and before.holder is not None  # the lock alone says so
    assert settle(before) is True
    after = read_state(launched, job_state=job_state)
    assert after.status is RunStatus.FAILED and after.holder is None and not (launched.work_dir / "lock").exists()
    assert after.error == "job 12 ended CANCELLED without a result (killed by SIGTERM)"
    assert after.failure.exit_code == -15 and "task 0: Terminated" in after.failure.log_tail
    assert settle(after) is False  # once is enough


def test_settling_keeps_the_workers_own_failure_and_other_launches_locks(launched, slurm_says):
    from ablate.launch import job_state, settle
    from ablate.runs import read_state

    slurm_says(sacct=SACCT_OFF, scontrol=scontrol("COMPLETED"))
    folder.record_failure(launched.work_dir, "ValueError at iteration 3: bad", "tail", 1)
    assert settle(read_state(launched, job_state=job_state)) is True  # the lock only
    assert Failure.read(launched.work_dir).error == "ValueError at iteration 3: bad"
    (launched.work_dir / "failed.json").unlink()
    RunLock(launched.work_dir, "other").acquire()  # a later `ablate run` took it over
    assert settle(read_state(launched, job_state=job_state)) is False
    assert not (launched.work_dir / "failed.json").exists() and (launched.work_dir / "lock").exists()


def test_a_running_or_unanswered_job_is_not_settled(launched, slurm_says):
    from ablate.launch import job_state, settle
    from ablate.runs import read_state

    for answers in (dict(sacct=SACCT_OFF, scontrol=scontrol("RUNNING")), dict(sacct=SACCT_OFF, scontrol=NO_CONTROLLER)):
        slurm_says(**answers)
        assert settle(read_state(launched, job_state=job_state)) is False
        assert (launched.work_dir / "lock").exists() and not (launched.work_dir / "failed.json").exists()


# --------------------------------------------------------------------------- the signal: save, then requeue


@pytest.fixture
def submitit_handler():
    """A stand-in for submitit's preemption/timeout handler (requeue and exit); restores the signals."""
    calls = []
    saved = {s: signal.getsignal(s) for s in (signal.SIGUSR2, signal.SIGALRM)}
    signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    yield calls
    signal.setitimer(signal.ITIMER_REAL, 0)
    for s, handler in saved.items():
        signal.signal(s, handler)


def test_the_signal_asks_for_a_checkpoint_after_the_iteration_then_requeues(submitit_handler, monkeypatch):
    saved = []
    monkeypatch.setattr(slurm, "save_checkpoint", saved.append)
    after_iteration = []
    save_before_requeue(after_iteration, within_s=30)
    os.kill(os.getpid(), signal.SIGUSR2)
    os.kill(os.getpid(), signal.SIGUSR2)  # a second signal while waiting changes nothing
    assert len(after_iteration) == 1 and submitit_handler == []  # nothing happens mid-iteration
    after_iteration.pop(0)("runner")  # what ProgressHook.after_train_iter does
    assert saved == ["runner"] and submitit_handler == [signal.SIGUSR2]
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_without_an_iteration_ending_in_time_the_job_requeues_without_a_checkpoint(submitit_handler):
    after_iteration = []
    save_before_requeue(after_iteration, within_s=0.2)
    os.kill(os.getpid(), signal.SIGUSR2)
    deadline = time.time() + 5
    while not submitit_handler and time.time() < deadline:
        time.sleep(0.05)
    assert submitit_handler == [signal.SIGUSR2] and after_iteration == []


def test_the_training_loop_runs_what_was_asked_after_its_iteration(tmp_path):
    from ablate import train

    hook = train.ProgressHook(tmp_path, time.time(), write=False)
    ran = []
    train.AFTER_ITERATION.append(ran.append)
    runner = SimpleNamespace(iter=6)
    hook.after_train_iter(runner, 6)
    assert ran == [runner] and train.AFTER_ITERATION == []


# --------------------------------------------------------------------------- submitit's local executor


def test_detach_returns_at_once_and_a_later_run_picks_up_the_result(tiny_study, fake_worker):
    from typer.testing import CliRunner

    from ablate.cli import app

    cli = CliRunner()
    study = load_study("tiny")
    (run,) = study.runs("smoke", variants=["a"])
    fake_worker.set(run.work_dir, sleep=4)
    start = time.time()
    first = cli.invoke(app, ["run", "tiny", "-p", "smoke", "--variants", "a", "--launcher", "slurm", "--detach"])
    assert first.exit_code == 0, first.output
    assert time.time() - start < 10 and "1 submitted" in first.output
    info = RunInfo.read(run.work_dir)
    assert info.launcher == "slurm" and info.scheduler == "local" and info.job_id
    # While the job runs, a local `ablate run` leaves it alone, and `ablate status` shows it.
    second = cli.invoke(app, ["run", "tiny", "-p", "smoke", "--variants", "a"])
    assert second.exit_code == 0 and f"job {info.job_id} is running" in second.output
    assert "job" in cli.invoke(app, ["status", "tiny", "-p", "smoke"]).output
    # `ablate run` with the same launcher waits for that job instead of submitting another.
    third = cli.invoke(app, ["run", "tiny", "-p", "smoke", "--variants", "a", "--launcher", "slurm"])
    assert third.exit_code == 0 and "1 done" in third.output, third.output
    fourth = cli.invoke(app, ["run", "tiny", "-p", "smoke", "--variants", "a", "--launcher", "slurm"])
    assert "done earlier" in fourth.output
    assert len(list((run.work_dir / "submitit").glob("*_submitted.pkl"))) == 1  # submitted once
    assert len([c for c in fake_worker.calls(run.work_dir) if "end" in c]) == 1


@pytest.mark.slow
def test_a_preempted_job_saves_a_checkpoint_requeues_and_resumes_from_it(tiny_study, tiny_study_text):
    from ablate.launch.orchestrate import data_root_for, run_study
    from ablate.runs import Progress

    tiny_study.write_text(tiny_study_text(max_iters=12, checkpoint_every=100))  # a periodic one only at 12
    study = load_study("tiny")
    (run,) = study.runs("smoke", variants=["a"])
    launcher = SlurmLauncher(SlurmOptions.from_study(study))
    outcomes = run_study(study, [run], launcher, data_root_for(study, "smoke", None), detach=True)
    assert outcomes[0].status == "submitted"
    deadline = time.time() + 300
    while (progress := Progress.read(run.work_dir)) is None or progress.iteration < 3:
        assert time.time() < deadline, "training did not start"
        time.sleep(0.2)
    worker_pid = int((run.work_dir / "lock").read_text().split()[0])  # the job's task process
    os.kill(worker_pid, signal.SIGUSR2)  # what Slurm sends before preemption or the time limit
    (handle,) = [launcher.attach(run, RunInfo.read(run.work_dir))]
    assert handle is not None
    outcome = LauncherContract.wait([handle], timeout=300)[0]
    assert outcome.status == "done", outcome
    result = json.loads((run.work_dir / "result.json").read_text())
    starts = [a["start_iter"] for a in result["attempts"]]
    assert len(starts) == 2 and starts[0] == 0 and 3 <= starts[1] < 12, starts  # saved when signalled
    assert result["resumed_from"] == starts[1] and result["iterations"] == 12
    log = "".join(p.read_text() for p in (run.work_dir / "submitit").glob("*_log.*"))
    assert "preempted" in log and "Requeued job" in log
    assert f"Saving checkpoint at {starts[1]} iterations before the job is requeued" in log
