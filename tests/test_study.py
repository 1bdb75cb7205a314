"""Study files: loading table2, and one clear error for each kind of bad input."""
import textwrap
from pathlib import Path

import pytest

from ablate.errors import StudyError
from ablate.study import find_study, load_study

REPO = Path(__file__).resolve().parents[1]
TABLE2 = REPO / "experiments" / "table2.yaml"


def write_study(tmp_path, body: str, base: bool = True) -> Path:
    if base:
        (tmp_path / "base.py").write_text("model = dict(decode_head=dict(use_dwt=False))\n")
    path = tmp_path / "study.yaml"
    path.write_text(textwrap.dedent(body))
    return path


MINIMAL = """\
    base: base.py
    variants:
      baseline: {paper: {mIoU: 40.0, Params: 4.0}}
      dwt:
        overrides: {model.decode_head.use_dwt: true}
        paper: {mIoU: 41.0, Params: "+0.06"}
    profiles:
      smoke: {data: synthetic}
"""


def test_table2_has_the_papers_rows_and_numbers():
    study = load_study(str(TABLE2))
    assert list(study.variants) == ["baseline", "dwt", "attention", "dwt_attention"]
    assert study.baseline == "baseline"
    paper = {name: v.paper for name, v in study.variants.items()}
    assert paper["baseline"] == {"mIoU": 43.52, "Params": 4.44, "FLOPs": 7.03}
    # Params and FLOPs are printed as deltas in the paper; stored absolute.
    assert paper["dwt"] == pytest.approx({"mIoU": 44.03, "Params": 4.50, "FLOPs": 7.12})
    assert paper["attention"] == pytest.approx({"mIoU": 43.75, "Params": 4.44, "FLOPs": 7.04})
    assert paper["dwt_attention"] == pytest.approx({"mIoU": 44.12, "Params": 4.50, "FLOPs": 7.13})
    assert study.variants["dwt_attention"].overrides == {
        "model.decode_head.use_dwt": True, "model.decode_head.use_attention": True}
    assert set(study.profiles) == {"paper", "paper-bf16", "paper-fp16", "smoke", "smoke-seeds", "smoke-short"}
    assert study.profiles["smoke"].data == "synthetic"


def test_runs_cover_variants_times_seeds_under_work_dirs(tmp_path):
    study = load_study(str(write_study(tmp_path, MINIMAL)))
    runs = study.runs("smoke", seeds=[0, 1], work_root=tmp_path / "w")
    assert [r.key for r in runs] == ["baseline/seed0", "baseline/seed1", "dwt/seed0", "dwt/seed1"]
    assert runs[3].work_dir == tmp_path / "w" / "study" / "smoke" / "dwt" / "seed1"
    assert [r.key for r in study.runs("smoke", variants=["dwt"])] == ["dwt/seed0"]


def test_relative_paper_numbers_add_to_the_baseline(tmp_path):
    study = load_study(str(write_study(tmp_path, MINIMAL)))
    assert study.variants["dwt"].paper["Params"] == pytest.approx(4.06)


def test_unknown_study_lists_the_known_ones(monkeypatch):
    monkeypatch.setenv("ABLATE_STUDIES", str(REPO / "experiments"))
    with pytest.raises(StudyError, match=r"unknown study `tabel2`; did you mean `table2`\?"):
        find_study("tabel2")


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = write_study(tmp_path, MINIMAL.replace("profiles:", "profiles: [oops"))
    with pytest.raises(StudyError, match=r"study\.yaml:\d+: YAML syntax error"):
        load_study(str(path))


def test_duplicate_variant_names_are_refused_with_both_lines(tmp_path):
    body = MINIMAL.replace("    profiles:", "      dwt: {overrides: {}}\n    profiles:")
    with pytest.raises(StudyError) as info:
        load_study(str(write_study(tmp_path, body)))
    assert "study.yaml:7: duplicate key `variants.dwt` (first at line 4)" in str(info.value)


def test_missing_base_config_is_named(tmp_path):
    path = write_study(tmp_path, MINIMAL, base=False)
    with pytest.raises(StudyError, match=r"study\.yaml:1: base config `base\.py` not found"):
        load_study(str(path))


def test_every_problem_is_reported_at_once(tmp_path):
    body = MINIMAL.replace("baseline: {paper", "baseline: {labl: x, paper").replace(
        "smoke: {data: synthetic}", "smoke: {data: synthetic, seeds: [a]}")
    with pytest.raises(StudyError) as info:
        load_study(str(write_study(tmp_path, body)))
    lines = str(info.value).splitlines()
    assert len(lines) == 2
    assert "variant `baseline`: unknown key `labl`; did you mean `label`?" in lines[0]
    assert "profile `smoke`: `seeds` must be a list of integers" in lines[1]


def test_unknown_variant_and_profile_suggest_the_closest(tmp_path):
    study = load_study(str(write_study(tmp_path, MINIMAL)))
    with pytest.raises(StudyError, match=r"unknown variant `dtw`; did you mean `dwt`\?; choose from baseline, dwt"):
        study.runs("smoke", variants=["dtw"])
    with pytest.raises(StudyError, match=r"unknown profile `smok`; did you mean `smoke`\?"):
        study.runs("smok")


def test_profiles_can_come_from_another_study(tmp_path):
    other = write_study(tmp_path, MINIMAL)
    other.rename(tmp_path / "other.yaml")
    (tmp_path / "mine.yaml").write_text("base: base.py\nvariants:\n  baseline: {}\nprofiles: other.yaml\n")
    study = load_study(str(tmp_path / "mine.yaml"))
    assert list(study.profiles) == ["smoke"] and study.profiles["smoke"].data == "synthetic"
    assert study.locations["profiles.smoke"] == "other.yaml:8"
    assert "name" not in study.locations  # only the profiles' locations are taken over


def test_dsconv_study_shares_table2s_profiles():
    table2, dsconv = load_study(str(TABLE2)), load_study(str(REPO / "experiments" / "dsconv.yaml"))
    assert dsconv.profiles == table2.profiles
    assert list(dsconv.variants) == ["baseline", "dsconv", "dsconv_dwt"]
    assert dsconv.variants["dsconv_dwt"].overrides == {
        "model.decode_head.dsconv": True, "model.decode_head.use_dwt": True}
