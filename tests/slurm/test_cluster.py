"""The slurm tier: `ablate run`/`status` against a running slurmctld, where clusters differ.

.ci/run stands up a one-node cluster on 127.0.0.1 with scripts/local-slurm.sh (twice: without
accounting and with the compute node under another hostname, then with accounting) and runs
``pytest -m slurm``; every test here skips, saying why, where ``sinfo`` does not answer.

The study is CPU-only (``gpus_per_run: 0``, one CPU per run) and trains the real worker, except
where a job only has to exist (the fake worker sleeps). Waits are shared: the time-limit job
starts first and runs beside the others, scenarios submit their jobs together, and a requeued job
is released at once (``scontrol update StartTime=now``) instead of waiting out Slurm's two-minute
hold. A job killed by ``scancel`` or ``scontrol requeue`` goes on for KillWait (submitit ignores
SIGTERM), so the runs that are killed are long enough to outlive it.
"""
import json
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import TINY_BASE, _tiny_study_text
from typer.testing import CliRunner

from ablate.cli import app
from ablate.collect import collect
from ablate.launch.orchestrate import data_root_for, run_study
from ablate.launch.slurm import SlurmLauncher, SlurmOptions
from ablate.runs import Failure, Progress, RecordError, Result, RunInfo, folder
from ablate.runs.records import read_attempts
from ablate.runs.lock import RunLock
from ablate.study import load_study

pytestmark = pytest.mark.slurm
WAIT_S = 900  # for one scheduler event; generous, for a shared 2-core machine
LONG = {"train_cfg.max_iters": 400, "train_cfg.val_interval": 400, "default_hooks.checkpoint.interval": 4}
VARIANTS = {
    "a": {"train_cfg.max_iters": 30, "train_cfg.val_interval": 30,  # trains to the end
          "default_hooks.checkpoint.interval": 10},
    "b": LONG,  # requeued by `scontrol requeue`
    "c": {"train_cfg.max_iters": 24, "train_cfg.val_interval": 24,  # preempted by USR2: the only
          "default_hooks.checkpoint.interval": 1000},  # checkpoint before the last is the signal's
    "d": LONG, "e": LONG,  # cancelled, detached and attached
    "t": {"train_cfg.max_iters": 100000, "train_cfg.val_interval": 100000,  # hits its time limit
          "default_hooks.checkpoint.interval": 100000},
    "x": {}, "y": {}, "z": {}, "g": {},  # fake worker, or no job at all
}


# --------------------------------------------------------------------------- the cluster and the study


@pytest.fixture(scope="module")
def cluster():
    """The cluster's default partition, its node and its CPUs per node."""
    if shutil.which("sbatch") is None:
        pytest.skip("no Slurm client here (sbatch not on PATH); .ci/run starts a one-node cluster with "
                    "scripts/local-slurm.sh")
    done = subprocess.run(["sinfo", "-h", "-N", "-o", "%P|%N|%c"], capture_output=True, text=True)
    nodes = [line.split("|") for line in done.stdout.split() if line.split("|")[0].endswith("*")]
    if done.returncode != 0 or not nodes:
        pytest.skip(f"no Slurm cluster answers: sinfo: {(done.stdout + done.stderr).strip() or 'no nodes'}")
    partition, node, cpus = nodes[0]
    return dict(partition=partition.rstrip("*"), node=node, cpus=int(cpus.rstrip("+")))


@pytest.fixture(scope="module")
def study(cluster, tiny_data, tmp_path_factory):
    """The study `cluster` in a fresh work root ($ABLATE_* set for the module); its jobs are
    cancelled at the end."""
    root = tmp_path_factory.mktemp("slurm")
    (root / "experiments" / "_base_").mkdir(parents=True)
    (root / "experiments" / "_base_" / "tiny.py").write_text(TINY_BASE)
    text = json.loads(_tiny_study_text(max_iters=8, checkpoint_every=2))
    text.update(name="cluster", variants={name: {"label": name, "overrides": o} for name, o in VARIANTS.items()},
                resources={"gpus_per_run": 0, "cpus_per_run": 1, "timeout_min": 30},
                slurm={"signal_delay_s": 60, "max_requeues": 0})
    (root / "experiments" / "cluster.yaml").write_text(json.dumps(text, indent=1))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("ABLATE_STUDIES", str(root / "experiments"))
        env.setenv("ABLATE_WORK_DIR", str(root / "work_dirs"))
        env.setenv("ABLATE_DATA", str(tiny_data))
        env.setenv("COLUMNS", "250")  # status rows on one line each
        env.delenv("ABLATE_FULL_ERROR", raising=False)
        yield load_study("cluster")
    cancel(*(json.loads(p.read_text()).get("job_id") for p in (root / "work_dirs").rglob("run.json")))


