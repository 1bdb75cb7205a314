"""Fault probes: each numbered item of the faults issue, reproduced on a tiny study, and what ablate now does.

Bad input ends in one line and exit code 2, with nothing launched; a fault of one run (a folder it
cannot write, a full disk, a broken file) fails that run with its reason, and the others go on;
nothing is ever wrong but silent. The fast probes use the fake worker; the slow ones (marked) train
the tiny study with the real worker.
"""
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ablate.cli import app
from ablate.runs import Progress, RunStatus, WorkRoot, read_state
from ablate.runs.records import ATTEMPTS_FILE, Attempt, append_attempt
from ablate.study import load_study

REPO = Path(__file__).resolve().parents[1]


def invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def one_line_error(code, out, *parts):
    assert code == 2, out
    assert out.startswith("error: ") and out.count("\n") == 1 and "Traceback" not in out, out
    for part in parts:
        assert part in out, out


@pytest.fixture
def runs(tiny_study, fake_worker, monkeypatch):
    """The tiny study's runs a, b, c; the fake worker finishes each at once unless told otherwise."""
    monkeypatch.delenv("ABLATE_FULL_ERROR", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    runs = {r.variant: r for r in load_study("tiny").runs("smoke")}
    for run in runs.values():
        fake_worker.set(run.work_dir, outcome="done")
    return runs


@pytest.fixture
def table2_copy(tmp_path, monkeypatch):
    """experiments/ copied to tmp_path, as $ABLATE_STUDIES: edit `table2.yaml` freely."""
    studies = tmp_path / "experiments"
    shutil.copytree(REPO / "experiments", studies)
    monkeypatch.setenv("ABLATE_STUDIES", str(studies))
    monkeypatch.setenv("ABLATE_WORK_DIR", str(tmp_path / "work_dirs"))
    monkeypatch.delenv("ABLATE_FULL_ERROR", raising=False)
    return studies / "table2.yaml"


def zip_checkpoint(work_dir: Path, iteration: int) -> None:
    work_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(work_dir / f"iter_{iteration}.pth", "w") as z:
        z.writestr("data.pkl", b"x")


@contextlib.contextmanager
def read_only(path: Path):
    """``path`` read-only for this process: a read-only bind mount as root (who ignores modes), else chmod."""
    if os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield
        finally:
            path.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "--bind", str(path), str(path)], capture_output=True).returncode == 0
    if not mounted or subprocess.run(["mount", "-o", "remount,bind,ro", str(path)],
                                     capture_output=True).returncode != 0:
        if mounted:
            subprocess.run(["umount", str(path)])
        pytest.skip("cannot make a read-only folder here (root without mount)")
    try:
        yield
    finally:
        subprocess.run(["umount", str(path)], check=True)


# 1 ------------------------------------------------------------------------------------------------


def test_1_drift_is_caught_when_run_json_is_unreadable(runs, tiny_study, fake_worker):
    run = runs["a"]
    assert invoke("configs", "tiny", "-p", "smoke")[0] == 0  # the config.py a run would have
    zip_checkpoint(run.work_dir, 2)
    (run.work_dir / "run.json").write_text("{garbage")
    tiny_study.write_text(tiny_study.read_text().replace('"optim_wrapper.optimizer.lr": 0.001',
                                                         '"optim_wrapper.optimizer.lr": 0.002'))
    code, out = invoke("run", "tiny", "-p", "smoke", "--variants", "a")
    assert code == 2 and "a/seed0: config changed since this run started (optim_wrapper.optimizer.lr)" in out, out
    (run.work_dir / "config.py").unlink()  # nothing left to compare with: refused all the same
    code, out = invoke("run", "tiny", "-p", "smoke", "--variants", "a")
    assert code == 2 and "(unknown: no readable record of the config it trained with)" in out, out
    assert fake_worker.calls(run.work_dir) == []
    code, out = invoke("run", "tiny", "-p", "smoke", "--variants", "a", "--restart")
    assert code == 0 and "1 done" in out, out


