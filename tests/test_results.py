"""Results: seeds aggregated, deltas, paired test and verdicts, checked against hand-computed numbers."""
import dataclasses
import json
import math
import types
from pathlib import Path

import pandas as pd
import pytest
from hand_runs import empty_runs, runs_frame
from scipy import stats

from ablate.errors import StudyError
from ablate.results import MIOU, VARIANT_COLUMNS, frame, paired_p, summarize, verdict
from ablate.study import load_study

REPO = Path(__file__).resolve().parents[1]

# mIoU (best) per variant and seed; `last` is best - 1 except where a test says otherwise.
BEST = {
    "baseline": {0: 40.0, 1: 41.0, 2: 42.0},  # mean 41, std 1
    "dwt": {0: 41.0, 1: 42.5, 2: 43.0},       # mean 42.1667; paired diffs 1, 1.5, 1 -> t = 7 on 2 df
    "attention": {0: 40.5, 1: 41.0},          # seed 2 failed: pairs with the baseline over seeds 0 and 1
}                                             # dwt_attention: nothing finished, stays in the table
FAILED = {("attention", 2): "CUDA out of memory (attention/2)"}
MEASURED = {"baseline": {"params_m": 4.52, "gmacs": 7.10},
            "dwt": {"params_m": 4.574, "gmacs": 7.20},
            "attention": {"params_m": 4.52, "gmacs": 24.10, "uncounted": {"aten::topk": 2}},
            "dwt_attention": {"error": "No module named 'torch'"}}


def three_seeds(compare="best"):
    study = load_study(str(REPO / "experiments" / "table2.yaml"))
    return dataclasses.replace(study, seeds=(0, 1, 2), compare_miou=compare)


def results_for(study=None, best=BEST, measured=MEASURED, last_offset=1.0, **kwargs):
    study = study or three_seeds()
    runs = runs_frame(study, best, last_offset=last_offset, measured=measured, failed=FAILED)
    return summarize(study, "smoke", runs, measured, **kwargs)


def row(results, variant):
    return results.variants.loc[variant]


def test_means_std_n_and_deltas_to_the_baseline():
    res = results_for()
    base, dwt, att = (row(res, v) for v in ("baseline", "dwt", "attention"))
    assert (base["miou_best_mean"], base["miou_best_std"], base["miou_best_n"]) == (41.0, 1.0, 3)
    assert dwt["miou_best_mean"] == pytest.approx(126.5 / 3)
    assert dwt["miou_best_std"] == pytest.approx(math.sqrt((49 / 36 + 1 / 9 + 25 / 36) / 2))  # ddof=1
    assert dwt["miou_best_delta"] == pytest.approx(126.5 / 3 - 41.0)
    assert att["miou_best_n"] == 2 and att["seeds_done"] == [0, 1]
    assert att["miou_best_std"] == pytest.approx(math.sqrt(0.125))
    assert att["miou_best_delta"] == pytest.approx(40.75 - 41.0)  # difference of the means over done seeds
    assert math.isnan(base["miou_best_delta"]) and math.isnan(base["miou_best_p"])
    assert dwt["miou_last_mean"] == pytest.approx(126.5 / 3 - 1.0)


def test_variants_frame_is_indexed_by_variant_in_study_order_with_the_documented_columns():
    res = results_for()
    assert list(res.variants.index) == ["baseline", "dwt", "attention", "dwt_attention"]
    assert res.variants.index.name == "variant"
    assert tuple(res.variants.columns) == VARIANT_COLUMNS
    assert res.compared == MIOU["best"] and res.other == MIOU["last"]
    assert res.variants[res.compared.mean].tolist()[:3] == [41.0, 126.5 / 3, 40.75]


