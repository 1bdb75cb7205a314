"""The Slurm launcher, through submitit's local executor (no cluster here): the launcher contract,
the generated sbatch script, options from the study, --detach, and requeue-and-resume."""
import json
import signal
import time

import pytest

from ablate.errors import LaunchError
from ablate.launch.slurm import SlurmLauncher, SlurmOptions
from ablate.runs import RunInfo, WorkRoot, folder
from ablate.study import load_study

from .contract import LauncherContract


class TestSlurmLauncher(LauncherContract):
    def make_launcher(self):
        return SlurmLauncher(SlurmOptions(scheduler="local", timeout_min=10))


@pytest.fixture
def sbatch_on_path(monkeypatch):
    import ablate.launch.slurm

    monkeypatch.setattr(ablate.launch.slurm.shutil, "which", lambda name: f"/usr/bin/{name}")


def test_the_submission_script_carries_the_options(tmp_path, sbatch_on_path):
    options = SlurmOptions(partition="gpu", account="proj42", qos="high", timeout_min=600, gpus_per_run=2,
                           cpus_per_run=16, mem_gb=64, signal_delay_s=120, setup=("module load cuda/12.1",),
                           additional={"mail-type": "END"})
    run = WorkRoot(tmp_path).run("table2", "paper", "dwt", 1)
    script = SlurmLauncher(options).submission_script(run)
    submitit_dir = run.work_dir / "submitit"
    for directive in ("--partition=gpu", "--account=proj42", "--qos=high", "--time=600", "--nodes=1",
                      "--gpus-per-node=2", "--ntasks-per-node=2", "--cpus-per-task=8", "--mem=64GB",
                      "--signal=USR2@120", "--job-name=table2-dwt-seed1", "--mail-type=END",
                      f"--output={submitit_dir}/%j_0_log.out", f"--error={submitit_dir}/%j_0_log.err"):
        assert f"#SBATCH {directive}\n" in script, directive
    assert "module load cuda/12.1" in script
    assert "submitit.core._submit" in script and "export SUBMITIT_EXECUTOR=slurm" in script


def test_without_sbatch_slurm_is_refused(monkeypatch):
    import ablate.launch.slurm

    monkeypatch.setattr(ablate.launch.slurm.shutil, "which", lambda name: None)
    with pytest.raises(LaunchError, match="`sbatch` is not on PATH"):
        SlurmLauncher(SlurmOptions())


def test_options_come_from_the_study_then_the_flags(tiny_study):
    study = load_study("tiny")
    options = SlurmOptions.from_study(study, partition="a100", timeout_min=None)
    assert (options.partition, options.timeout_min, options.cpus_per_run, options.scheduler) == ("a100", 30, 2, "local")


def test_an_unknown_study_option_is_named(tiny_study):
    tiny_study.write_text(tiny_study.read_text().replace('"scheduler": "local"', '"partitoin": "gpu"'))
    with pytest.raises(LaunchError, match=r"`slurm.partitoin` is not a Slurm option; did you mean `partition`\?"):
        SlurmOptions.from_study(load_study("tiny"))


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
def test_a_preempted_job_requeues_and_resumes_from_its_checkpoint(tiny_study, tiny_study_text):
    from ablate.launch.orchestrate import data_root_for, run_study

    tiny_study.write_text(tiny_study_text(max_iters=12, checkpoint_every=4))
    study = load_study("tiny")
    (run,) = study.runs("smoke", variants=["a"])
    launcher = SlurmLauncher(SlurmOptions.from_study(study))
    outcomes = run_study(study, [run], launcher, data_root_for(study, "smoke", None), detach=True)
    assert outcomes[0].status == "submitted"
    deadline = time.time() + 300
    while folder.latest_checkpoint(run.work_dir) is None:
        assert time.time() < deadline, "no checkpoint"
        time.sleep(0.2)
    worker_pid = int((run.work_dir / "lock").read_text().split()[0])  # the job's task process
    import os

    os.kill(worker_pid, signal.SIGUSR2)  # what Slurm sends before preemption or the time limit
    (handle,) = [launcher.attach(run, RunInfo.read(run.work_dir))]
    assert handle is not None
    outcome = LauncherContract.wait([handle], timeout=300)[0]
    assert outcome.status == "done", outcome
    result = json.loads((run.work_dir / "result.json").read_text())
    starts = [a["start_iter"] for a in result["attempts"]]
    assert len(starts) == 2 and starts[0] == 0 and starts[1] >= 4, starts
    assert result["resumed_from"] == starts[1] and result["iterations"] == 12
    log = "".join(p.read_text() for p in (run.work_dir / "submitit").glob("*_log.*"))
    assert "preempted" in log and "Requeued job" in log
