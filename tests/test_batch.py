"""The total batch is the study's: K processes per run each load total/K images and share their
BatchNorm statistics (SyncBN), also on CPUs under gloo; `configs`, `run --dry-run` and the run
folder agree on the config K processes train."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ablate import configs
from ablate.cli import app
from ablate.errors import ConfigError
from ablate.study import load_study

REPO = Path(__file__).resolve().parents[1]
TABLE2 = str(REPO / "experiments" / "table2.yaml")


def invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def table2():
    return load_study(TABLE2)


def resolved(study, profile, processes, variant=None):
    return configs.resolve(study, study.runs(profile, variants=[variant or study.baseline])[0], processes=processes)


@pytest.mark.parametrize("profile, total", [("paper", 16), ("smoke", 8)])
def test_k_processes_share_the_total_batch_and_nothing_else_changes(table2, profile, total):
    one, two = resolved(table2, profile, 1), resolved(table2, profile, 2)
    assert (one.train_dataloader.batch_size, two.train_dataloader.batch_size) == (total, total // 2)
    assert one.ablate.total_batch == two.ablate.total_batch == total
    assert (one.ablate.processes, two.ablate.processes) == (1, 2)
    # The one place where K enters: the per-process batch and the norm of the backbone. The
    # Hamburger head normalises with GroupNorm, which does not depend on the batch.
    rows = configs.diff(one, two, ignore=("ablate",))
    assert rows == [("model.backbone.norm_cfg.type", "BN", "SyncBN"),
                    ("train_dataloader.batch_size", total, total // 2)]
    assert two.model.decode_head.norm_cfg.type == "GN"
    assert configs.run_key(one) != configs.run_key(two)


def test_k_that_does_not_divide_the_total_batch_is_one_line(table2):
    with pytest.raises(ConfigError) as error:
        resolved(table2, "paper", 3)
    assert str(error.value) == ("table2.yaml: profile `paper`: a total batch of 16 images cannot be split over 3 "
                                "processes per run; --gpus-per-run must divide it (1, 2, 4, 8, 16)")


def test_a_study_may_state_its_total_batch(tiny_study):
    text = json.loads(tiny_study.read_text())
    smoke = text["profiles"]["smoke"]["overrides"]
    del smoke["train_dataloader.batch_size"]
    text["resources"]["total_batch"] = 4  # the base config (mmseg's 1xb16) says 16
    tiny_study.write_text(json.dumps(text))
    study = load_study("tiny")
    assert resolved(study, "smoke", 1).train_dataloader.batch_size == 4
    assert resolved(study, "smoke", 4).train_dataloader.batch_size == 1
    smoke["train_dataloader.batch_size"] = 6  # a profile that names its batch states its own total
    tiny_study.write_text(json.dumps(text))
    assert resolved(load_study("tiny"), "smoke", 2).ablate.total_batch == 6
    text["resources"]["total_batch"] = "sixteen"
    tiny_study.write_text(json.dumps(text, indent=1))
    with pytest.raises(ConfigError, match=r"tiny.yaml:\d+: `resources.total_batch` must be a positive number"):
        resolved(load_study("tiny"), "smoke", 1)


def test_configs_out_writes_what_k_processes_train(tmp_path, monkeypatch):
    from mmengine.config import Config

    monkeypatch.chdir(REPO)
    monkeypatch.delenv("ABLATE_STUDIES", raising=False)
    code, out = invoke("configs", "table2", "-p", "paper", "--gpus-per-run", "2", "--out", tmp_path / "k2")
    assert code == 0, out
    cfg = Config.fromfile(str(tmp_path / "k2" / "dwt" / "seed0" / "config.py"), import_custom_modules=False)
    assert cfg.train_dataloader.batch_size == 8 and cfg.model.backbone.norm_cfg.type == "SyncBN"
    assert (cfg.ablate.total_batch, cfg.ablate.processes) == (16, 2)
    result = subprocess.run([sys.executable, "-m", "ablate.cli", "configs", "table2", "-p", "paper",
                             "--gpus-per-run", "3", "--out", str(tmp_path / "k3")],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "cannot be split over 3 processes" in result.stderr and not (tmp_path / "k3").exists()


def test_configs_dry_run_and_the_run_folder_agree_on_the_run_key(tiny_study, fake_worker, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    run = load_study("tiny").runs("smoke", variants=["a"])[0]
    fake_worker.set(run.work_dir, outcome="done")
    code, out = invoke("configs", "tiny", "-p", "smoke", "--gpus-per-run", "2", "--out", tmp_path / "out")
    assert code == 0, out
    written = configs_key(tmp_path / "out" / "a" / "seed0" / "config.py")
    code, out = invoke("run", "tiny", "-p", "smoke", "--variants", "a", "--launcher", "torchrun",
                       "--gpus-per-run", "2", "--dry-run")
    assert code == 0, out
    assert re.search(rf"a/seed0\s+start\s+{written}", out), out
    assert "2 process(es) per run, total batch 2 (1 per process)" in out
    code, out = invoke("run", "tiny", "-p", "smoke", "--variants", "a", "--launcher", "torchrun", "--gpus-per-run", "2")
    assert code == 0, out
    info = json.loads((run.work_dir / "run.json").read_text())
    assert configs_key(run.work_dir / "config.py") == info["run_key"] == written
    assert (info["world_size"], info["total_batch"]) == (2, 2)
    assert {c["world_size"] for c in fake_worker.calls(run.work_dir)} == {2}
    code, out = invoke("status", "tiny", "-p", "smoke")
    assert re.search(r"a/seed0\s+done", out), out  # not `stale`: judged by the config for its 2 processes
    # One process would train another config: the run is not taken for done, nor resumed with it.
    code, out = invoke("run", "tiny", "-p", "smoke", "--variants", "a")
    assert code == 2 and "model.backbone.norm_cfg.type, train_dataloader.batch_size" in out, out


def configs_key(path):
    from mmengine.config import Config

    return configs.run_key(Config.fromfile(str(path), import_custom_modules=False))


SYNC_BN_CHECK = r'''
import sys, torch, torch.distributed as dist
sys.path.insert(0, sys.argv[1])
import ablate.compat
ablate.compat.apply()
from torch.nn.parallel import DistributedDataParallel

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)  # every process makes the same whole batch and takes its share
x, target = torch.randn(8, 3, 6, 6) * 3 + 1, torch.randn(8, 4, 6, 6)
net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4))
reference = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4))
reference.load_state_dict(net.state_dict())
model = DistributedDataParallel(torch.nn.SyncBatchNorm.convert_sync_batchnorm(net))  # CPU: device_ids None
share = slice(rank * 8 // world, (rank + 1) * 8 // world)
for step in range(2):
    model.zero_grad(), reference.zero_grad()
    out = model(x[share])
    (out * target[share]).sum().backward()
    whole = reference(x)
    (whole * target).sum().backward()
    torch.testing.assert_close(out, whole[share], rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(model.module.named_parameters(), reference.parameters()):
        # DDP averages the processes' gradients; the reference sums the losses
        torch.testing.assert_close(p.grad * world, q.grad, rtol=1e-4, atol=1e-4, msg=name)
    with torch.no_grad():
        for p, q in zip(model.module.parameters(), reference.parameters()):
            p -= 0.1 * p.grad * world
            q -= 0.1 * q.grad
torch.testing.assert_close(model.module[1].running_mean, reference[1].running_mean)
torch.testing.assert_close(model.module[1].running_var, reference[1].running_var)
print(f"rank {rank}: ok")
'''


def test_sync_bn_over_two_cpu_processes_equals_batchnorm_over_the_whole_batch(tmp_path):
    """torch's SyncBatchNorm refuses CPU tensors; ablate.compat's gloo path gives the same numbers
    (outputs, gradients, running statistics over two steps) as one process with all 8 images."""
    script = tmp_path / "sync_bn_check.py"
    script.write_text(SYNC_BN_CHECK)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             str(script), str(REPO)], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(re.findall(r"rank \d: ok", result.stdout)) == ["rank 0: ok", "rank 1: ok"]