def test_paired_t_test_matches_a_hand_computation_and_scipy():
    res = results_for()
    dwt, att = row(res, "dwt"), row(res, "attention")
    # diffs 1, 1.5, 1: mean 7/6, sd 1/sqrt(12), t = 7 on 2 df; for 2 df, p = 1 - t / sqrt(t^2 + 2)
    assert dwt["miou_best_p"] == pytest.approx(1 - 7 / math.sqrt(51), rel=1e-9)
    assert dwt["miou_best_p"] == pytest.approx(stats.ttest_rel([41.0, 42.5, 43.0], [40.0, 41.0, 42.0]).pvalue)
    assert dwt["miou_best_paired_n"] == 3
    # attention: seed 2 failed, so the pairs are seeds 0 and 1 only: diffs 0.5, 0 -> t = 1 on 1 df, p = 0.5
    assert att["miou_best_paired_n"] == 2
    assert att["miou_best_p"] == pytest.approx(0.5)
    assert att["miou_best_p"] == pytest.approx(stats.ttest_rel([40.5, 41.0], [40.0, 41.0]).pvalue)


def test_paired_p_needs_two_pairs_and_varying_differences():
    assert paired_p([41.0], [40.0]) is None
    assert paired_p([41.0, 42.0], [40.0, 41.0]) is None  # every difference 1: t undefined, no test
    assert paired_p([41.0, 42.5], [40.0, 41.0]) == pytest.approx(stats.ttest_rel([41.0, 42.5], [40.0, 41.0]).pvalue)


def test_single_seed_has_no_std_and_no_test():
    study = dataclasses.replace(three_seeds(), seeds=(0,))
    res = results_for(study, best={"baseline": {0: 43.0}, "dwt": {0: 44.5}})
    dwt = row(res, "dwt")
    assert dwt["miou_best_n"] == 1 and math.isnan(dwt["miou_best_std"]) and math.isnan(dwt["miou_best_p"])
    assert dwt["miou_best_delta"] == pytest.approx(1.5)
    assert dwt["verdict"] == "+0.47 (n=1)"  # 44.5 - 44.03, no noise estimate from one seed


@pytest.mark.parametrize("diff, std, n, expected", [
    (-1.86, 1.04, 3, "within noise"),   # |diff| <= 2 std
    (2.08, 1.04, 3, "within noise"),    # the boundary counts as noise
    (-2.52, 1.0, 3, "-2.52"),
    (0.3, 0.0, 2, "+0.30"),
    (-0.001, 0.0, 2, "+0.00"),          # no "-0.00"
    (0.47, None, 1, "+0.47 (n=1)"),
    (0.47, math.nan, 1, "+0.47 (n=1)"),  # a frame's missing std
    (None, 1.0, 3, None),
    (math.nan, 1.0, 3, None),
])
def test_verdict(diff, std, n, expected):
    assert verdict(diff, std, n) == expected


def test_verdicts_against_the_paper():
    res = results_for()
    base, dwt = row(res, "baseline"), row(res, "dwt")
    assert base["paper_miou"] == 43.52
    assert base["miou_vs_paper"] == pytest.approx(41.0 - 43.52)
    assert base["verdict"] == "-2.52"                 # 2.52 > 2 x 1.0
    assert dwt["miou_vs_paper"] == pytest.approx(126.5 / 3 - 44.03)
    assert dwt["verdict"] == "within noise"           # 1.86 <= 2 x 1.04


def test_compare_last_uses_the_last_evaluation():
    res = results_for(three_seeds("last"), last_offset=0.5)
    base = row(res, "baseline")
    assert res.compare_miou == "last" and res.compared == MIOU["last"]
    assert base["miou_vs_paper"] == pytest.approx(40.5 - 43.52)
    assert base["miou_best_mean"] == 41.0 and base["miou_last_mean"] == 40.5  # both reported


