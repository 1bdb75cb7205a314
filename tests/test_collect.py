"""Collect: run folders built by hand -> rows with the right status and numbers; no torch needed."""
import json
import math
import os
import socket
import subprocess
import sys
import time
import types
import zipfile
from pathlib import Path

import pytest

from ablate.collect import RUN_COLUMNS, collect, measure_variants
from ablate.study import load_study

REPO = Path(__file__).resolve().parents[1]
# The row keys of collect's module doc, spelled out here so that a change to either side fails this test.
CONTRACT_KEYS = {"study", "profile", "variant", "seed", "status", "work_dir", "miou_best", "miou_last", "aacc",
                 "iterations", "max_iters", "wall_time_s", "train_time_s", "params_m", "gmacs", "error"}


def rows_of(root, study, measure=False, problems=None):
    """collect's runs frame as plain dicts, NaN read as None; its problems appended to ``problems``."""
    collection = collect(study, "smoke", work_root=root, measure=measure)
    if problems is not None:
        problems.extend(collection.problems)
    return [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}
            for row in collection.runs.to_dict("records")]


@pytest.fixture
def study():
    return load_study(str(REPO / "experiments" / "table2.yaml"))


def run_dir(root, variant, seed=0):
    path = Path(root) / "table2" / "smoke" / variant / f"seed{seed}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_result(root, variant, seed=0, best=40.0, last=39.0, **extra):
    result = {"study": "table2", "profile": "smoke", "variant": variant, "seed": seed, "status": "done",
              "miou_best": best, "miou_last": last, "aacc_last": 71.5, "iterations": 40, "max_iters": 40,
              "wall_time_s": 12.5, **extra}
    (run_dir(root, variant, seed) / "result.json").write_text(json.dumps(result))


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def by_variant(rows):
    return {row["variant"]: row for row in rows}


def test_rows_have_the_contract_keys_and_one_row_per_run(study, tmp_path):
    write_result(tmp_path, "baseline", best=43.5, last=42.25)
    rows = rows_of(tmp_path, study)
    assert [r["variant"] for r in rows] == ["baseline", "dwt", "attention", "dwt_attention"]
    assert all(set(r) == CONTRACT_KEYS for r in rows) and set(RUN_COLUMNS) == CONTRACT_KEYS
    done = rows[0]
    assert done["status"] == "done"
    assert (done["miou_best"], done["miou_last"], done["aacc"]) == (43.5, 42.25, 71.5)
    assert (done["iterations"], done["max_iters"], done["wall_time_s"]) == (40, 40, 12.5)
    assert done["work_dir"] == str(tmp_path / "table2" / "smoke" / "baseline" / "seed0")
    assert done["params_m"] is None and done["gmacs"] is None and done["error"] is None
    assert [r["status"] for r in rows[1:]] == ["pending"] * 3  # no folders at all: pending, not dropped


def test_status_precedence_done_running_failed_pending(study, tmp_path):
    # result.json wins over a live lock and a failed.json
    write_result(tmp_path, "baseline")
    (run_dir(tmp_path, "baseline") / "lock").write_text(f"{os.getpid()} {socket.gethostname()} t0")
    (run_dir(tmp_path, "baseline") / "failed.json").write_text(json.dumps({"error": "old failure"}))
    # a live lock wins over failed.json (the run was restarted and failed.json is about to go)
    (run_dir(tmp_path, "dwt") / "lock").write_text(f"{os.getpid()} {socket.gethostname()} t1")
    (run_dir(tmp_path, "dwt") / "failed.json").write_text(json.dumps({"error": "old failure"}))
    (run_dir(tmp_path, "dwt") / "progress.json").write_text(json.dumps({"iteration": 17, "max_iters": 40}))
    # a stale lock (dead pid) does not make a run running: failed.json decides
    (run_dir(tmp_path, "attention") / "lock").write_text(f"{dead_pid()} {socket.gethostname()} t2")
    (run_dir(tmp_path, "attention") / "failed.json").write_text(
        json.dumps({"error": "CUDA out of memory at iter 12", "log_tail": "...", "exit_code": 1}))
    # checkpoints only: pending (resumable), iterations from the newest complete checkpoint (a zip,
    # as torch.save writes it; iter_30 was cut short by a kill)
    for name in ("iter_10.pth", "iter_20.pth"):
        with zipfile.ZipFile(run_dir(tmp_path, "dwt_attention") / name, "w") as archive:
            archive.writestr("data.pkl", b"x")
    (run_dir(tmp_path, "dwt_attention") / "iter_30.pth").write_bytes(b"PK\x03\x04 truncated")
    rows = by_variant(rows_of(tmp_path, study))
    assert rows["baseline"]["status"] == "done" and rows["baseline"]["error"] is None
    assert rows["dwt"]["status"] == "running"
    assert (rows["dwt"]["iterations"], rows["dwt"]["max_iters"]) == (17, 40)
    assert rows["attention"]["status"] == "failed"
    assert rows["attention"]["error"] == "CUDA out of memory at iter 12"
    assert rows["dwt_attention"]["status"] == "pending"
    assert rows["dwt_attention"]["iterations"] == 20


def test_unreadable_failed_json_is_still_a_failure(study, tmp_path):
    (run_dir(tmp_path, "dwt") / "failed.json").write_text("{not json")
    rows = by_variant(rows_of(tmp_path, study))
    assert rows["dwt"]["status"] == "failed" and "failed.json" in rows["dwt"]["error"]


