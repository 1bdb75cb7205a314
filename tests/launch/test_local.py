"""The local launcher: the launcher contract, the GPU-slot pool, and its one-line refusals."""
import os
import time

import pytest

from ablate.errors import LaunchError
from ablate.launch.local import LocalLauncher
from ablate.launch.pool import PoolOptions
from ablate.runs import WorkRoot

from .contract import LauncherContract


class TestLocalLauncher(LauncherContract):
    def make_launcher(self):
        return LocalLauncher()


def test_sequential_on_the_cpu_uses_every_core_one_run_at_a_time(tmp_path, fake_worker):
    launcher = LocalLauncher(PoolOptions(cpus=2))
    runs = [WorkRoot(tmp_path).run("s", "p", f"v{i}", 0) for i in range(2)]
    for run in runs:
        fake_worker.set(run.work_dir, sleep=0.5)
    LauncherContract.wait(launcher.submit(runs))
    first, second = (fake_worker.calls(r.work_dir) for r in runs)
    assert first[1]["end"] <= second[0]["start"]  # one after another
    assert first[0]["omp"] == "2"
    assert (runs[0].work_dir / "worker.log").read_text().count("=== ") == 1


def test_a_pool_of_gpu_slots_starts_the_next_run_as_soon_as_one_frees(tmp_path, fake_worker):
    launcher = LocalLauncher(PoolOptions(gpus=2, gpu_ids=("3", "5"), cpus=2))
    runs = [WorkRoot(tmp_path).run("s", "p", f"v{i}", 0) for i in range(3)]
    for run, sleep in zip(runs, (3.0, 0.3, 0.3)):
        fake_worker.set(run.work_dir, sleep=sleep)
    outcomes = LauncherContract.wait(launcher.submit(runs))
    assert [o.status for o in outcomes] == ["done"] * 3
    calls = [fake_worker.calls(r.work_dir) for r in runs]
    assert {calls[0][0]["cuda"], calls[1][0]["cuda"]} == {"3", "5"}  # one GPU each
    assert calls[2][0]["cuda"] == calls[1][0]["cuda"]  # the freed slot
    assert calls[2][0]["start"] < calls[0][1]["end"]  # did not wait for the long run
    assert calls[2][0]["start"] - calls[1][1]["end"] < 1.5  # started right after the slot freed
    assert calls[0][0]["omp"] == "1"  # two cores shared by two slots


def test_a_worker_gets_the_launch_environment_and_its_output_goes_to_worker_log(tmp_path, fake_worker,
                                                                              monkeypatch):
    monkeypatch.setenv("FAKE_MARK", str(tmp_path))
    run = WorkRoot(tmp_path).run("s", "p", "v", 0)
    fake_worker.set(run.work_dir, outcome="exit", code=7)
    launcher = LocalLauncher(PoolOptions(cpus=2))
    (outcome,) = LauncherContract.wait(launcher.submit([run]))
    call = fake_worker.calls(run.work_dir)[0]  # at its start
    assert outcome.status == "failed" and "status 7" in outcome.error  # the worker's exit status
    assert call["ppid"] == os.getpid() and not call["torch"]  # a fresh interpreter, our child
    assert call["mark"] == str(tmp_path) and call["omp"] == "2"  # the launch's environment
    log = (run.work_dir / "worker.log").read_text()
    assert "fake worker 0: stdout" in log and "fake worker 0: stderr" in log


def test_the_local_launcher_runs_one_process_per_run():
    with pytest.raises(LaunchError, match="--gpus-per-run 2: the local launcher runs one process per run"):
        LocalLauncher(PoolOptions(gpus_per_run=2))


def test_gpus_without_cuda_is_a_clear_error(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(LaunchError, match=r"--gpus 2: no CUDA device is visible"):
        LocalLauncher(PoolOptions(gpus=2))


def test_more_gpus_than_visible_is_a_clear_error(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(LaunchError, match=r"^--gpus 4: only 1 CUDA device visible$"):
        LocalLauncher(PoolOptions(gpus=4))


def test_cancelling_a_queued_run_means_it_never_starts(tmp_path, fake_worker):
    launcher = LocalLauncher()
    runs = [WorkRoot(tmp_path).run("s", "p", f"v{i}", 0) for i in range(2)]
    for run in runs:
        fake_worker.set(run.work_dir, sleep=1)
    first, second = launcher.submit(runs)
    second.cancel()
    assert second.poll().status == "skipped"
    assert LauncherContract.wait([first])[0].status == "done"
    time.sleep(0.3)
    assert fake_worker.calls(runs[1].work_dir) == []