def test_params_and_flops_deltas_ours_and_the_papers():
    res = results_for()
    dwt, att, both = row(res, "dwt"), row(res, "attention"), row(res, "dwt_attention")
    assert dwt["params_m"] == 4.574 and dwt["params_m_delta"] == pytest.approx(0.054)
    assert dwt["gmacs_delta"] == pytest.approx(0.10)
    assert dwt["paper_params_m"] == pytest.approx(4.50) and dwt["paper_params_m_delta"] == pytest.approx(0.06)
    assert dwt["paper_gmacs_delta"] == pytest.approx(0.09)
    assert dwt["params_m_vs_paper"] == pytest.approx(4.574 - 4.50)
    assert att["gmacs_delta"] == pytest.approx(17.0) and att["paper_gmacs_delta"] == pytest.approx(0.01)
    assert math.isnan(both["params_m"]) and math.isnan(both["params_m_delta"])  # not measured: missing
    assert both["paper_params_m_delta"] == pytest.approx(0.06)


def test_params_and_flops_come_from_the_measurements_when_the_runs_have_none():
    study = three_seeds()
    runs = runs_frame(study, BEST, failed=FAILED)  # collected without measuring: NaN everywhere
    assert runs["params_m"].isna().all()
    res = summarize(study, "smoke", runs, MEASURED)
    assert row(res, "dwt")["params_m"] == 4.574 and row(res, "attention")["gmacs"] == 24.10


def test_failed_and_unfinished_variants_stay_in_the_table():
    res = results_for()
    att, both = row(res, "attention"), row(res, "dwt_attention")
    assert (att["status"], att["n_done"], att["n_failed"]) == ("2 done, 1 failed", 2, 1)
    assert both["status"] == "pending" and math.isnan(both["miou_best_mean"]) and pd.isna(both["verdict"])
    assert both["seeds_done"] == [] and both["miou_best_n"] == 0
    notes = "\n".join(res.notes)
    assert "run `attention/seed2` failed: CUDA out of memory (attention/2)" in notes
    assert "run `dwt_attention/seed0` is pending" in notes
    assert "`dwt_attention` not measured: No module named 'torch'" in notes
    assert "aten::topk x2" in notes  # an uncounted operator is said, not hidden


def test_stale_runs_are_left_out_unless_asked_and_queued_ones_are_counted_as_such():
    study = three_seeds()
    best = {"baseline": {0: 40.0, 1: 41.0, 2: 42.0}, "dwt": {0: 41.0, 1: 42.5, 2: 50.0}}
    runs = runs_frame(study, best, status={("dwt", 2): "stale", ("attention", 0): "queued"})
    res = summarize(study, "smoke", runs)
    dwt = row(res, "dwt")
    assert (dwt["miou_best_n"], dwt["miou_best_mean"], dwt["seeds_done"]) == (2, 41.75, [0, 1])
    assert dwt["miou_best_paired_n"] == 2
    assert (dwt["status"], dwt["n_stale"]) == ("2 done, 1 stale", 1)
    assert (row(res, "attention")["status"], row(res, "attention")["n_queued"]) == ("1 queued, 2 pending", 1)
    assert "run `dwt/seed2` is stale: its config changed since it ran; left out of the statistics" in res.notes
    assert "run `attention/seed0` is queued" in res.notes

    res = summarize(study, "smoke", runs, include_stale=True)
    dwt = row(res, "dwt")
    assert (dwt["miou_best_n"], dwt["miou_best_mean"], dwt["seeds_done"]) == (3, 44.5, [0, 1, 2])
    assert res.include_stale and res.to_dict()["include_stale"] is True
    assert any("`dwt/seed2` is stale" in note and "counted" in note for note in res.notes)


def test_a_study_without_paper_numbers_keeps_them_missing():
    study = load_study(str(REPO / "experiments" / "dsconv.yaml"))
    measured = {"baseline": {"params_m": 4.52, "gmacs": 7.1}, "dsconv": {"params_m": 4.4, "gmacs": 6.9}}
    runs = runs_frame(study, {"baseline": {0: 40.0}, "dsconv": {0: 40.4}}, measured=measured)
    res = summarize(study, "smoke", runs)
    dsconv = row(res, "dsconv")
    assert row(res, "baseline")["paper_miou"] == 43.52
    for column in ("paper_miou", "miou_vs_paper", "paper_params_m", "paper_params_m_delta", "params_m_vs_paper",
                   "paper_gmacs", "paper_gmacs_delta", "gmacs_vs_paper"):
        assert math.isnan(dsconv[column]), column
    assert pd.isna(dsconv["verdict"])
    assert dsconv["miou_best_delta"] == pytest.approx(0.4) and dsconv["params_m_delta"] == pytest.approx(-0.12)
    record = {r["variant"]: r for r in res.records()}["dsconv"]
    assert record["paper_miou"] is None and record["verdict"] is None  # JSON: null, not NaN


