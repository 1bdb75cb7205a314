"""`ablate run` and `ablate status`: skipping, locks, config-hash checks, failures, dry runs and bad
input (fake worker, seconds), then the Table 2 smoke study itself and a kill -9 (slow, minutes)."""
import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ablate.cli import app
from ablate.io import read_json, write_json
from ablate.runs import folder
from ablate.runs.lock import RunLock
from ablate.study import load_study

REPO = Path(__file__).resolve().parents[1]


def invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.fixture
def runs(tiny_study, fake_worker, monkeypatch):
    """The tiny study's three runs (a, b, c), each told to finish at once by the fake worker."""
    monkeypatch.delenv("ABLATE_FULL_ERROR", raising=False)
    monkeypatch.setenv("COLUMNS", "200")  # status rows on one line each
    runs = {r.variant: r for r in load_study("tiny").runs("smoke")}
    for run in runs.values():
        fake_worker.set(run.work_dir, outcome="done")
    return runs


def test_a_rerun_skips_finished_runs_and_trains_nothing(runs, fake_worker):
    code, out = invoke("run", "tiny", "-p", "smoke")
    assert code == 0 and "3 done" in out, out
    info = read_json(runs["a"].work_dir / "run.json")
    assert info["launcher"] == "local" and info["config_hash"] == read_json(runs["a"].work_dir / "run.json")[
        "config_hash"] and (runs["a"].work_dir / "config.py").is_file()
    start = time.time()
    code, out = invoke("run", "tiny", "-p", "smoke")
    assert code == 0 and "3 skipped" in out and out.count("done earlier (mIoU best 12.50, last 11.00)") == 3
    assert time.time() - start < 10
    assert all(len(fake_worker.calls(r.work_dir)) == 2 for r in runs.values())  # started once each


def test_a_terminal_shows_one_live_line_per_active_run(runs, fake_worker):
    import io

    from rich.console import Console

    from ablate.launch.local import LocalLauncher
    from ablate.launch.orchestrate import data_root_for, run_study

    study = load_study("tiny")
    fake_worker.set(runs["a"].work_dir, sleep=2)
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=100)
    outcomes = run_study(study, [runs["a"]], LocalLauncher(), data_root_for(study, "smoke", None), console=console)
    assert outcomes[0].status == "done"
    text = screen.getvalue()
    assert re.search(r"a/seed0\s+3/4\s+loss 0\.500", text) and "ETA 1:15" in text
    assert "done      a/seed0  mIoU best 12.50 (iteration 4), last 11.00" in re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def test_one_failing_run_is_recorded_the_others_go_on_and_the_exit_code_says_so(runs, fake_worker):
    fake_worker.set(runs["b"].work_dir, outcome="fail")
    fake_worker.set(runs["c"].work_dir, outcome="kill")
    code, out = invoke("run", "tiny", "-p", "smoke")
    assert code == 1
    assert "failed    b/seed0: ValueError at iteration 3: fake failure" in out
    assert "failed    c/seed0: the worker was killed by SIGKILL (out of memory, or kill -9)" in out
    assert "error: 2 of 3 runs failed; `ablate status tiny --profile smoke` shows why" in out
    code, out = invoke("status", "tiny", "-p", "smoke")
    assert code == 0
    assert re.search(r"a/seed0\s+done\s+4/4\s+11\.00\s+12\.50", out)
    assert re.search(r"b/seed0\s+failed.*ValueError at iteration 3: fake failure", out)
    failed = read_json(runs["c"].work_dir / "failed.json")
    assert "=== " in failed["log_tail"] and failed["exit_code"] == -signal.SIGKILL
    # Fixed, the failed runs run again (and only they), their failed.json gone.
    fake_worker.set(runs["b"].work_dir, outcome="done")
    fake_worker.set(runs["c"].work_dir, outcome="done")
    code, out = invoke("run", "tiny", "-p", "smoke")
    assert code == 0 and "2 done, 1 skipped" in out
    assert not (runs["b"].work_dir / "failed.json").exists()
    assert len(fake_worker.calls(runs["a"].work_dir)) == 2