@pytest.mark.parametrize("text, age_s, running", [
    ("{pid} {host} tok", 0, True),
    ("{pid} {host} tok", 3600, True),           # a live pid on this host: no heartbeat needed
    ("{dead} {host} tok", 0, False),
    ("{dead} some-other-node-7 tok", 0, True),  # another host: live while its heartbeat is fresh
    ("{dead} some-other-node-7 tok", 3600, False),
    ("{pid}", 0, False),                        # not a lock line ("<pid> <host> <token>"): no holder
    ("", 0, False),
    ("garbage", 0, False),
])
def test_lock_is_read_as_the_launcher_reads_it(study, tmp_path, text, age_s, running):
    lock = run_dir(tmp_path, "baseline") / "lock"
    lock.write_text(text.format(pid=os.getpid(), dead=dead_pid(), host=socket.gethostname()))
    stamp = time.time() - age_s
    os.utime(lock, (stamp, stamp))
    row = rows_of(tmp_path, study)[0]
    assert row["status"] == ("running" if running else "pending")


@pytest.mark.parametrize("content, reason", [
    ("{\"miou_best\": 43.0, ", "not valid JSON (Expecting"),      # torn write of a non-atomic copy
    ("[1, 2]", "not a JSON object"),
    ('{"miou_best": 43.0}', "missing field `miou_last`"),
    ('{"miou_best": "43.0", "miou_last": 42.0}', "`miou_best` is '43.0', not a finite number"),
    ('{"miou_best": NaN, "miou_last": 42.0}', "`miou_best` is nan, not a finite number"),
])
def test_a_corrupt_result_is_named_and_its_numbers_are_not_guessed(study, tmp_path, content, reason):
    write_result(tmp_path, "baseline")
    bad = run_dir(tmp_path, "dwt") / "result.json"
    bad.write_text(content)
    problems = []
    rows = by_variant(rows_of(tmp_path, study, problems=problems))
    assert list(rows) == ["baseline", "dwt", "attention", "dwt_attention"]  # every run keeps its row
    assert rows["baseline"]["status"] == "done" and rows["baseline"]["miou_best"] == 40.0
    assert rows["dwt"]["status"] == "pending" and rows["dwt"]["miou_best"] is None
    assert problems == [f"{bad}: {problems[0].split(': ', 1)[1]}"] and reason in problems[0]


def test_every_corrupt_file_is_named(study, tmp_path):
    for variant in ("dwt", "attention"):
        (run_dir(tmp_path, variant) / "result.json").write_text("")
    (run_dir(tmp_path, "baseline") / "progress.json").write_text("{garbage")
    problems = []
    rows_of(tmp_path, study, problems=problems)
    assert sorted(p.split(": ")[0] for p in problems) == sorted(
        str(run_dir(tmp_path, v) / f) for v, f in (("dwt", "result.json"), ("attention", "result.json"),
                                                    ("baseline", "progress.json")))


def test_injected_measurements_fill_params_and_flops(study, tmp_path):
    write_result(tmp_path, "dwt")
    measured = {"baseline": {"params_m": 4.52, "gmacs": 7.1}, "dwt": {"params_m": 4.574, "gmacs": 7.2},
                "attention": {"error": "no torch"}}
    rows = by_variant(rows_of(tmp_path, study, measure=measured))
    assert (rows["baseline"]["params_m"], rows["baseline"]["gmacs"]) == (4.52, 7.1)  # pending runs get them too
    assert (rows["dwt"]["params_m"], rows["dwt"]["gmacs"]) == (4.574, 7.2)
    assert rows["attention"]["params_m"] is None and rows["dwt_attention"]["gmacs"] is None


def test_measure_variants_resolves_each_variant_once(study, tmp_path):
    calls = []

    def fake_measure(cfg, input_shape, cache_dir):
        calls.append((cfg.ablate["variant"], cfg.model.decode_head.get("use_dwt"), input_shape, cache_dir))
        return {"params_m": 4.5 + len(calls), "gmacs": 7.0, "uncounted": {}}

    two_seeds = study.runs("smoke", work_root=tmp_path, seeds=[0, 1])
    assert len(two_seeds) == 8
    measured = measure_variants(study, "smoke", work_root=tmp_path, measure_fn=fake_measure)
    assert [c[0] for c in calls] == ["baseline", "dwt", "attention", "dwt_attention"]
    assert [c[1] for c in calls] == [False, True, False, True]  # the variant's overrides were applied
    assert all(c[2] == (3, 512, 512) and c[3] == tmp_path / ".measure" for c in calls)
    assert measured["dwt"]["params_m"] == 6.5


def test_default_measurement_goes_through_ablate_measure(study, tmp_path, monkeypatch):
    seen = []
    fake = types.ModuleType("ablate.measure")
    fake.measure_cached = lambda cfg, shape, cache: seen.append(cache) or {"params_m": 4.52, "gmacs": 7.1}
    monkeypatch.setitem(sys.modules, "ablate.measure", fake)
    rows = collect(study, "smoke", work_root=tmp_path).runs  # measure=True is the default
    assert len(seen) == 4 and rows.params_m[0] == 4.52


def test_measurement_that_cannot_run_here_becomes_an_error_value(study, tmp_path):
    def no_torch(cfg, input_shape, cache_dir):
        raise ModuleNotFoundError("No module named 'torch'")

    measured = measure_variants(study, "smoke", work_root=tmp_path, measure_fn=no_torch)
    assert measured["baseline"] == {"error": "No module named 'torch'"}