def test_profile_label_and_conventions():
    res = results_for()
    assert res.profile_label == ("smoke profile: synthetic data, 40 iterations \u2014 "
                                 "not comparable to the paper's numbers")
    assert res.comparable is False
    assert "G multiply-accumulates (MACs) for one 3x512x512 image in inference mode" in res.conventions["FLOPs"]
    assert "does not see matrix products" in res.conventions["paper FLOPs"]

    study = three_seeds()
    paper = summarize(study, "paper", empty_runs(), {})
    assert paper.comparable is True
    assert paper.profile_label == "paper profile: real data \u2014 the paper's schedule"
    assert (paper.variants["status"] == "no runs").all() and (paper.variants["runs"] == 0).all()


def test_json_and_wandb_table_carry_the_same_unrounded_numbers():
    res = results_for()
    data = json.loads(json.dumps(res.to_dict(), allow_nan=False))  # no NaN anywhere
    columns, rows = res.table()
    assert columns == ["variant", *VARIANT_COLUMNS] == list(data["variants"][0])
    for values, record in zip(rows, data["variants"]):
        assert dict(zip(columns, values)) == record
    assert all(type(v) in (str, int, float, bool, list, type(None)) for values in rows for v in values)  # plain
    assert data["variants"][1]["miou_best_mean"] == 126.5 / 3  # unrounded
    assert data["variants"][0]["miou_best_delta"] is None
    assert data["compare_miou"] == "best" and data["profile"] == "smoke" and data["study"] == "table2"
    assert len(data["runs"]) == 12 and {r["status"] for r in data["runs"]} == {"done", "failed", "pending"}
    assert data["runs"][0]["seed"] == 0 and data["runs"][-1]["miou_best"] is None
    assert data["measurements"]["attention"]["uncounted"] == {"aten::topk": 2}


def test_runs_of_another_profile_or_twice_listed_or_without_a_column_are_refused():
    study = three_seeds()
    runs = runs_frame(study, BEST)
    with pytest.raises(ValueError, match="profile"):
        summarize(study, "paper", runs)
    with pytest.raises(ValueError, match="listed twice: dwt/seed1"):
        summarize(study, "smoke", pd.concat([runs, runs[runs["variant"] == "dwt"].iloc[1:2]]))
    with pytest.raises(ValueError, match="no column gmacs"):
        summarize(study, "smoke", runs.drop(columns="gmacs"))
    with pytest.raises(ValueError, match="unknown run status skipped"):
        summarize(study, "smoke", runs.assign(status="skipped"))


def test_summarize_and_frame_take_a_study_name(monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("ABLATE_STUDIES", raising=False)
    study = load_study("table2")
    runs = runs_frame(study, {"baseline": {0: 40.0}})
    assert summarize("table2", "smoke", runs).variants["miou_best_mean"].iloc[0] == 40.0

    calls = []

    def fake_collect(study, profile, work_root=None, measure=True):
        calls.append((study.name, profile, work_root, measure))
        return types.SimpleNamespace(runs=runs, measurements={}, problems=[])

    monkeypatch.setattr("ablate.collect.collect", fake_collect)
    assert frame("table2", "smoke", work_root="elsewhere", measure=False) is runs
    assert calls == [("table2", "smoke", "elsewhere", False)]
    with pytest.raises(StudyError, match="did you mean `smoke`"):
        frame(study, "smok")
    assert len(calls) == 1  # refused before collecting
