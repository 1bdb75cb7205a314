"""`--set KEY=VALUE` on `ablate run`/`configs`/`plan`: read as YAML, part of the config and its run key,
recorded in run.json so that status and report resolve the config a run trained with."""
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ablate import configs
from ablate.cli import app
from ablate.errors import ConfigError
from ablate.study import load_study

REPO = Path(__file__).resolve().parents[1]
TABLE2 = REPO / "experiments" / "table2.yaml"


def test_set_values_are_read_as_a_study_file_reads_them():
    assert configs.parse_sets(["train_cfg.max_iters=20", "a.b=[64, 64]", "c=on", "d=true", "e="]) == {
        "train_cfg.max_iters": 20, "a.b": [64, 64], "c": "on", "d": True, "e": None}
    with pytest.raises(ConfigError, match=r"^--set max_iters: expected KEY=VALUE, e.g. --set train_cfg.max_iters=20$"):
        configs.parse_sets(["max_iters"])
    with pytest.raises(ConfigError, match=r"^--set a=\[1: the value is not YAML"):
        configs.parse_sets(["a=[1"])


def test_set_changes_the_config_and_its_run_key_and_bad_keys_name_the_flag():
    study = load_study(str(TABLE2))
    (run,) = study.runs("smoke", variants=["dwt"])
    plain, short = configs.resolve(study, run), configs.resolve(study, run, sets={"train_cfg.max_iters": 20})
    assert (plain.train_cfg.max_iters, short.train_cfg.max_iters) == (40, 20)
    assert configs.run_key(plain) != configs.run_key(short)
    assert configs.run_key(short) == configs.run_key(configs.resolve(study, run, sets={"train_cfg.max_iters": 20}))
    assert [k for k, _, _ in configs.diff(plain, short, ignore=("ablate",))] == ["train_cfg.max_iters"]
    assert short.ablate["sets"] == {"train_cfg.max_iters": 20} and "sets" not in plain.ablate
    # the smoke-short profile and --set on smoke resolve to the same run
    (short_run,) = study.runs("smoke-short", variants=["dwt"])
    assert configs.run_key(configs.resolve(study, short_run)) == configs.run_key(short)
    with pytest.raises(ConfigError, match=r"^--set train_cfg.max_itres: `train_cfg.max_itres` not in base config; "
                                          r"did you mean `max_iters`\?$"):
        configs.resolve(study, run, sets={"train_cfg.max_itres": 20})


def test_set_trains_the_iterations_it_names_and_status_resolves_the_config_run_json_records(tiny_study, monkeypatch):
    from ablate.collect import states
    from ablate.runs import Result, RunInfo, RunStatus

    monkeypatch.delenv("ABLATE_FULL_ERROR", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    result = CliRunner().invoke(app, ["run", "tiny", "-p", "smoke", "--variants", "a", "--set", "train_cfg.max_iters=2"])
    assert result.exit_code == 0, result.output
    study = load_study("tiny")
    (run,) = study.runs("smoke", variants=["a"])
    info, done = RunInfo.read(run.work_dir), Result.read(run.work_dir)
    assert info.sets == {"train_cfg.max_iters": 2}
    assert (done.iterations, done.max_iters) == (2, 2)  # the study says 4
    plain = configs.resolve(study, run, data_root=info.data_root)
    assert plain.train_cfg.max_iters == 4
    assert info.run_key == done.run_key != configs.run_key(plain)
    assert states(study, "smoke")[0].status is RunStatus.DONE  # not stale: resolved with the recorded --set
    # without the --set, the run's config is another one: `ablate run` refuses to reuse it
    result = CliRunner().invoke(app, ["run", "tiny", "-p", "smoke", "--variants", "a", "--dry-run"])
    assert "conflict" in result.output and "train_cfg.max_iters" in result.output