def runs(study, *variants):
    found = {r.variant: r for r in study.runs("smoke")}
    return [found[v] for v in variants]


def ablate(*args) -> tuple[int, str]:
    """`ablate ARGS` in this process: (exit code, stdout and stderr)."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert "submitit" not in result.output, result.output  # its sacct warnings and logging stay out
    return result.exit_code, result.output


def status_row(variant: str) -> str:
    code, out = ablate("status", "cluster", "-p", "smoke")
    assert code == 0, out
    (row,) = [line.strip() for line in out.splitlines() if line.strip().startswith(f"{variant}/seed0 ")]
    return re.sub(r"\s+", " ", row)


def wait_until(what: str, check, timeout: float = WAIT_S, every: float = 0.5):
    deadline = time.time() + timeout
    while not (value := check()):
        assert time.time() < deadline, f"{what}: not within {timeout:.0f} s"
        time.sleep(every)
    return value


def job_of(run) -> str:
    return RunInfo.read(run.work_dir).job_id


def controller(job: str) -> str:
    """The job's state as squeue shows it (every state, while the controller holds the job)."""
    return subprocess.run(["squeue", "-h", "-t", "all", "-j", job, "-o", "%T"], capture_output=True,
                          text=True).stdout.strip()


def slurm(*command: str) -> str:
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def cancel(*jobs: str) -> None:
    """Cancel jobs a scenario no longer needs (they hold their CPU for KillWait, 30 s here: Slurm
    cancels the same way whatever signal scancel is given)."""
    subprocess.run(["scancel", *filter(None, jobs)], capture_output=True)


def release(job: str) -> None:
    """Start a requeued job now instead of after Slurm's two-minute hold (BeginTime)."""
    slurm("scontrol", "update", f"JobId={job}", "StartTime=now")


def iteration(run) -> int:
    try:
        progress = Progress.read(run.work_dir)
    except RecordError:  # read while written over by another process's os.replace on NFS: next time
        return 0
    return progress.iteration if progress is not None else 0


def checkpoint(run) -> int:
    found = folder.latest_checkpoint(run.work_dir)
    return found[1] if found else 0


def log(run) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted((run.work_dir / "submitit").glob("*_log.*")))


@pytest.fixture(scope="module")
def timed_out(study):
    """The run `t`, submitted first with a 3-minute limit: Slurm signals it after one or two."""
    code, out = ablate("run", "cluster", "-p", "smoke", "--variants", "t", "--launcher", "slurm", "--time", "3",
                       "--detach")
    assert code == 0 and "1 submitted" in out, out
    return runs(study, "t")[0]


# --------------------------------------------------------------------------- the scenarios


def test_a_cpu_only_run_is_submitted_detached_followed_by_status_and_collected(study, cluster, timed_out):
    (run,) = runs(study, "a")
    code, out = ablate("run", "cluster", "-p", "smoke", "--variants", "a", "--launcher", "slurm",
                       "--gpus-per-run", "0", "--detach")
    assert code == 0 and "1 submitted" in out, out
    job = job_of(run)
    script = (run.work_dir / "submitit" / f"{job}_submission.sh").read_text()
    for directive in ("--requeue", "--export=ALL", f"--chdir={Path.cwd()}", "--ntasks-per-node=1",
                      "--cpus-per-task=1"):
        assert f"#SBATCH {directive}\n" in script, directive
    assert "gpu" not in script and "gres" not in script  # a CPU-only cluster refuses any GPU request
    wait_until("the job trains", lambda: controller(job) == "RUNNING" and iteration(run) >= 1)
    assert re.search(rf"a/seed0 running \d+/30 .* job {job} running$", status_row("a"))  # the scheduler's word
    code, out = ablate("run", "cluster", "-p", "smoke", "--variants", "a", "--launcher", "slurm",
                       "--gpus-per-run", "0")  # waits for the detached job rather than submitting another
    assert code == 0 and "1 done" in out, out
    result = Result.read(run.work_dir)
    assert result.iterations == 30 and result.world_size == 1
    assert [a.host for a in result.attempts] == [cluster["node"]]  # trained on the compute node
    assert re.search(r"a/seed0 done 30/30", status_row("a"))
    row = collect(study, "smoke", measure=False).runs.set_index("variant").loc["a"]
    assert row.status == "done" and row.miou_best == result.miou_best
    code, out = ablate("run", "cluster", "-p", "smoke", "--variants", "a", "--launcher", "slurm")
    assert code == 0 and "done earlier" in out
    assert len(list((run.work_dir / "submitit").glob("*_submitted.pkl"))) == 1


