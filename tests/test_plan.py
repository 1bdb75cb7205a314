"""`ablate plan`: evaluations counted as mmengine's loop runs them, per-variant paces from
timings.json (evaluation included, stale timings ignored), and `--measure` timing real steps."""
import json
import os
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ablate import configs, timings
from ablate.cli import app
from ablate.io import write_json
from ablate.plan import evaluations, plan_study
from ablate.runs import WorkRoot
from ablate.study import load_study

REPO = Path(__file__).resolve().parents[1]


def invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.mark.parametrize("max_iters, interval, begin", [(40, 40, 1), (160000, 8000, 1), (45, 10, 1), (45, 10, 25),
                                                        (9, 10, 1), (10, 10, 11), (7, 1, 1)])
def test_evaluations_follow_mmengines_loop(max_iters, interval, begin):
    from mmengine.config import Config

    cfg = Config(dict(train_cfg=dict(max_iters=max_iters, val_interval=interval, val_begin=begin),
                      val_dataloader=dict(batch_size=1), val_cfg=dict(type="ValLoop")))
    # IterBasedTrainLoop.run: after iteration i, evaluate when i >= val_begin and (i % val_interval
    # == 0 or i == max_iters)
    expected = sum(1 for i in range(1, max_iters + 1) if i >= begin and (i % interval == 0 or i == max_iters))
    assert evaluations(cfg) == expected
    cfg.val_cfg = None
    assert evaluations(cfg) == 0


def write_timings(study, profile, paces, processes=1, val_images=10, stale=()):
    """A timings.json as `plan --measure` writes it, with ``paces[variant] = (s/iter, eval s/image)``."""
    variants = {}
    for run in study.runs(profile):
        cfg = configs.resolve(study, run, processes=processes)
        key = "0" * 16 if run.variant in stale else timings.cost_key(cfg)
        spi, spe = paces[run.variant]
        variants[run.variant] = {"sec_per_iter": spi, "eval_sec_per_image": spe, "iterations_timed": 3,
                                 "config_key": key}
    write_json(WorkRoot.of(None).timings_file(study.name, profile),
               {"schema": 1, "device": "cpu: test (1 thread)", "measured_at": "2025-01-01T00:00:00+00:00",
                "processes": processes, "per_process_batch": 2, "val_images": val_images, "variants": variants})


def test_timings_give_each_variant_its_pace_and_the_total_includes_evaluation(tiny_study, monkeypatch):
    study = load_study("tiny")  # 4 iterations, one evaluation per run
    write_timings(study, "smoke", {"a": (1.0, 0.5), "b": (2.0, 0.5), "c": (3.0, 1.0)}, val_images=10)
    plan = plan_study(study, "smoke")
    assert {r.run.variant: (r.pace.sec_per_iter, r.pace.source) for r in plan.runs} == {
        "a": (1.0, "timings.json"), "b": (2.0, "timings.json"), "c": (3.0, "timings.json")}
    assert [r.evaluations for r in plan.runs] == [1, 1, 1]
    train, evals = plan.hours()
    assert train * 3600 == pytest.approx(4 * (1 + 2 + 3))
    assert evals * 3600 == pytest.approx(10 * (0.5 + 0.5 + 1.0))
    monkeypatch.setenv("COLUMNS", "200")
    code, out = invoke("plan", "tiny", "-p", "smoke")
    assert code == 0, out
    assert re.search(r"\bb\s+2\s+0.5\s+timings.json", out)
    assert "timings.json: cpu: test (1 thread)" in out
    assert "estimated compute: 44 s device time in all (training 24 s, evaluation 20 s)" in out
    # --sec-per-iter overrides training for all; evaluation still comes from the timings
    code, out = invoke("plan", "tiny", "-p", "smoke", "--sec-per-iter", "2")
    assert "at 2 s/iter (flag)" in out and "(training 24 s, evaluation 20 s)" in out


def test_stale_timings_are_ignored_and_named(tiny_study, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    study = load_study("tiny")
    write_timings(study, "smoke", {"a": (1.0, 0.5), "b": (2.0, 0.5), "c": (3.0, 1.0)}, stale=("b",))
    plan = plan_study(study, "smoke")
    assert plan.stale == ["b"] and plan.hours() == (None, None)
    code, out = invoke("plan", "tiny", "-p", "smoke")
    assert "timings.json timed `b` with another config" in out and re.search(r"\bb\s+-\s+-\s+unknown", out)
    code, out = invoke("plan", "tiny", "-p", "smoke", "--gpus-per-run", "2")  # other processes, other config
    assert code == 0 and "timings.json timed 1 process(es) per run, not 2" in out, out
    assert "2 process(es) per run, total batch 2 (1 per process)" in out


def test_plan_measure_times_every_variant_and_keeps_it_in_timings_json(tiny_study, monkeypatch):
    import torch

    monkeypatch.setenv("COLUMNS", "200")
    # A run gets this machine's cores (here: one) split over its processes, and so does the timing.
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    threads = torch.get_num_threads()
    code, out = invoke("plan", "tiny", "-p", "smoke", "--measure")
    assert code == 0, out
    assert torch.get_num_threads() == threads
    study = load_study("tiny")
    data = json.loads(WorkRoot.of(None).timings_file("tiny", "smoke").read_text())
    assert set(data["variants"]) == {"a", "b", "c"} and re.fullmatch(r".+ \(cpu, 1 thread\)", data["device"])
    assert data["val_images"] == 2 and data["per_process_batch"] == 2 and data["processes"] == 1
    for run in study.runs("smoke"):
        timing = data["variants"][run.variant]
        assert timing["sec_per_iter"] > 0 and timing["eval_sec_per_image"] > 0
        assert timing["config_key"] == timings.cost_key(configs.resolve(study, run))
        assert re.search(rf"timed {run.variant}\s+[\d.]+ s/iter, eval [\d.]+ s/image", out)
        assert re.search(rf"\b{run.variant}\s+[\d.]+\s+[\d.]+\s+timings.json", out)
    assert re.search(r"estimated compute: .* \(training .*, evaluation .*\)", out)
    assert not list(Path(".").glob("ablate-timing-*"))  # the Runner worked in a temporary folder