def test_a_live_lock_keeps_a_second_run_off_and_a_stale_one_is_taken_over(runs, fake_worker):
    RunLock(runs["a"].work_dir, "other").acquire()  # held by this live process
    runs["b"].work_dir.mkdir(parents=True, exist_ok=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (runs["b"].work_dir / "lock").write_text(f"{dead.pid} {os.uname().nodename} gone\n")
    code, out = invoke("run", "tiny", "-p", "smoke")
    assert code == 0, out
    assert f"skipped   a/seed0: running: lock held by pid {os.getpid()}" in out
    assert f"warning: b/seed0: took over the stale lock of pid {dead.pid}" in out
    assert fake_worker.calls(runs["a"].work_dir) == [] and len(fake_worker.calls(runs["b"].work_dir)) == 2
    assert not (runs["b"].work_dir / "lock").exists()
    code, out = invoke("status", "tiny", "-p", "smoke")
    assert re.search(r"a/seed0\s+running", out) and re.search(r"b/seed0\s+done", out)


def test_a_changed_config_is_refused_with_its_keys_and_restart_discards_the_run(runs, fake_worker, tiny_study):
    assert invoke("run", "tiny", "-p", "smoke", "--variants", "a,b")[0] == 0
    old_hash = read_json(runs["a"].work_dir / "run.json")["config_hash"]
    text = tiny_study.read_text()
    # Logging is not part of what a run computes: changing it resumes (here: skips) as before.
    tiny_study.write_text(text.replace('"default_hooks.logger.interval": 1', '"default_hooks.logger.interval": 3'))
    code, out = invoke("run", "tiny", "-p", "smoke", "--variants", "a,b")
    assert code == 0 and "2 skipped" in out
    tiny_study.write_text(text.replace('"optim_wrapper.optimizer.lr": 0.001', '"optim_wrapper.optimizer.lr": 0.002'))
    code, out = invoke("run", "tiny", "-p", "smoke")
    assert code == 2
    assert ("error: a/seed0: config changed since this run started (optim_wrapper.optimizer.lr); refusing to "
            "resume it") in out and "b/seed0: config changed" in out
    assert "--restart discards these runs" in out and fake_worker.calls(runs["c"].work_dir) == []
    code, out = invoke("run", "tiny", "-p", "smoke", "--restart")
    assert code == 0 and "3 done" in out, out
    assert read_json(runs["a"].work_dir / "run.json")["config_hash"] != old_hash
    assert len(fake_worker.calls(runs["a"].work_dir)) == 2  # the old run's files are gone


def test_dry_run_prints_the_plan_and_launches_nothing(runs, fake_worker, tmp_path, monkeypatch, tiny_data):
    monkeypatch.setenv("ABLATE_DATA", str(tmp_path / "no-data-yet"))
    code, out = invoke("run", "tiny", "-p", "smoke", "--dry-run")
    assert code == 0 and "dry run: nothing is launched" in out
    assert len(re.findall(r"[abc]/seed0\s+start", out)) == 3
    written = [p.name for p in (tmp_path / "work_dirs").rglob("*") if p.is_file()]
    assert written == ["fake.json"] * 3 and not (tmp_path / "no-data-yet").exists()
    # With history: one done, one resumable from a checkpoint, each with the config.py it ran; one
    # with a checkpoint but no record of its config, which nothing may resume.
    monkeypatch.setenv("ABLATE_DATA", str(tiny_data))
    assert invoke("configs", "tiny", "-p", "smoke")[0] == 0
    (runs["c"].work_dir / "config.py").unlink()
    write_json(runs["a"].work_dir / "result.json", {"status": "done", "miou_best": 30.0, "miou_last": 29.0})
    for variant in ("b", "c"):
        with zipfile.ZipFile(runs[variant].work_dir / "iter_2.pth", "w") as z:
            z.writestr("x", "y")
    code, out = invoke("run", "tiny", "-p", "smoke", "--dry-run")
    assert re.search(r"a/seed0\s+done\s+mIoU best 30.00, last 29.00", out)
    assert re.search(r"b/seed0\s+resume\s+from iteration 2", out)
    assert re.search(r"c/seed0\s+conflict\s+config changed: \(unknown: no readable record of the config", out)
    assert fake_worker.calls(runs["b"].work_dir) == []


def test_status_shows_pending_runs_and_where_they_resume(runs):
    with zipfile.ZipFile(runs["c"].work_dir / "iter_2.pth", "w") as z:
        z.writestr("x", "y")
    write_json(runs["c"].work_dir / "progress.json", {"iteration": 3, "max_iters": 4, "wall_time_s": 65.0,
                                                       "evaluations": [{"iteration": 2, "mIoU": 7.5}]})
    code, out = invoke("status", "tiny", "-p", "smoke")
    assert code == 0
    assert re.search(r"a/seed0\s+pending\s+-\s+-\s+-\s+-", out)
    assert re.search(r"c/seed0\s+pending\s+2/4\s+7\.50\s+7\.50\s+1:05\s+resumes from iteration 2", out)


def test_status_shows_a_run_waiting_for_a_free_slot_as_queued_and_the_one_training_as_running(runs, fake_worker):
    import threading

    from ablate.launch.local import LocalLauncher
    from ablate.launch.orchestrate import data_root_for, run_study

    study = load_study("tiny")
    fake_worker.set(runs["a"].work_dir, sleep=30)
    order = [runs["a"], runs["b"]]  # one slot: b waits for a
    thread = threading.Thread(target=run_study, args=(study, order, LocalLauncher(),
                                                      data_root_for(study, "smoke", None)), daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not fake_worker.calls(runs["a"].work_dir):
        assert time.time() < deadline, "the first run did not start"
        time.sleep(0.1)
    time.sleep(0.5)  # the worker adopts its lock as it starts
    code, out = invoke("status", "tiny", "-p", "smoke")
    assert code == 0
    assert re.search(r"a/seed0\s+running\s+3/4", out), out
    assert re.search(r"b/seed0\s+queued\s+.*waiting for a free slot", out), out
    assert re.search(r"c/seed0\s+pending", out), out
    os.kill(fake_worker.calls(runs["a"].work_dir)[0]["pid"], signal.SIGKILL)  # then b runs, and the study ends
    thread.join(60)
    assert not thread.is_alive()


@pytest.mark.parametrize("args, message", [
    (["--launcher", "slurmm"], "unknown launcher `slurmm`; did you mean `slurm`?; choose from local, torchrun, slurm"),
    (["--gpus", "1"], "--gpus 1: no CUDA device is visible here"),
    (["--gpus-per-run", "2"], "--gpus-per-run 2: the local launcher runs one process per run"),
    (["--detach"], "--detach needs a launcher whose jobs outlive `ablate run` (slurm), not `local`"),
    (["--partition", "gpu"], "--partition: Slurm options, but the launcher is `local`"),
    (["--seeds", "0,x"], "--seeds 0,x: expected a comma-separated list of ints"),
    (["--variants", "a,dwtt"], "unknown variant `dwtt`"),
    (["--data-root", "/nonexistent/ade"], "--data-root /nonexistent/ade: not a dataset in ADE20K's layout"),
    (["-p", "paper"], "profile `paper` trains on real data: give --data-root DIR"),
])
def test_bad_input_is_one_line_and_exit_code_2(runs, fake_worker, monkeypatch, args, message):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    profile = [] if "-p" in args else ["-p", "smoke"]
    code, out = invoke("run", "tiny", *profile, *args)
    assert code == 2, out
    assert out.startswith("error: ") and message in out and out.count("\n") == 1, out
    assert all(fake_worker.calls(r.work_dir) == [] for r in runs.values())


def test_more_gpus_than_visible_is_refused(runs, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    code, out = invoke("run", "tiny", "-p", "smoke", "--gpus", "4")
    assert code == 2 and out == "error: --gpus 4: only 2 CUDA devices visible\n"


# --- the real thing: slow ------------------------------------------------------------------------


def _ablate(*args, env, timeout=900):
    """`ablate ARGS` in the repository, in its own process group, killed whole if it overruns."""
    proc = subprocess.Popen([sys.executable, "-m", "ablate.cli", *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.fixture
def real_env(tmp_path):
    """Environment for `ablate run table2` in the repository, with run folders and data in tmp_path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ABLATE_")}
    env.update(ABLATE_WORK_DIR=str(tmp_path / "work_dirs"), ABLATE_DATA=str(tmp_path / "data"))
    return env


@pytest.mark.slow
def test_the_table2_smoke_study_trains_all_variants_above_chance_and_reruns_nothing(real_env, tmp_path):
    start = time.time()
    proc = _ablate("run", "table2", "--profile", "smoke", env=real_env)
    total = time.time() - start
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = []
    for variant in ("baseline", "dwt", "attention", "dwt_attention"):
        work_dir = tmp_path / "work_dirs" / "table2" / "smoke" / variant / "seed0"
        result = json.loads((work_dir / "result.json").read_text())
        assert result["iterations"] == result["max_iters"] >= 40
        assert len(result["evaluations"]) >= 1
        assert result["chance_miou"] is not None and result["miou_best"] > result["chance_miou"]
        lines.append(f"{variant:<14} {result['wall_time_s']:6.1f} s  mIoU best {result['miou_best']:5.2f} "
                     f"last {result['miou_last']:5.2f}  (chance {result['chance_miou']:.2f})")
    print(f"\nsmoke study: {total:.0f} s in total\n" + "\n".join(lines))  # timed by benchmarks/cli.py

    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "work_dirs").rglob("result.json")}
    start = time.time()
    proc = _ablate("run", "table2", "--profile", "smoke", env=real_env)
    again = time.time() - start
    print(f"second run: {again:.1f} s")
    assert proc.returncode == 0 and "4 skipped" in proc.stdout, proc.stdout + proc.stderr
    assert stamps == {p: p.stat().st_mtime_ns for p in (tmp_path / "work_dirs").rglob("result.json")}
    assert not list((tmp_path / "work_dirs").rglob("lock"))


@pytest.mark.slow
def test_kill_9_of_the_whole_tree_then_rerun_resumes_every_run_from_its_checkpoint(real_env, tmp_path):
    root = tmp_path / "work_dirs" / "table2" / "smoke"
    args = ("run", "table2", "--profile", "smoke", "--variants", "baseline,dwt")
    proc = subprocess.Popen([sys.executable, "-m", "ablate.cli", *args], cwd=REPO, env=real_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 900
    while folder.latest_checkpoint(root / "dwt" / "seed0") is None:  # baseline finished, dwt under way
        assert proc.poll() is None and time.time() < deadline, "the study ended before dwt saved a checkpoint"
        time.sleep(0.2)
    time.sleep(2)  # into the next interval, perhaps into the next checkpoint's save
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    baseline = (root / "baseline" / "seed0" / "result.json").read_bytes()
    iteration = folder.latest_checkpoint(root / "dwt" / "seed0")[1]
    assert not (root / "dwt" / "seed0" / "result.json").exists() and (root / "dwt" / "seed0" / "lock").exists()

    rerun = _ablate(*args, env=real_env)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "took over the stale lock" in rerun.stdout and "1 done, 1 skipped" in rerun.stdout
    assert (root / "baseline" / "seed0" / "result.json").read_bytes() == baseline  # not trained again
    result = json.loads((root / "dwt" / "seed0" / "result.json").read_text())
    assert result["iterations"] == result["max_iters"] and result["evaluations"]
    assert [a["start_iter"] for a in result["attempts"]] == [0, iteration] and iteration > 0
    assert result["resumed_from"] == iteration
    log = sorted((root / "dwt" / "seed0").glob("*/*.log"))[-1].read_text()
    assert f"resumed epoch: 0, iter: {iteration}" in log
    assert int(re.search(r"Iter\(train\) \[\s*(\d+)/", log).group(1)) > iteration  # no iteration 1..N again
    print(f"\ndwt: killed after its checkpoint at iteration {iteration}; the rerun resumed from {iteration}")
