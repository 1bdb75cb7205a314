"""The torchrun launcher: the launcher contract with two processes per run, its refusals, and a
real smoke run over two CPU processes (gloo)."""
import json
import os
import signal
import subprocess
import sys

import pytest

from ablate.errors import LaunchError
from ablate.launch.pool import PoolOptions
from ablate.launch.torchrun import TorchrunLauncher
from ablate.runs import WorkRoot

from .contract import LauncherContract

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class TestTorchrunLauncher(LauncherContract):
    world_size = 2

    def make_launcher(self):
        return TorchrunLauncher(PoolOptions(gpus_per_run=2))


def test_each_process_gets_its_share_of_the_cores(tmp_path, fake_worker):
    launcher = TorchrunLauncher(PoolOptions(gpus_per_run=2, cpus=4))
    run = WorkRoot(tmp_path).run("s", "p", "v", 0)
    fake_worker.set(run.work_dir)
    LauncherContract.wait(launcher.submit([run]))
    assert {c["omp"] for c in fake_worker.calls(run.work_dir)} == {"2"}


def test_slots_must_divide_the_pool():
    with pytest.raises(LaunchError, match="--gpus 3 is not a multiple of --gpus-per-run 2"):
        TorchrunLauncher(PoolOptions(gpus=3, gpus_per_run=2, gpu_ids=("0", "1", "2")))


def test_slots_of_k_gpus(tmp_path, fake_worker):
    launcher = TorchrunLauncher(PoolOptions(gpus=4, gpus_per_run=2, gpu_ids=("0", "1", "2", "3")))
    assert launcher.pool.slots == [("0", "1"), ("2", "3")]


@pytest.mark.slow
def test_torchrun_with_two_cpu_processes_completes_a_table2_smoke_run(tmp_path):
    env = dict(os.environ, ABLATE_WORK_DIR=str(tmp_path / "work_dirs"), ABLATE_DATA=str(tmp_path / "data"))
    proc = subprocess.Popen([sys.executable, "-m", "ablate.cli", "run", "table2", "--profile", "smoke",
                             "--variants", "baseline", "--launcher", "torchrun", "--gpus-per-run", "2"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=900)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the workers too
        raise
    assert proc.returncode == 0, output
    work_dir = tmp_path / "work_dirs" / "table2" / "smoke" / "baseline" / "seed0"
    result = json.loads((work_dir / "result.json").read_text())
    info = json.loads((work_dir / "run.json").read_text())
    log = (work_dir / "worker.log").read_text()
    assert info["launcher"] == "torchrun" and info["world_size"] == 2
    # the profile's total batch of 8, split: 4 images per process, BatchNorm synchronised over gloo
    config = (work_dir / "config.py").read_text()
    assert "batch_size=4," in config and "type='SyncBN'" in config
    assert info["total_batch"] == result["total_batch"] == 8 and result["world_size"] == 2
    assert "Distributed training: True" in log and "backend='gloo'" in log
    assert result["iterations"] == result["max_iters"] >= 40
    assert result["miou_best"] > result["chance_miou"]
    print(f"\ntorchrun x2 smoke run: {result['wall_time_s']:.0f} s, mIoU best {result['miou_best']:.2f} "
          f"(chance {result['chance_miou']:.2f})")
