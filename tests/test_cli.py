"""The CLI's study and config commands, through a real subprocess where start-up matters."""
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ablate.cli import app

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture(autouse=True)
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("ABLATE_STUDIES", raising=False)
    monkeypatch.delenv("ABLATE_FULL_ERROR", raising=False)


def invoke(*args):
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_help_imports_neither_torch_nor_mmseg():
    code = ("import sys, ablate.cli; heavy = [m for m in ('torch', 'mmseg', 'mmengine', 'mmcv', 'wandb', "
            "'submitit', 'pandas', 'matplotlib') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_studies_and_show(monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # the profiles table is wide: no cell cut short
    code, out = invoke("studies")
    assert code == 0 and "table2" in out
    code, out = invoke("show", "table2")
    assert code == 0
    for text in ("baseline", "dwt_attention", "43.52", "44.12", "smoke", "synthetic"):
        assert text in out


def test_configs_writes_one_loadable_config_per_run(tmp_path):
    from mmengine.config import Config

    code, out = invoke("configs", "table2", "--out", str(tmp_path))
    assert code == 0, out
    written = sorted(tmp_path.rglob("config.py"))
    assert [p.parent.parent.name for p in written] == ["attention", "baseline", "dwt", "dwt_attention"]
    for path in written:
        cfg = Config.fromfile(str(path))  # also imports `freqfusion` through custom_imports
        assert cfg.model.decode_head.type == "FreqFusionHamHead"
        assert cfg.ablate.variant == path.parent.parent.name
    assert Config.fromfile(str(tmp_path / "dwt" / "seed0" / "config.py")).model.decode_head.use_dwt is True


def test_configs_keeps_the_config_of_a_launched_run(tmp_path, monkeypatch):
    monkeypatch.setenv("ABLATE_WORK_DIR", str(tmp_path))
    launched = tmp_path / "table2" / "smoke" / "dwt" / "seed0"
    launched.mkdir(parents=True)
    (launched / "config.py").write_text("# what the run trains with\n")
    (launched / "run.json").write_text("{}")
    code, out = invoke("configs", "table2", "--profile", "smoke")
    assert code == 0, out
    assert (launched / "config.py").read_text() == "# what the run trains with\n"
    assert "kept: a launched run's config" in out
    assert "FreqFusionHamHead" in (tmp_path / "table2" / "smoke" / "baseline" / "seed0" / "config.py").read_text()


def test_diff_shows_exactly_the_two_switches():
    code, out = invoke("diff", "table2", "baseline", "dwt_attention")
    assert code == 0
    rows = [line.split() for line in out.strip().splitlines()[1:]]
    assert rows == [["model.decode_head.use_attention", "False", "True"],
                    ["model.decode_head.use_dwt", "False", "True"]]


def test_plan_counts_iterations():
    code, out = invoke("plan", "table2", "--profile", "smoke", "--sec-per-iter", "0.5")
    assert code == 0
    assert "4 runs, 160 iterations" in out and "0.5 s/iter (flag)" in out
    code, out = invoke("plan", "table2")
    assert "640,000 iterations" in out


@pytest.mark.parametrize("args, message", [
    (["show", "tabel2"], "error: unknown study `tabel2`; did you mean `table2`?"),
    (["diff", "table2", "baseline", "dwtt"], "unknown variant `dwtt`; did you mean `dwt`?"),
    (["configs", "table2", "--profile", "smoky"], "unknown profile `smoky`; did you mean `smoke`?"),
])
def test_bad_input_is_one_line_and_exit_2(args, message):
    result = subprocess.run([sys.executable, "-m", "ablate.cli", *args], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_override_key_in_a_study_file(tmp_path):
    study = (REPO / "experiments" / "table2.yaml").read_text().replace(
        "dwt: {off: {}, on: {model.decode_head.use_dwt: true}}", "dwt: {off: {}, on: {model.decode_head.use_dwtt: true}}")
    (tmp_path / "_base_").symlink_to(REPO / "experiments" / "_base_")
    (tmp_path / "broken.yaml").write_text(study)
    code, out = invoke("configs", str(tmp_path / "broken.yaml"), "--out", str(tmp_path / "out"))
    assert code == 2
    line = next(i for i, text in enumerate(study.splitlines(), 1) if "use_dwtt" in text)
    assert f"broken.yaml:{line}: variant `dwt`: `model.decode_head.use_dwtt` not in base config; " \
           "did you mean `use_dwt`?" in out
    assert not (tmp_path / "out").exists()


def test_full_error_env_reraises(monkeypatch):
    monkeypatch.setenv("ABLATE_FULL_ERROR", "1")
    result = runner.invoke(app, ["show", "nosuch"])
    assert result.exit_code != 0 and type(result.exception).__name__ == "StudyError"
