"""W&B tracking, offline: names and config of runs, the worker's backend, the report job, and W&B off.

Every W&B run here is offline (``WANDB_MODE=offline``) and read back from the ``.wandb`` file it
leaves (:func:`read_offline`); no test needs an account or the network.
"""
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from ablate import configs, tracking
from ablate.io import read_json, write_json
from ablate.runs import folder
from ablate.launch.orchestrate import plan_runs
from ablate.study import load_study

REPO = Path(__file__).resolve().parents[1]
TABLE2 = REPO / "experiments" / "table2.yaml"


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb_home" / name.lower()))
    monkeypatch.setenv("ABLATE_WORK_DIR", str(tmp_path / "work_dirs"))
    monkeypatch.delenv("ABLATE_FULL_ERROR", raising=False)


# --------------------------------------------------------------------------- reading offline runs


def records(path: Path):
    """The protobuf records of a ``run-<id>.wandb`` file (W&B's LevelDB-style log: 32 KiB blocks,
    each record in chunks with a 7-byte header: crc32c, length, type FULL/FIRST/MIDDLE/LAST)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block, header = path.read_bytes(), 32768, 7
    assert data[:4] == b":W&B", f"{path}: not a W&B run file"
    pos, pending = 7, b""
    while pos + header <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos:pos + header])
        if left < header or (kind == 0 and length == 0):  # the rest of the block is padding
            pos += left
            continue
        pending += data[pos + header:pos + header + length]
        pos += header + length
        if kind in (1, 4):  # FULL or LAST: a record is complete
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def _items(updates) -> dict:
    """``{key: value}`` of a record's items; nested keys joined by dots (``comparison.path``)."""
    return {item.key or ".".join(item.nested_key): json.loads(item.value_json) for item in updates}


