"""The ground floor (ablate.runs): layout, typed records, the lock, and the one reader of a run's state."""
import json
import os
import socket
import subprocess
import sys
import zipfile

import pytest

from ablate.runs import (Attempt, Evaluation, Failure, JobState, Progress, RecordError, Result, RunInfo, RunStatus,
                         WorkRoot, bad_name, read_state)
from ablate.runs import folder
from ablate.runs.lock import LAUNCHER, WORKER, RunLock, live_holder, process_id
from ablate.runs.records import append_attempt, read_attempts


@pytest.fixture
def run(tmp_path):
    run = WorkRoot(tmp_path).run("s", "p", "v", 0)
    run.work_dir.mkdir(parents=True)
    return run


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --------------------------------------------------------------------------- layout


def test_a_run_knows_its_folder_and_the_root_its_shared_folders(tmp_path):
    root = WorkRoot(tmp_path)
    run = root.run("table2", "smoke", "dwt", 2)
    assert run.work_dir == tmp_path / "table2" / "smoke" / "dwt" / "seed2" and run.key == "dwt/seed2"
    assert root.measure_cache == tmp_path / ".measure"
    assert root.timings_file("table2", "smoke") == tmp_path / "table2" / "smoke" / "timings.json"


def test_the_work_root_defaults_to_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ABLATE_WORK_DIR", str(tmp_path / "w"))
    assert WorkRoot.of(None).path == tmp_path / "w"
    monkeypatch.delenv("ABLATE_WORK_DIR")
    assert WorkRoot.of(None).path.name == "work_dirs"


@pytest.mark.parametrize("name", ["../../x", "..", ".hidden", "a/b", "", "-x", "a b", 3, None])
def test_names_that_could_leave_the_work_root_are_refused(tmp_path, name):
    assert bad_name(name) is not None
    with pytest.raises(ValueError, match="not a valid name"):
        WorkRoot(tmp_path).run("s", "p", name, 0)


@pytest.mark.parametrize("name", ["dwt_attention", "b2", "v1.5", "A-b"])
def test_ordinary_names_are_fine(name):
    assert bad_name(name) is None


# --------------------------------------------------------------------------- records


def test_records_round_trip_with_a_schema_and_typed_fields(run):
    result = Result(miou_best=43.5, miou_last=42.0, evaluations=[Evaluation(8000, 42.0, 70.1, 55.0)],
                    attempts=[Attempt("2026-01-01T00:00:00+00:00", 0, 123, "node1")], iterations=8000)
    result.write(run.work_dir)
    data = json.loads((run.work_dir / "result.json").read_text())
    assert data["schema"] == 1 and data["evaluations"][0] == {"iteration": 8000, "mIoU": 42.0, "aAcc": 70.1,
                                                               "mAcc": 55.0}
    assert Result.read(run.work_dir) == result
    assert Progress.read(run.work_dir) is None  # missing: None, not an error


@pytest.mark.parametrize("cls, text, reason", [
    (Result, "{", "not valid JSON"),
    (Result, "[]", "not a JSON object but list"),
    (Result, '{"miou_best": 1.0}', "missing field `miou_last`"),
    (Result, '{"miou_best": true, "miou_last": 1.0}', "`miou_best` is True, not a finite number"),
    (Result, '{"miou_best": 1.0, "miou_last": 1.0, "evaluations": [{"iteration": "8"}]}',
     "`evaluations[0].iteration` is '8', not int"),
    (Progress, '{"iteration": 3, "schema": 99}', "schema 99 is newer than this ablate reads"),
    (RunInfo, '{"world_size": 1.5}', "`world_size` is 1.5, not int"),
    (Failure, '{"log_tail": "x"}', "missing field `error`"),
])
def test_an_unreadable_record_names_its_file_and_what_is_wrong(run, cls, text, reason):
    (run.work_dir / cls.FILE).write_text(text)
    with pytest.raises(RecordError) as err:
        cls.read(run.work_dir)
    assert str(err.value).startswith(f"{run.work_dir / cls.FILE}: ") and reason in str(err.value)


def test_files_of_older_ablate_versions_read_the_same_and_unknown_keys_are_ignored(run):
    (run.work_dir / "progress.json").write_text(json.dumps({"iteration": 3, "max_iters": 4, "future": 1}))
    assert Progress.read(run.work_dir) == Progress(iteration=3, max_iters=4)