# 2 ------------------------------------------------------------------------------------------------


def test_2_a_string_for_a_bool_switch_is_refused_with_file_and_line(table2_copy):
    text = table2_copy.read_text()
    table2_copy.write_text(text.replace("on: {model.decode_head.use_dwt: true}", 'on: {model.decode_head.use_dwt: "no"}'))
    line = next(i for i, row in enumerate(table2_copy.read_text().splitlines(), 1) if '"no"' in row)
    code, out = invoke("run", "table2", "-p", "smoke", "--dry-run")
    one_line_error(code, out, f"table2.yaml:{line}: variant `dwt`: `model.decode_head.use_dwt` must be true or "
                              "false (a YAML bool)", "not 'no'")


@pytest.mark.parametrize("key, value, words", [
    ("train_cfg.max_iters", "-5", "`train_cfg.max_iters` is iterations and must be at least 1, not -5"),
    ("train_cfg.max_iters", "twelve", "`train_cfg.max_iters` must be an integer, as in the base config, not 'twelve'"),
    ("train_dataloader.batch_size", "0", "`train_dataloader.batch_size` is a batch size and must be at least 1"),
    ("train_dataloader.num_workers", "-1", "is a worker count and must be at least 0"),
])
def test_2_out_of_range_and_mistyped_values_are_refused_by_plan_before_anything_runs(table2_copy, key, value,
                                                                                      words):
    text = table2_copy.read_text()
    table2_copy.write_text(re.sub(rf"(\n      {re.escape(key)}: )\S+", rf"\g<1>{value}", text, count=1))
    code, out = invoke("plan", "table2", "-p", "smoke")
    one_line_error(code, out, "table2.yaml:", "profile `smoke`", words)


def test_2_the_plus_prefix_sets_a_value_unchecked(table2_copy):
    text = table2_copy.read_text()
    table2_copy.write_text(text.replace("      train_cfg.max_iters: 40\n", "      +train_cfg.max_iters: 40.0\n"))
    assert invoke("plan", "table2", "-p", "smoke")[0] == 0


# 3 ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["name", "variant", "profile"])
def test_3_a_name_that_would_leave_the_work_root_is_refused(table2_copy, tmp_path, where):
    text = table2_copy.read_text()
    edits = {"name": ("name: table2\n", "name: ../../x\n"),
             "variant": ("\n  dwt:\n", "\n  ../../x:\n"),
             "profile": ("\n  smoke:\n", "\n  ../smoke:\n")}
    table2_copy.write_text(text.replace(*edits[where]))
    code, out = invoke("run", "table2", "-p", "../smoke" if where == "profile" else "smoke", "--dry-run")
    assert code == 2 and "is not a valid name" in out and "Traceback" not in out, out
    assert not (tmp_path.parent / "x").exists() and not (tmp_path / "work_dirs").exists()


# 4 ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_4_a_full_disk_fails_the_run_it_hits_and_the_others_still_start(tiny_study, tmp_path, monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    disk = tmp_path / "small_disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(disk)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        monkeypatch.setenv("ABLATE_WORK_DIR", str(disk))
        proc = subprocess.run([sys.executable, "-m", "ablate.cli", "run", "tiny", "-p", "smoke"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=900)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 1 and "Traceback" not in out, out
        for run in load_study("tiny").runs("smoke"):
            assert re.search(rf"failed\s+{run.key}: .*No space left on device", out), out
            assert not list(run.work_dir.glob("iter_*.pth")) or all(zipfile.is_zipfile(p)
                                                                      for p in run.work_dir.glob("iter_*.pth"))
            assert not (run.work_dir / "lock").exists()
    finally:
        subprocess.run(["umount", str(disk)], check=True)


# 5 ------------------------------------------------------------------------------------------------


def test_5_a_read_only_run_folder_fails_that_run_and_the_healthy_ones_train(runs, fake_worker):
    runs["b"].work_dir.mkdir(parents=True, exist_ok=True)
    with read_only(runs["b"].work_dir):
        code, out = invoke("run", "tiny", "-p", "smoke")
    assert code == 1 and "Traceback" not in out, out
    assert re.search(rf"failed\s+b/seed0: cannot write its folder {re.escape(str(runs['b'].work_dir))}: "
                     r"(Read-only file system|Permission denied)", out), out
    assert "2 done, 1 failed" in out
    assert fake_worker.calls(runs["b"].work_dir) == [] and len(fake_worker.calls(runs["c"].work_dir)) == 2


# 6 ------------------------------------------------------------------------------------------------


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            with contextlib.suppress(OSError):
                if text in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(proc.name))
    return found