def read_offline(run_dir: Path) -> dict:
    """What an offline W&B run holds: identity, config, history rows, summary, media files."""
    [wandb_file] = run_dir.glob("run-*.wandb")
    out = {"config": {}, "history": [], "summary": {}, "dir": run_dir}
    for record in records(wandb_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            out.update(id=run.run_id, project=run.project, entity=run.entity, group=run.run_group,
                       name=run.display_name, job_type=run.job_type, tags=list(run.tags))
            out["config"].update(_items(run.config.update))
        elif kind == "config":
            out["config"].update(_items(record.config.update))
        elif kind == "history":
            out["history"].append(_items(record.history.item))
        elif kind == "summary":
            out["summary"].update(_items(record.summary.update))
    return out


def flush_wandb() -> None:
    """Wait until W&B's service has written every record: ``finish()`` returns before it has, and
    a process that logged to W&B waits for it at exit (an ``atexit`` hook); a test must ask."""
    import wandb

    wandb.teardown()


def offline_runs(folder: Path) -> list[dict]:
    """The offline W&B runs in ``folder/wandb``, oldest first (``offline-run-<YYYYmmdd_HHMMSS>-<id>``)."""
    return [read_offline(p) for p in sorted(folder.glob("wandb/offline-run-*"))]


# --------------------------------------------------------------------------- names, config changes


@pytest.fixture
def study():
    return load_study(str(TABLE2))


def test_names_of_a_training_run(study):
    [run] = study.runs("smoke", variants=["dwt_attention"])
    assert tracking.naming(study, run) == dict(
        project="ablate-table2", entity=None, group="table2/smoke", name="dwt_attention-seed0",
        job_type="train", tags=["use_dwt", "use_attention", "smoke"])
    [base] = study.runs("smoke", variants=["baseline"])
    assert tracking.naming(study, base)["tags"] == ["smoke"]
    assert tracking.switch_tags({"+a.b.k": 3, "x.flag": False}) == ["k=3", "flag=False"]


def test_project_defaults_to_ablate_study_and_the_study_switches_tracking(study):
    dsconv = load_study(str(REPO / "experiments" / "dsconv.yaml"))  # no `wandb` section
    assert tracking.project(dsconv) == "ablate-dsconv"
    assert tracking.enabled(study, None) is False  # table2.yaml: enabled: false
    assert tracking.enabled(study, True) is True
    on = load_study(str(TABLE2))
    on.wandb["enabled"] = True
    assert tracking.enabled(on, None) is True and tracking.enabled(on, False) is False


def test_run_config_gets_a_wandb_backend_and_still_loads(study, tmp_path):
    [run] = study.runs("smoke", variants=["dwt"])
    planned = plan_runs(study, [run], tmp_path / "data", overrides=tracking.overrides_for(study))
    path = tmp_path / "config.py"
    configs.dump(planned[0].cfg, path)
    from mmengine.config import Config

    backends = Config.fromfile(str(path), import_custom_modules=False).visualizer.vis_backends
    assert [b["type"] for b in backends] == ["LocalVisBackend", tracking.BACKEND]
    init = backends[1]["init_kwargs"]
    assert (init["group"], init["name"], init["job_type"], init["resume"]) == ("table2/smoke", "dwt-seed0", "train",
                                                                               "allow")
    assert init["config"] == {"overrides": {"model.decode_head.use_dwt": True}}
    assert backends[1]["input_shape"] == [3, 512, 512]


def test_turning_wandb_on_neither_restarts_nor_blocks_a_run(study, tmp_path):
    """A run started without W&B resumes (or stays done) with W&B: only `visualizer` changed."""
    [run] = study.runs("smoke", variants=["dwt"])
    [off] = plan_runs(study, [run], tmp_path / "data")
    run.work_dir.mkdir(parents=True)
    digest = configs.dump(off.cfg, run.work_dir / folder.CONFIG)
    write_json(run.work_dir / "run.json", {"config_hash": digest})
    with zipfile.ZipFile(run.work_dir / "iter_10.pth", "w") as z:  # a complete checkpoint
        z.writestr("data.pkl", b"")
    [on] = plan_runs(study, [run], tmp_path / "data", overrides=tracking.overrides_for(study))
    assert configs.text_hash(configs.config_text(on.cfg)) != digest  # config.py's text would change
    assert on.key == off.key and (on.action, on.discard) == ("resume", False)  # what the run computes would not
    write_json(run.work_dir / "result.json", {"config_hash": digest, "miou_best": 1.0, "miou_last": 1.0})
    [on] = plan_runs(study, [run], tmp_path / "data", overrides=tracking.overrides_for(study))
    assert on.action == "done"


def test_run_id_is_kept_by_the_folder_and_new_after_it_is_emptied(tmp_path):
    first = tracking.run_id(tmp_path, "table2/smoke dwt seed0")
    assert first.startswith("table2-smoke-dwt-seed0-") and "/" not in first
    assert tracking.run_id(tmp_path, "table2/smoke dwt seed0") == first
    folder.discard(tmp_path)  # what --restart does
    assert tracking.run_id(tmp_path, "table2/smoke dwt seed0") != first


# --------------------------------------------------------------------------- the worker's backend


def _attempt(cfg, save_dir: Path, rows: list[tuple[dict, int]]) -> None:
    """What mmengine's Runner does with the visualiser over one training attempt."""
    from mmengine.visualization import Visualizer

    vis = Visualizer(name=f"vis-{save_dir.name}", vis_backends=cfg.visualizer.vis_backends, save_dir=str(save_dir))
    vis.add_config(cfg)
    for scalars, step in rows:
        vis.add_scalars(scalars, step=step)
    vis.close()


def test_backend_logs_names_config_iterations_and_summary_and_a_resume_keeps_the_id(study, tmp_path, monkeypatch):
    import ablate.measure

    cache_dirs = []
    monkeypatch.setattr(ablate.measure, "measure_cached", lambda cfg, shape, cache: cache_dirs.append(
        (Path(cache), tuple(shape))) or {"params_m": 4.6, "gmacs": 24.2})
    [run] = study.runs("smoke", variants=["dwt"])
    run.work_dir.mkdir(parents=True)
    cfg = configs.resolve(study, run)
    cfg.merge_from_dict(tracking.run_overrides(study, run, cfg))
    cfg.work_dir = str(run.work_dir.resolve())  # as the worker sets it
    evals = [{"iteration": 20, "mIoU": 30.0, "aAcc": 60.0}]
    write_json(run.work_dir / "progress.json", {"evaluations": evals})
    _attempt(cfg, run.work_dir / "t1" / "vis_data", [
        ({"loss": 2.0, "lr": 0.001, "iter": 10}, 10), ({"loss": 1.5, "lr": 0.0009, "iter": 20}, 20),
        ({"mIoU": 30.0, "aAcc": 60.0, "mAcc": 40.0}, 20)])
    # the worker was killed after iteration 20, and resumes; ProgressHook kept the evaluation
    time.sleep(1.1)  # W&B names an offline run's folder by the second it started, and its id
    write_json(run.work_dir / "progress.json", {"evaluations": evals + [{"iteration": 40, "mIoU": 28.0,
                                                                          "aAcc": 61.0}]})
    _attempt(cfg, run.work_dir / "t2" / "vis_data", [
        ({"loss": 1.0, "lr": 0.0001, "iter": 40}, 40), ({"mIoU": 28.0, "aAcc": 61.0, "mAcc": 41.0}, 40)])
    flush_wandb()

    first, second = offline_runs(run.work_dir)
    assert first["id"] == second["id"] == (run.work_dir / tracking.ID_FILE).read_text().strip()
    for logged in (first, second):
        assert (logged["project"], logged["group"], logged["name"], logged["job_type"], logged["tags"]) == (
            "ablate-table2", "table2/smoke", "dwt-seed0", "train", ["use_dwt", "smoke"])
        assert logged["config"]["overrides"] == {"model.decode_head.use_dwt": True}
        assert logged["config"]["model"]["decode_head"]["use_dwt"] is True  # the resolved config
        assert logged["config"]["ablate"]["variant"] == "dwt"
    # W&B's step is the iteration: the evaluation at iteration 20 joins that row
    assert [(r["_step"], r["iter"], r.get("loss"), r.get("mIoU")) for r in first["history"]] == [
        (10, 10, 2.0, None), (20, 20, 1.5, 30.0)]
    assert [(r["_step"], r["loss"], r["mIoU"]) for r in second["history"]] == [(40, 1.0, 28.0)]
    assert {k: second["summary"][k] for k in ("miou_best", "miou_last", "best_iter", "params_m", "gmacs")} == dict(
        miou_best=30.0, miou_last=28.0, best_iter=20, params_m=4.6, gmacs=24.2)
    # the cache `ablate report` reads: <work_root>/.measure
    assert cache_dirs[-1] == ((tmp_path / "work_dirs" / ".measure").resolve(), (3, 512, 512))


# --------------------------------------------------------------------------- the report job


def test_report_job_holds_the_table_of_the_json_report(study, tmp_path):
    from hand_runs import runs_frame

    from ablate.report import render_json
    from ablate.results import summarize

    seeds = {run.seed for run in study.runs("smoke")}
    best = {v: dict.fromkeys(seeds, value) for v, value in (("baseline", 40.0), ("dwt", 41.5), ("attention", 39.0))}
    measured = {v: {"params_m": 4.5 + i / 100, "gmacs": 7.0 + i / 10} for i, v in enumerate(study.variants)}
    results = summarize(study, "smoke", runs_frame(study, best, measured=measured), measured)
    where = tracking.log_report(study, results)
    flush_wandb()

    [logged] = offline_runs(tmp_path / "work_dirs" / "table2" / "smoke")
    assert str(logged["dir"]) == where
    assert (logged["project"], logged["group"], logged["name"], logged["job_type"]) == (
        "ablate-table2", "table2/smoke", "report", "report")
    assert_table_matches(logged, json.loads(render_json(results)))
    charts = {p.name.split("_table")[0] for p in (logged["dir"] / "files" / "media" / "table").glob("*.table.json")}
    assert {"miou_vs_gflops", "delta_miou"} <= charts


def assert_table_matches(logged: dict, report: dict) -> None:
    """The report run's ``comparison`` table equals the JSON report's ``variants``, number for number."""
    summary = logged["summary"]  # nested keys flattened: "comparison.path"
    assert summary["comparison._type"] == "table-file"
    table = json.loads((logged["dir"] / "files" / summary["comparison.path"]).read_text())
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert rows == report["variants"]


# --------------------------------------------------------------------------- W&B off


OFF_SCRIPT = """
import json, sys
from pathlib import Path
from ablate.cli import app
from ablate.study import load_study

def cli(*args):
    try:
        app(list(args), standalone_mode=False)
    except SystemExit as exc:
        assert not exc.code, exc.code

cli("run", "table2", "--profile", "smoke", "--dry-run")              # the study leaves W&B off
cli("run", "table2", "--profile", "smoke", "--dry-run", "--no-wandb")
cli("run", "table2", "--profile", "smoke", "--dry-run", "--wandb")   # on: only the workers import it
study = load_study("table2")
for run in study.runs("smoke"):
    run.work_dir.mkdir(parents=True)
    (run.work_dir / "result.json").write_text(json.dumps({"miou_best": 1.0, "miou_last": 1.0}))
cli("report", "table2", "--profile", "smoke", "--no-measure", "--out", sys.argv[1], "-f", "json")
# the worker: mmengine's Runner built from a run config with W&B off
from ablate import configs
from ablate.launch.orchestrate import data_root_for, plan_runs
from ablate.train import ProgressHook, build_runner
run = study.runs("smoke", variants=["dwt"])[0]
[planned] = plan_runs(study, [run], data_root_for(study, "smoke", None))
work_dir = Path(sys.argv[1]) / "run"
configs.dump(planned.cfg, work_dir / "config.py")
build_runner(work_dir.resolve(), 1, ProgressHook(work_dir, 0.0, write=False))
print("wandb imported:", "wandb" in sys.modules)
"""


def test_with_wandb_off_wandb_is_never_imported(tmp_path):
    env = dict(os.environ, ABLATE_DATA=str(tmp_path / "data"))
    result = subprocess.run([sys.executable, "-c", OFF_SCRIPT, str(tmp_path / "out")], capture_output=True,
                            text=True, cwd=REPO, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "wandb imported: False" in result.stdout, result.stdout[-2000:]


# --------------------------------------------------------------------------- end to end


def ablate(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "ablate.cli", *args], capture_output=True, text=True, cwd=REPO,
                            env=os.environ)
    assert result.returncode == 0, f"ablate {' '.join(args)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.mark.slow
def test_smoke_study_on_wandb_offline(study, tmp_path):
    """The four smoke runs in one group, a resumed run on the same W&B run, the report's table."""
    ablate("run", "table2", "--profile", "smoke", "--wandb")
    runs = study.runs("smoke")
    logged = {run.variant: offline_runs(run.work_dir) for run in runs}
    assert all(len(found) == 1 for found in logged.values()), {v: len(f) for v, f in logged.items()}

    out = tmp_path / "reports"
    ablate("report", "table2", "--profile", "smoke", "--out", str(out), "-f", "json")  # W&B off: no report job
    report = json.loads((out / "table2" / "smoke.json").read_text())
    measured = {row["variant"]: row for row in report["variants"]}
    for run in runs:
        [w] = logged[run.variant]
        result = read_json(run.work_dir / "result.json")
        assert (w["project"], w["group"], w["name"], w["job_type"]) == (
            "ablate-table2", "table2/smoke", f"{run.variant}-seed0", "train")
        assert w["tags"] == tracking.switch_tags(study.variant(run.variant).overrides) + ["smoke"]
        assert w["config"]["overrides"] == study.variant(run.variant).overrides
        assert w["config"]["model"]["decode_head"]["use_dwt"] == ("dwt" in run.variant)
        assert w["config"]["train_cfg"]["max_iters"] == 40
        assert w["summary"]["miou_best"] == result["miou_best"]
        assert w["summary"]["miou_last"] == result["miou_last"]
        assert w["summary"]["params_m"] == measured[run.variant]["params_m"]
        assert w["summary"]["gmacs"] == measured[run.variant]["gmacs"]
        trained = [r for r in w["history"] if "loss" in r]
        assert [r["iter"] for r in trained] == [5, 10, 15, 20, 25, 30, 35, 40] and all("lr" in r for r in trained)
        evaluated = [(r["iter"], r["mIoU"]) for r in w["history"] if "mIoU" in r]  # logged as float32
        assert evaluated == [(40, pytest.approx(result["miou_last"], abs=1e-4))]

    # a run killed after its checkpoint at iteration 30 resumes on the same W&B run
    base = runs[0].work_dir
    for name in ("result.json", "iter_40.pth", "last_checkpoint"):
        (base / name).unlink()
    ablate("run", "table2", "--profile", "smoke", "--wandb", "--variants", "baseline")
    first, resumed = offline_runs(base)
    assert resumed["id"] == first["id"] == (base / tracking.ID_FILE).read_text().strip()
    assert read_json(base / "result.json")["resumed_from"] == 30
    assert [(r["_step"], r["iter"]) for r in resumed["history"] if "loss" in r] == [(35, 35), (40, 40)]
    assert resumed["summary"]["miou_last"] == read_json(base / "result.json")["miou_last"]

    ablate("report", "table2", "--profile", "smoke", "--out", str(out), "-f", "json", "--wandb")
    [job] = offline_runs(base.parents[1])
    assert (job["group"], job["name"], job["job_type"]) == ("table2/smoke", "report", "report")
    assert_table_matches(job, json.loads((out / "table2" / "smoke.json").read_text()))
    shutil.rmtree(tmp_path / "work_dirs")  # checkpoints: keep the tmp folder small
