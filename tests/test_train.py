"""The worker (``ablate.train``), in-process on the tiny study: result, progress, resume, failure, lock."""
import copy
import json
import os
import time
import zipfile

import pytest

from ablate import configs
from ablate.io import write_json
from ablate.runs import folder
from ablate.runs.lock import RunLock
from ablate.study import load_study

RESULT_KEYS = {"study", "profile", "variant", "seed", "config_hash", "status", "miou_best", "miou_last",
               "aacc_last", "macc_last", "best_iter", "evaluations", "iterations", "max_iters", "wall_time_s",
               "train_time_s", "resumed_from", "finished_at", "chance_miou"}


@pytest.fixture
def prepared(tiny_study, tiny_data):
    """Run `a` of the tiny study with config.py and run.json, as `ablate run` leaves it."""
    study = load_study("tiny")
    (run,) = study.runs("smoke", variants=["a"])
    cfg = configs.resolve(study, run, data_root=tiny_data / "synthetic_ade20k")
    digest = configs.dump(cfg, run.work_dir / "config.py")
    write_json(run.work_dir / "run.json", {"config_hash": digest, "lock_token": "t0k3n"})
    return run, digest


def train(work_dir) -> int:
    from ablate.train import train as worker

    time.sleep(1.05)  # mmengine names its loggers by the second; two runners in one second collide
    return worker(work_dir)


def test_a_run_trains_evaluates_and_writes_its_result_last(prepared, tiny_data):
    run, digest = prepared
    work_dir = run.work_dir
    assert train(work_dir) == 0
    result = json.loads((work_dir / "result.json").read_text())
    assert RESULT_KEYS <= set(result)
    assert (result["study"], result["variant"], result["seed"], result["status"]) == ("tiny", "a", 0, "done")
    assert result["config_hash"] == digest == configs.text_hash((work_dir / "config.py").read_text())
    assert [e["iteration"] for e in result["evaluations"]] == [4]
    assert result["miou_best"] == result["miou_last"] == result["evaluations"][0]["mIoU"]
    assert (result["iterations"], result["max_iters"], result["best_iter"], result["resumed_from"]) == (4, 4, 4, None)
    assert result["chance_miou"] == json.loads((tiny_data / "synthetic_ade20k" / "ablate_synthetic.json")
                                               .read_text())["chance_miou"]
    assert 0 < result["train_time_s"] <= result["wall_time_s"]
    assert (result["world_size"], result["total_batch"]) == (1, 2)
    progress = json.loads((work_dir / "progress.json").read_text())
    assert (progress["iteration"], progress["max_iters"]) == (4, 4) and progress["loss"] > 0
    written_before = [work_dir / "progress.json", *work_dir.glob("iter_*.pth")]
    assert all(p.stat().st_mtime <= (work_dir / "result.json").stat().st_mtime for p in written_before)
    assert not (work_dir / "lock").exists()
    assert "resume = False" in (work_dir / "runtime_config.py").read_text()


@pytest.mark.slow
def test_a_rerun_resumes_only_what_a_kill_lost(prepared):
    run, _ = prepared
    work_dir = run.work_dir
    assert train(work_dir) == 0
    first_wall = json.loads((work_dir / "result.json").read_text())["wall_time_s"]
    progress = json.loads((work_dir / "progress.json").read_text())

    # kill -9 during iteration 4's checkpoint: a truncated iter_4.pth, no evaluation, no result.
    complete = (work_dir / "iter_4.pth").read_bytes()
    (work_dir / "iter_4.pth").write_bytes(complete[: len(complete) // 2])
    (work_dir / "result.json").unlink()
    progress.update(iteration=4, evaluations=[])
    write_json(work_dir / "progress.json", progress)
    assert train(work_dir) == 0
    result = json.loads((work_dir / "result.json").read_text())
    assert [a["start_iter"] for a in result["attempts"]] == [0, 2]
    assert result["resumed_from"] == 2 and [e["iteration"] for e in result["evaluations"]] == [4]
    assert result["wall_time_s"] > first_wall
    assert "resume = True" in (work_dir / "runtime_config.py").read_text()
    log = sorted(p for p in work_dir.glob("*/*.log"))[-1].read_text()
    assert "resumed epoch: 0, iter: 2" in log

    # kill -9 between the final checkpoint and its evaluation: resuming evaluates, trains nothing.
    (work_dir / "result.json").unlink()
    progress = json.loads((work_dir / "progress.json").read_text())
    write_json(work_dir / "progress.json", {**progress, "evaluations": []})
    assert train(work_dir) == 0
    result = json.loads((work_dir / "result.json").read_text())
    assert result["attempts"][-1]["start_iter"] == 4 and [e["iteration"] for e in result["evaluations"]] == [4]


def test_an_exception_writes_failed_json_with_the_log_tail(prepared, tmp_path):
    run, _ = prepared
    text = (run.work_dir / "config.py").read_text()
    (run.work_dir / "config.py").write_text(text.replace(str(tmp_path.parent), "/nonexistent"))
    assert train(run.work_dir) == 1
    failed = json.loads((run.work_dir / "failed.json").read_text())
    assert failed["exit_code"] == 1 and "\n" not in failed["error"]
    assert failed["error"].startswith("FileNotFoundError: ")
    assert "FileNotFoundError: [Errno 2] No such file or directory: '/nonexistent" in failed["log_tail"]
    assert not (run.work_dir / "result.json").exists() and not (run.work_dir / "lock").exists()


def test_a_run_locked_by_another_live_process_is_left_alone(prepared):
    from ablate.train import train as worker

    run, _ = prepared
    RunLock(run.work_dir, "someone-else").acquire()  # this (live) pytest process, another token
    assert worker(run.work_dir) == folder.EXIT_LOCKED
    assert sorted(p.name for p in run.work_dir.iterdir()) == ["config.py", "lock", "run.json"]


def test_the_newest_complete_checkpoint_is_chosen(tmp_path):
    for n in (2, 4):
        with zipfile.ZipFile(tmp_path / f"iter_{n}.pth", "w") as z:
            z.writestr("data.pkl", b"x" * 1000)
    data = (tmp_path / "iter_4.pth").read_bytes()
    (tmp_path / "iter_6.pth").write_bytes(data[:-30])  # killed while saving
    (tmp_path / "best_mIoU_iter_8.pth").write_bytes(data)
    assert folder.latest_checkpoint(tmp_path) == (tmp_path / "iter_4.pth", 4)
    os.remove(tmp_path / "iter_4.pth")
    os.remove(tmp_path / "iter_2.pth")
    assert folder.latest_checkpoint(tmp_path) is None


def test_the_config_text_is_formatted_once_per_content(monkeypatch):
    from mmengine.config import Config

    from ablate.train import FormatOnceConfig

    calls = []
    original = Config.pretty_text.fget
    monkeypatch.setattr(Config, "pretty_text", property(lambda self: calls.append(1) or original(self)))
    cfg = FormatOnceConfig(dict(model=dict(type="M", depth=[1, 2]), lr=0.1))
    text = cfg.pretty_text
    assert cfg.pretty_text == text and len(calls) == 1
    assert original(Config(dict(model=dict(type="M", depth=[1, 2]), lr=0.1))) == text
    copied = copy.deepcopy(cfg)
    assert copied.pretty_text == text and len(calls) == 1
    copied.lr = 0.2  # a changed config is formatted again
    assert "lr = 0.2" in copied.pretty_text and len(calls) == 2