@pytest.mark.slow
def test_6_sigterm_stops_ablate_run_and_its_workers_and_a_rerun_resumes(tiny_study, tiny_study_text, tmp_path):
    from ablate.io import read_json

    tiny_study.write_text(tiny_study_text(max_iters=24, checkpoint_every=2))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    run = WorkRoot.of(None).run("tiny", "smoke", "a", 0)
    command = [sys.executable, "-m", "ablate.cli", "run", "tiny", "-p", "smoke", "--variants", "a"]
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        deadline = time.time() + 600
        while not list(run.work_dir.glob("iter_*.pth")):
            assert proc.poll() is None and time.time() < deadline, "no checkpoint before the study ended"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
        gone_by = time.time() + 15
        while _processes_mentioning(str(run.work_dir)) and time.time() < gone_by:
            time.sleep(0.2)
        assert _processes_mentioning(str(run.work_dir)) == [], "a worker outlived `ablate run`"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "stopped by SIGTERM" in out and "resume with `ablate run tiny --profile smoke`: a/seed0 (from iteration" in out
    assert not (run.work_dir / "lock").exists() and not (run.work_dir / "failed.json").exists()
    assert read_state(run).status is RunStatus.PENDING
    rerun = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    result = read_json(run.work_dir / "result.json")
    assert result["resumed_from"] and result["attempts"][-1]["start_iter"] == result["resumed_from"] > 0


# 7 ------------------------------------------------------------------------------------------------


def test_7_a_lock_whose_pid_is_another_process_now_is_taken_over(runs, fake_worker):
    import socket

    run = runs["a"]
    run.work_dir.mkdir(parents=True, exist_ok=True)
    # our own pid (alive), but not the process that took the lock: as after a reboot or a pid wrap
    (run.work_dir / "lock").write_text(f"{os.getpid()} {socket.gethostname()} old worker 00000000:1\n")
    code, out = invoke("run", "tiny", "-p", "smoke", "--variants", "a")
    assert code == 0 and "took over the stale lock" in out and "1 done" in out, out


def test_7_steal_locks_takes_a_fresh_lock_of_another_host(runs, fake_worker):
    run = runs["a"]
    run.work_dir.mkdir(parents=True, exist_ok=True)
    (run.work_dir / "lock").write_text("4242 some-node-9 theirs worker -\n")  # heartbeat fresh: looks alive
    code, out = invoke("run", "tiny", "-p", "smoke", "--variants", "a")
    assert code == 0 and "running: lock held by pid 4242 on some-node-9" in out and fake_worker.calls(run.work_dir) == []
    code, out = invoke("run", "tiny", "-p", "smoke", "--variants", "a", "--steal-locks")
    assert code == 0 and "took over the lock of pid 4242 on some-node-9" in out and "1 done" in out, out


# 8 ------------------------------------------------------------------------------------------------


def test_8_status_and_report_show_every_readable_run_and_name_the_unreadable_ones(runs, tmp_path):
    assert invoke("run", "tiny", "-p", "smoke")[0] == 0
    bad = runs["b"].work_dir / "result.json"
    bad.write_text("{not json")
    result = CliRunner().invoke(app, ["status", "tiny", "-p", "smoke"])
    assert result.exit_code == 0
    assert re.search(r"a/seed0\s+done", result.stdout) and re.search(r"c/seed0\s+done", result.stdout)
    assert re.search(r"b/seed0\s+pending", result.stdout), result.stdout
    assert f"unreadable: {bad}: not valid JSON" in result.stderr
    code, out = invoke("report", "tiny", "-p", "smoke", "--no-measure", "-o", tmp_path / "r")
    assert code == 1 and f"{bad}: not valid JSON" in out and "| A |" in out, out