def test_attempts_are_appended_and_a_damaged_line_loses_only_itself(run):
    append_attempt(run.work_dir, Attempt("t0", 0, 1))
    with open(run.work_dir / "attempts.jsonl", "a") as f:
        f.write('{"started_at": "t1", "start_i\n')  # a write cut short
    append_attempt(run.work_dir, Attempt("t2", 20, 3))
    assert [a.start_iter for a in read_attempts(run.work_dir)] == [0, 20]


# --------------------------------------------------------------------------- lock


def test_a_lock_names_its_role_and_the_worker_adopts_it_with_the_token(run):
    launcher = RunLock(run.work_dir, "tok", role=LAUNCHER)
    assert launcher.acquire() is None
    holder = live_holder(run.work_dir)
    assert (holder.pid, holder.role, holder.process) == (os.getpid(), LAUNCHER, process_id(os.getpid()))
    assert RunLock(run.work_dir, "tok", role=WORKER).acquire() is None  # same token: adopted
    assert live_holder(run.work_dir).role == WORKER
    launcher.release()
    assert not (run.work_dir / "lock").exists()


def test_a_reused_pid_does_not_hold_the_lock(run):
    # our own pid, but another process start: the process that wrote the lock is gone
    (run.work_dir / "lock").write_text(f"{os.getpid()} {socket.gethostname()} t worker 00000000:1\n")
    assert live_holder(run.work_dir) is None
    assert RunLock(run.work_dir, "new").acquire().pid == os.getpid()  # taken over as stale


# --------------------------------------------------------------------------- state


def test_nothing_is_pending(run):
    state = read_state(run)
    assert state.status is RunStatus.PENDING and state.iteration is None and state.problems == ()


def test_a_launcher_holding_the_lock_means_queued_a_worker_running(run):
    lock = RunLock(run.work_dir, "tok", role=LAUNCHER)
    lock.acquire()
    assert read_state(run).status is RunStatus.QUEUED
    RunLock(run.work_dir, "tok", role=WORKER).acquire()
    Progress(iteration=5, max_iters=40, phase="eval").write(run.work_dir)
    state = read_state(run)
    assert state.status is RunStatus.RUNNING and (state.iteration, state.max_iters) == (5, 40)


def test_the_scheduler_word_comes_before_the_lock(run):
    RunInfo(launcher="slurm", job_id="77").write(run.work_dir)
    waiting = read_state(run, job_state=lambda r, info: JobState(info.job_id, "PENDING", active=True, queued=True))
    assert waiting.status is RunStatus.QUEUED and waiting.job.job_id == "77"
    gone = read_state(run, job_state=lambda r, info: JobState(info.job_id, "COMPLETED", active=False))
    assert gone.status is RunStatus.PENDING


def test_failed_then_done_and_stale_by_the_config_key(run):
    folder.record_failure(run.work_dir, "CUDA out of memory\n at iter 12", "tail", 1)
    state = read_state(run)
    assert state.status is RunStatus.FAILED and state.error == "CUDA out of memory at iter 12"
    Result(miou_best=40.0, miou_last=39.0, run_key="k1").write(run.work_dir)
    assert read_state(run, expected_key=lambda *_: "k1").status is RunStatus.DONE
    assert read_state(run, expected_key=lambda *_: "k2").status is RunStatus.STALE
    assert read_state(run).status is RunStatus.DONE  # not judged without an expected key


def test_checkpoints_of_another_config_are_stale_and_their_iteration_is_known(run):
    RunInfo(run_key="old").write(run.work_dir)
    for n in (10, 20):
        with zipfile.ZipFile(run.work_dir / f"iter_{n}.pth", "w") as z:
            z.writestr("data.pkl", b"x")
    (run.work_dir / "iter_30.pth").write_bytes(b"PK\x03\x04 cut short")
    assert read_state(run, expected_key=lambda *_: "old").status is RunStatus.PENDING
    state = read_state(run, expected_key=lambda *_: "new")
    assert state.status is RunStatus.STALE and state.checkpoint == (run.work_dir / "iter_20.pth", 20)
    assert state.iteration == 20


def test_an_unreadable_file_is_named_and_the_status_comes_from_the_rest(run):
    (run.work_dir / "result.json").write_text("{")
    (run.work_dir / "failed.json").write_text("{")
    (run.work_dir / "lock").write_text(f"{dead_pid()} {socket.gethostname()} t worker -\n")
    state = read_state(run)
    assert state.status is RunStatus.FAILED and state.error == "failed.json is unreadable"
    assert [p.split(": ")[0] for p in state.problems] == [str(run.work_dir / "result.json"),
                                                          str(run.work_dir / "failed.json")]
