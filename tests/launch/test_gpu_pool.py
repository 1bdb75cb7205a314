"""`ablate run STUDY --gpus 2` on a CPU machine that pretends to have two GPUs (ids 3 and 5): the
CLI path from the flag to the workers' CUDA_VISIBLE_DEVICES, with the fake worker."""
import itertools

import torch
from typer.testing import CliRunner

from ablate.cli import app
from ablate.study import load_study


def test_gpus_2_runs_one_run_per_device_and_the_next_when_one_frees(tiny_study, fake_worker, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")  # what torch counts; the pool hands out these names
    runs = {r.variant: r for r in load_study("tiny").runs("smoke")}
    for variant, sleep in (("a", 0.5), ("b", 5.0), ("c", 0.5)):
        fake_worker.set(runs[variant].work_dir, sleep=sleep)

    result = CliRunner().invoke(app, ["run", "tiny", "-p", "smoke", "--gpus", "2"])

    assert result.exit_code == 0 and "3 done" in result.output, result.output
    # One record per run: [start, end] and the devices it saw.
    spans = []
    for run in runs.values():
        start, end = fake_worker.calls(run.work_dir)
        spans.append((start["start"], end["end"], start["cuda"], run.variant))
        assert f"(GPUs {start['cuda']})" in (run.work_dir / "worker.log").read_text()
    assert all(cuda in ("3", "5") for _, _, cuda, _ in spans), spans  # exactly one device each
    for (s1, e1, cuda1, _), (s2, e2, cuda2, _) in itertools.combinations(spans, 2):
        if s1 < e2 and s2 < e1:
            assert cuda1 != cuda2, spans  # runs at the same time never share a device
    first, second, third = sorted(spans)
    assert second[0] < first[1], spans  # the first two ran at once, one per device
    freed = min(first, second, key=lambda span: span[1])
    busy = max(first, second, key=lambda span: span[1])
    assert freed[3] == "a" and busy[3] == "b", spans
    assert freed[1] <= third[0] < busy[1], spans  # started when a device freed, not when both had
    assert third[2] == freed[2], spans  # on the freed device