# 9 ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_9_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tiny_study, tiny_data, capfd):
    from ablate import configs
    from ablate.io import read_json
    from ablate.train import train

    study = load_study("tiny")
    (run,) = study.runs("smoke", variants=["a"])
    cfg = configs.resolve(study, run, data_root=tiny_data / "synthetic_ade20k")
    configs.dump(cfg, run.work_dir / "config.py")
    assert train(run.work_dir) == 0
    (run.work_dir / "result.json").unlink()
    with zipfile.ZipFile(run.work_dir / "iter_4.pth", "w") as z:  # an intact zip index, damaged contents
        z.writestr("archive/data.pkl", b"not a pickle")
    time.sleep(1.05)  # mmengine names its loggers by the second
    assert train(run.work_dir) == 0
    assert "skipping iter_4.pth, which does not load" in capfd.readouterr().err
    assert (run.work_dir / "iter_4.pth.corrupt").exists()
    result = read_json(run.work_dir / "result.json")
    assert [a["start_iter"] for a in result["attempts"]] == [0, 2] and result["iterations"] == 4


# 10 -----------------------------------------------------------------------------------------------


def test_10_garbage_in_progress_json_loses_no_attempt_nor_evaluation(tmp_path):
    from mmengine.config import Config

    from ablate.train import ProgressHook

    append_attempt(tmp_path, Attempt("2026-01-01T00:00:00+00:00", 0, 11))
    (tmp_path / "progress.json").write_text("\x00\x00garbage")
    scalars = tmp_path / "20260101_000000" / "vis_data" / "scalars.json"
    scalars.parent.mkdir(parents=True)
    scalars.write_text('{"loss": 1.0, "iter": 10, "step": 10}\n{"aAcc": 70.0, "mIoU": 31.5, "mAcc": 40.0, '
                       '"step": 20}\n{"aAcc": 71.0, "mIoU": 33.0, "mAcc": 41.0, "step": 40}\n')
    hook = ProgressHook(tmp_path, time.time(), write=True)
    hook.load(Config(dict(train_cfg=dict(max_iters=80))), start_iter=20)
    assert [(e.iteration, e.mIoU) for e in hook.evaluations] == [(20, 31.5)]  # 40 is after the checkpoint
    hook.iteration = 20
    hook._write(20, force=True)
    progress = Progress.read(tmp_path)
    assert [a.start_iter for a in progress.attempts] == [0, 20] and progress.evaluations[0].mIoU == 31.5
    assert len((tmp_path / ATTEMPTS_FILE).read_text().splitlines()) == 2


# 11 -----------------------------------------------------------------------------------------------


def test_11_a_broken_dataset_is_named_before_anything_launches(runs, tiny_data, tmp_path, fake_worker):
    data = tmp_path / "ade"
    shutil.copytree(tiny_data / "synthetic_ade20k", data)
    broken = sorted((data / "annotations" / "validation").glob("*.png"))[0]
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    code, out = invoke("run", "tiny", "-p", "paper", "--data-root", data)
    assert code == 2 and f"{data}/annotations/validation: 1 unreadable PNG file(s): {broken.name}" in out, out
    assert "Traceback" not in out and all(fake_worker.calls(r.work_dir) == [] for r in runs.values())


def test_11_labels_out_of_range_are_named_before_anything_launches(runs, tiny_data, tmp_path):
    import numpy as np
    from PIL import Image

    data = tmp_path / "ade"
    shutil.copytree(tiny_data / "synthetic_ade20k", data)
    label = sorted((data / "annotations" / "training").glob("*.png"))[0]
    Image.fromarray(np.full((32, 48), 200, dtype=np.uint8)).save(label)
    code, out = invoke("run", "tiny", "-p", "paper", "--data-root", data)
    assert code == 2 and "annotations/training: 1 label map(s) with values above 150" in out, out
    assert f"{label.name} (max 200)" in out