def test_a_requeued_and_a_usr2_preempted_job_wait_queued_and_resume(study):
    requeued, preempted = runs(study, "b", "c")
    code, out = ablate("run", "cluster", "-p", "smoke", "--variants", "b,c", "--launcher", "slurm", "--detach")
    assert code == 0 and "2 submitted" in out, out
    jobs = {run.variant: job_of(run) for run in (requeued, preempted)}
    # b: requeued by the scheduler once its training is past a checkpoint (it loses what follows)
    wait_until("b trains past a checkpoint", lambda: checkpoint(requeued) >= 4 and iteration(requeued) > 4)
    slurm("scontrol", "requeue", jobs["b"])
    # c: the preemption signal, mid-training: it saves a checkpoint after this iteration and requeues
    wait_until("c trains", lambda: iteration(preempted) >= 2)
    slurm("scancel", "--signal=USR2", jobs["c"])
    for variant, job in jobs.items():
        wait_until(f"{variant} pends again", lambda: controller(job) == "PENDING")
    resume_b, resume_c = checkpoint(requeued), checkpoint(preempted)
    assert 2 <= resume_c < 24 and f"Saving checkpoint at {resume_c} iterations before the job is requeued" in (
        log(preempted))
    assert "this job is preempted" in log(preempted) and "Requeued job" in log(preempted)
    # While they wait, status says so with Slurm's reason and the iteration each will resume from.
    assert re.search(rf"b/seed0 queued {resume_b}/400 .* job {jobs['b']} pending \(BeginTime\)$", status_row("b"))
    assert re.search(rf"c/seed0 queued {resume_c}/24 .* job {jobs['c']} pending \(BeginTime\)$", status_row("c"))
    for job in jobs.values():
        release(job)
    wait_until("b resumes", lambda: len(read_attempts(requeued.work_dir)) == 2)
    assert read_attempts(requeued.work_dir)[1].start_iter == resume_b
    cancel(jobs["b"])  # 400 iterations are not needed to show it
    code, out = ablate("run", "cluster", "-p", "smoke", "--variants", "c", "--launcher", "slurm")
    assert code == 0 and "1 done" in out, out  # attached to the requeued job
    result = Result.read(preempted.work_dir)
    assert [a.start_iter for a in result.attempts] == [0, resume_c] and result.resumed_from == resume_c
    assert result.iterations == 24 and job_of(preempted) == jobs["c"]  # the same job, requeued


def test_the_time_limit_signal_saves_a_checkpoint_and_without_requeues_left_fails_the_run(timed_out):
    run = timed_out
    job = job_of(run)
    wait_until("the time limit's signal ends the job", lambda: controller(job) in ("COMPLETED", "FAILED", ""))
    failure = Failure.read(run.work_dir)
    match = re.fullmatch(r"UncompletedJobError at iteration (\d+): Job not requeued because: timed-out too many "
                         r"times\.", failure.error)
    assert match, failure.error
    saved = int(match.group(1))
    assert checkpoint(run) == saved > 0  # saved when signalled: the config saves none before 100000
    assert "this job is timed-out" in log(run)
    assert re.search(rf"t/seed0 failed {saved}/100000 .* UncompletedJobError at iteration {saved}", status_row("t"))


