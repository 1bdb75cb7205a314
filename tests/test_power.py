"""Seeds needed (`ablate plan --power`): the power of an interval over seeds against a simulation, the
fewest seeds with enough of it, the seed std a plan uses and where it came from."""
import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
from hand_runs import KNOWN
from typer.testing import CliRunner

from ablate import effects
from ablate.cli import app
from ablate.study import load_study

REPO = Path(__file__).resolve().parents[1]


def simulated_power(seeds, difference, std, sum_squares, variants, draws=400_000, seed=0):
    """The chance the 95 % interval lies above 0, by simulating the estimate and the residual variance."""
    rng = np.random.default_rng(seed)
    df = (variants - 1) * (seeds - 1)
    se = std * math.sqrt(sum_squares / seeds)
    estimate = rng.normal(difference, se, draws)
    s = std * np.sqrt(rng.chisquare(df, draws) / df)
    t = {3: 3.182446, 6: 2.446912, 9: 2.262157, 15: 2.131450, 18: 2.100922, 21: 2.079614}[df]  # printed table
    return float(np.mean(estimate - t * s * math.sqrt(sum_squares / seeds) > 0))


@pytest.mark.parametrize("seeds", [2, 3, 4, 6, 7, 8])
def test_power_matches_a_simulation(seeds):
    ours = effects.power(seeds, 0.51, 0.3, 2.0, 4)
    assert ours == pytest.approx(simulated_power(seeds, 0.51, 0.3, 2.0, 4), abs=0.004)


def test_seeds_needed_is_the_first_count_with_enough_power():
    n = effects.seeds_needed(0.51, 0.3, 2.0, 4)
    assert effects.power(n, 0.51, 0.3, 2.0, 4) >= 0.8 > effects.power(n - 1, 0.51, 0.3, 2.0, 4)
    assert n == 7
    # an interaction (four means) of the same size needs about twice the seeds; -0.14 needs far more
    assert effects.seeds_needed(0.51, 0.3, 4.0, 4) in (12, 13, 14)
    assert effects.seeds_needed(-0.14, 0.3, 4.0, 4) == effects.seeds_needed(0.14, 0.3, 4.0, 4) > 100
    assert effects.seeds_needed(0.0, 0.3, 2.0, 4) is None
    assert effects.seeds_needed(0.01, 100.0, 4.0, 4) is None  # beyond MOST_SEEDS




def test_cli_plan_power_prints_seeds_per_paper_difference_and_the_seed_std(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("ABLATE_WORK_DIR", str(tmp_path / "work_dirs"))
    monkeypatch.setenv("COLUMNS", "200")
    result = CliRunner().invoke(app, ["plan", "table2", "--power"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "seed std 0.3 mIoU (study file: profiles.paper.seed_std)" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    assert rows["dwt"][-4:-2] == ["+0.51", "7"]  # 7 seeds of 4 variants at 160k iterations, 0.25 s each
    assert rows["dwt"][-2:] == ["311.1", "h"]
    assert rows["attention"][-4:-2] == ["+0.23", str(effects.seeds_needed(0.23, 0.3, 2.0, 4))]
    assert rows["dwt:attention"][-4:-2] == ["-0.14", str(effects.seeds_needed(0.14, 0.3, 4.0, 4))]
    result = CliRunner().invoke(app, ["plan", "table2", "--power", "--seed-std", "0.6", "--detect", "1.0"])
    assert "seed std 0.6 mIoU (--seed-std)" in result.output


def test_plan_power_measures_the_seed_std_from_runs_with_two_seeds(tmp_path, monkeypatch):
    from ablate.plan import plan_study, power_plan
    from ablate.runs import Result

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("ABLATE_WORK_DIR", str(tmp_path))
    study = load_study("table2")
    for run in study.runs("smoke-seeds"):
        Result(miou_best=KNOWN[run.variant][run.seed], miou_last=0.0).write(_made(run.work_dir))
    power = power_plan(plan_study(study, "smoke-seeds"))
    assert power.seed_std == pytest.approx(math.sqrt(2 / 3))
    assert power.seed_std_source == "measured: profile `smoke-seeds`, 12 finished runs, residual std over 6 df"
    # the paper profile has no runs: its own seed_std first, then (without one) the smoke runs, said so
    paper = dataclasses.replace(study, profiles={**study.profiles, "paper": dataclasses.replace(
        study.profiles["paper"], seed_std=None)})
    power = power_plan(plan_study(paper, "paper"))
    assert power.seed_std == pytest.approx(math.sqrt(2 / 3)) and "not `paper`" in power.seed_std_source


def _made(path):
    path.mkdir(parents=True, exist_ok=True)
    return path