def test_11_a_corrupt_file_met_in_training_is_named(tiny_data, tmp_path):
    from ablate import compat
    from ablate.compat import DataFileError
    from mmseg.datasets.transforms import LoadAnnotations

    compat.name_data_files()
    broken = tmp_path / "label.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DataFileError, match=rf"^{re.escape(str(broken))}: cannot be loaded"):
        LoadAnnotations(reduce_zero_label=True).transform(
            {"seg_map_path": str(broken), "reduce_zero_label": True, "seg_fields": []})


# 12 -----------------------------------------------------------------------------------------------


def test_12_runs_of_a_changed_config_are_stale_in_status_and_left_out_of_the_report(runs, tiny_study, tmp_path):
    assert invoke("run", "tiny", "-p", "smoke")[0] == 0
    tiny_study.write_text(tiny_study.read_text().replace('"optim_wrapper.optimizer.lr": 0.001',
                                                         '"optim_wrapper.optimizer.lr": 0.002'))
    code, out = invoke("status", "tiny", "-p", "smoke")
    assert code == 0 and len(re.findall(r"seed0\s+stale\s+.*config changed since it ran", out)) == 3, out
    code, out = invoke("report", "tiny", "-p", "smoke", "--no-measure", "-o", tmp_path / "r", "-f", "json")
    variants = json.loads((tmp_path / "r" / "tiny" / "smoke.json").read_text())["variants"]
    assert code == 0 and all(v["miou_best_n"] == 0 and v["n_stale"] == 1 for v in variants), out
    assert "is stale: its config changed since it ran; left out of the statistics" in out
    code, out = invoke("report", "tiny", "-p", "smoke", "--no-measure", "-o", tmp_path / "r", "-f", "json",
                       "--include-stale")
    variants = json.loads((tmp_path / "r" / "tiny" / "smoke.json").read_text())["variants"]
    assert code == 0 and all(v["miou_best_n"] == 1 for v in variants)


# 13 -----------------------------------------------------------------------------------------------


def test_13_seeds_the_study_does_not_declare_are_refused(runs, fake_worker):
    code, out = invoke("run", "tiny", "-p", "smoke", "--seeds", "2")
    one_line_error(code, out, "--seeds 2: seed 2 is not one of profile `smoke`'s seeds (0); add seeds to `seeds:`")
    assert all(fake_worker.calls(r.work_dir) == [] for r in runs.values())


# 14 -----------------------------------------------------------------------------------------------


def test_14_without_a_terminal_each_run_gets_plain_progress_lines(runs, fake_worker, monkeypatch):
    from ablate.launch import orchestrate

    monkeypatch.setattr(orchestrate, "PROGRESS_EVERY_S", 0.5)
    fake_worker.set(runs["a"].work_dir, sleep=3)
    code, out = invoke("run", "tiny", "-p", "smoke")  # CliRunner's output is not a terminal
    assert code == 0, out
    for key in ("a/seed0", "b/seed0", "c/seed0"):
        assert re.search(rf"^started\s+{key}$", out, re.M), out
    assert re.search(r"^progress\s+a/seed0\s+3/4\s+loss 0\.500\s+ETA 1:15$", out, re.M), out
    assert out.index("started   a/seed0") < out.index("done      a/seed0") < out.index("started   b/seed0")


def test_14_the_evaluation_phase_is_shown(tmp_path):
    from ablate.launch.orchestrate import _progress_text

    assert _progress_text(Progress(iteration=40, max_iters=40, phase="eval")).split() == ["40/40", "evaluating"]
    assert _progress_text(Progress(iteration=12, max_iters=40, loss=1.25, eta_s=65)).split() == [
        "12/40", "loss", "1.250", "ETA", "1:05"]