def test_scancel_fails_a_detached_and_an_attached_run_with_the_reason_and_a_rerun_resumes(study, cluster):
    detached, attached = runs(study, "d", "e")
    code, out = ablate("run", "cluster", "-p", "smoke", "--variants", "d", "--launcher", "slurm", "--detach")
    assert code == 0, out
    outcomes = []
    launcher = SlurmLauncher(SlurmOptions.from_study(study))
    thread = threading.Thread(target=lambda: outcomes.extend(run_study(
        study, [attached], launcher, data_root_for(study, "smoke", None))), daemon=True)
    thread.start()
    wait_until("both train past a checkpoint", lambda: all(checkpoint(r) >= 4 for r in (detached, attached)))
    jobs = {run.variant: job_of(run) for run in (detached, attached)}
    assert re.search(rf"d/seed0 running \d+/400 .* job {jobs['d']} running$", status_row("d"))
    holder = RunLock(detached.work_dir, "").holder()
    assert (holder.host, holder.role) == (cluster["node"], "worker")  # the job's worker, on the compute node
    slurm("scancel", *jobs.values())
    wait_until("the jobs end", lambda: all(controller(job) in ("CANCELLED", "") for job in jobs.values()))
    thread.join(WAIT_S)
    (outcome,) = outcomes
    ended = r"job {} ended CANCELLED without a result( \(killed by SIG(TERM|KILL)\))?"
    assert outcome.status == "failed" and re.fullmatch(ended.format(jobs["e"]), outcome.error), outcome
    # Detached: the next `ablate status` records what the scheduler says (the lock would have
    # looked live for 10 minutes from here, its holder on another host).
    assert re.search(r"d/seed0 failed \d+/400 .* " + ended.format(jobs["d"]), status_row("d"))
    assert re.fullmatch(ended.format(jobs["d"]), Failure.read(detached.work_dir).error)
    for run in (detached, attached):
        assert not (run.work_dir / "lock").exists()
    resume = {run.variant: checkpoint(run) for run in (detached, attached)}
    code, out = ablate("run", "cluster", "-p", "smoke", "--variants", "d,e", "--launcher", "slurm", "--detach")
    assert code == 0 and "2 submitted" in out, out  # resubmitted
    for run in (detached, attached):
        assert job_of(run) != jobs[run.variant]
        wait_until(f"{run.variant} resumes", lambda: len(read_attempts(run.work_dir)) == 2)
        assert read_attempts(run.work_dir)[1].start_iter == resume[run.variant] >= 4
    cancel(job_of(detached), job_of(attached))


def test_waiting_preempted_cancelled_and_forgotten_jobs(study, cluster, fake_worker):
    running, preempted, waiting, gone = runs(study, "x", "y", "z", "g")
    for run in (running, preempted, waiting):
        fake_worker.set(run.work_dir, sleep=900)
    code, out = ablate("run", "cluster", "-p", "smoke", "--variants", "x,y,z", "--launcher", "slurm", "--detach")
    assert code == 0 and "3 submitted" in out, out  # the fake worker reaches the jobs: --export=ALL
    jobs = {run.variant: job_of(run) for run in (running, preempted, waiting)}
    wait_until("x and y run", lambda: all(len(fake_worker.calls(r.work_dir)) == 1 for r in (running, preempted)))
    # z waits for a free CPU, and status says why
    assert re.search(rf"z/seed0 queued - .* job {jobs['z']} pending \((Resources|Priority)\)$", status_row("z"))
    # a job of partition `high` preempts x and y; Slurm requeues them (sacct: PREEMPTED), they wait again
    high = slurm("sbatch", "--parsable", "-p", "high", "-c", str(cluster["cpus"]), "-t", "5", "-o", "/dev/null",
                 "--wrap", "sleep 600").strip()
    try:
        for run in (running, preempted):
            wait_until(f"{run.variant} is requeued", lambda: controller(jobs[run.variant]) == "PENDING")
            assert re.search(rf"{run.variant}/seed0 queued .* job {jobs[run.variant]} pending", status_row(run.variant))
        slurm("scancel", jobs["z"])  # never started: cancelled at once
        assert re.search(rf"z/seed0 failed .* job {jobs['z']} ended CANCELLED without a result", status_row("z"))
    finally:
        cancel(high)
    for run in (running, preempted):
        release(jobs[run.variant])
        wait_until(f"{run.variant} runs again", lambda: len(fake_worker.calls(run.work_dir)) == 2)
    cancel(jobs["x"], jobs["y"])
    # a job that neither the controller nor accounting knows: gone, and its lock (another host's) is freed
    RunInfo(launcher="slurm", scheduler="slurm", job_id="4000000", lock_token="tok").write(gone.work_dir)
    (gone.work_dir / "lock").write_text("4242 node1 tok worker -\n")
    assert re.search(r"g/seed0 failed .* job 4000000 is gone: neither the controller nor sacct knows it",
                     status_row("g"))
    assert not (gone.work_dir / "lock").exists()


def test_cpus_gpus_and_time_are_checked_before_anything_is_submitted(study, cluster):
    base = ["run", "cluster", "-p", "smoke", "--variants", "a", "--launcher", "slurm"]
    for flags, message in (
        (["--cpus-per-run", cluster["cpus"] + 1], f"partition `{cluster['partition']}` has at most {cluster['cpus']} "
                                                  "CPUs per node"),
        (["--gpus-per-run", 1], f"partition `{cluster['partition']}` has no GPUs"),
        (["--time", 1], "--time 1: a job must run longer than the signal delay (slurm.signal_delay_s: 60 s) plus 60 s"),
    ):
        code, out = ablate(*base, *flags)
        assert code == 2 and out.startswith("error: ") and message in out and out.count("\n") == 1, out
