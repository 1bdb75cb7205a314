"""Results: seeds aggregated, deltas, paired test and verdicts, checked against hand-computed numbers."""
import dataclasses
import json
import math
from pathlib import Path

import pytest
from scipy import stats

from ablate.collect import collect
from ablate.results import aggregate, paired_p, verdict
from ablate.study import load_study

REPO = Path(__file__).resolve().parents[1]

# mIoU (best) per variant and seed; `last` is best - 1 except where a test says otherwise.
BEST = {
    "baseline": [40.0, 41.0, 42.0],       # mean 41, std 1
    "dwt": [41.0, 42.5, 43.0],            # mean 42.1667; paired diffs 1, 1.5, 1 -> t = 7 on 2 df
    "attention": [40.5, 41.0, None],      # seed 2 failed: pairs with the baseline over seeds 0 and 1
    "dwt_attention": [None, None, None],  # nothing finished: stays in the table
}
MEASURED = {"baseline": {"params_m": 4.52, "gmacs": 7.10},
            "dwt": {"params_m": 4.574, "gmacs": 7.20},
            "attention": {"params_m": 4.52, "gmacs": 24.10, "uncounted": {"aten::topk": 2}},
            "dwt_attention": {"error": "No module named 'torch'"}}


def three_seeds(compare="best"):
    study = load_study(str(REPO / "experiments" / "table2.yaml"))
    return dataclasses.replace(study, seeds=(0, 1, 2), compare_miou=compare)


def build_runs(root, best=BEST, last_offset=1.0):
    for variant, values in best.items():
        for seed, value in enumerate(values):
            work_dir = Path(root) / "table2" / "smoke" / variant / f"seed{seed}"
            work_dir.mkdir(parents=True)
            if value is None:
                error = {"error": f"CUDA out of memory ({variant}/{seed})"}
                (work_dir / ("failed.json" if variant == "attention" else "progress.json")).write_text(
                    json.dumps(error if variant == "attention" else {"iteration": 5, "max_iters": 40}))
                continue
            (work_dir / "result.json").write_text(json.dumps({
                "miou_best": value, "miou_last": value - last_offset, "aacc_last": 70.0,
                "iterations": 40, "max_iters": 40, "wall_time_s": 10.0}))


def results_for(tmp_path, study=None, best=BEST, measured=MEASURED, last_offset=1.0):
    study = study or three_seeds()
    build_runs(tmp_path, best, last_offset)
    rows = collect(study, "smoke", work_root=tmp_path, measure=measured).runs.to_dict("records")
    return aggregate(study, "smoke", rows, measured)


def rec(results, variant):
    return {r["variant"]: r for r in results.records()}[variant]


def test_means_std_n_and_deltas_to_the_baseline(tmp_path):
    res = results_for(tmp_path)
    base, dwt, att = (rec(res, v) for v in ("baseline", "dwt", "attention"))
    assert (base["miou_best_mean"], base["miou_best_std"], base["miou_best_n"]) == (41.0, 1.0, 3)
    assert dwt["miou_best_mean"] == pytest.approx(126.5 / 3)
    assert dwt["miou_best_std"] == pytest.approx(math.sqrt((49 / 36 + 1 / 9 + 25 / 36) / 2))  # ddof=1
    assert dwt["miou_best_delta"] == pytest.approx(126.5 / 3 - 41.0)
    assert att["miou_best_n"] == 2 and att["seeds_done"] == [0, 1]
    assert att["miou_best_std"] == pytest.approx(math.sqrt(0.125))
    assert att["miou_best_delta"] == pytest.approx(40.75 - 41.0)  # difference of the means over done seeds
    assert base["miou_best_delta"] is None and base["miou_best_p"] is None
    assert dwt["miou_last_mean"] == pytest.approx(126.5 / 3 - 1.0)


def test_paired_t_test_matches_a_hand_computation_and_scipy(tmp_path):
    res = results_for(tmp_path)
    dwt, att = rec(res, "dwt"), rec(res, "attention")
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


def test_single_seed_has_no_std_and_no_test(tmp_path):
    study = dataclasses.replace(three_seeds(), seeds=(0,))
    res = results_for(tmp_path, study, best={"baseline": [43.0], "dwt": [44.5]})
    dwt = rec(res, "dwt")
    assert (dwt["miou_best_n"], dwt["miou_best_std"], dwt["miou_best_p"]) == (1, None, None)
    assert dwt["miou_best_delta"] == pytest.approx(1.5)
    assert dwt["verdict"] == "+0.47 (n=1)"  # 44.5 - 44.03, no noise estimate from one seed


@pytest.mark.parametrize("diff, std, n, expected", [
    (-1.86, 1.04, 3, "within noise"),   # |diff| <= 2 std
    (2.08, 1.04, 3, "within noise"),    # the boundary counts as noise
    (-2.52, 1.0, 3, "-2.52"),
    (0.3, 0.0, 2, "+0.30"),
    (-0.001, 0.0, 2, "+0.00"),          # no "-0.00"
    (0.47, None, 1, "+0.47 (n=1)"),
    (None, 1.0, 3, None),
])
def test_verdict(diff, std, n, expected):
    assert verdict(diff, std, n) == expected


def test_verdicts_against_the_paper(tmp_path):
    res = results_for(tmp_path)
    base, dwt = rec(res, "baseline"), rec(res, "dwt")
    assert base["paper_miou"] == 43.52
    assert base["miou_vs_paper"] == pytest.approx(41.0 - 43.52)
    assert base["verdict"] == "-2.52"                 # 2.52 > 2 x 1.0
    assert dwt["miou_vs_paper"] == pytest.approx(126.5 / 3 - 44.03)
    assert dwt["verdict"] == "within noise"           # 1.86 <= 2 x 1.04


def test_compare_last_uses_the_last_evaluation(tmp_path):
    res = results_for(tmp_path, three_seeds("last"), last_offset=0.5)
    base = rec(res, "baseline")
    assert res.compare_miou == "last"
    assert base["miou_vs_paper"] == pytest.approx(40.5 - 43.52)
    assert base["miou_best_mean"] == 41.0 and base["miou_last_mean"] == 40.5  # both reported


def test_params_and_flops_deltas_ours_and_the_papers(tmp_path):
    res = results_for(tmp_path)
    dwt, att, both = rec(res, "dwt"), rec(res, "attention"), rec(res, "dwt_attention")
    assert dwt["params_m"] == 4.574 and dwt["params_m_delta"] == pytest.approx(0.054)
    assert dwt["gmacs_delta"] == pytest.approx(0.10)
    assert dwt["paper_params_m"] == pytest.approx(4.50) and dwt["paper_params_m_delta"] == pytest.approx(0.06)
    assert dwt["paper_gmacs_delta"] == pytest.approx(0.09)
    assert dwt["params_m_vs_paper"] == pytest.approx(4.574 - 4.50)
    assert att["gmacs_delta"] == pytest.approx(17.0) and att["paper_gmacs_delta"] == pytest.approx(0.01)
    assert both["params_m"] is None and both["params_m_delta"] is None  # not measured: shown as missing
    assert both["paper_params_m_delta"] == pytest.approx(0.06)


def test_failed_and_unfinished_variants_stay_in_the_table(tmp_path):
    res = results_for(tmp_path)
    assert [r["variant"] for r in res.variants] == ["baseline", "dwt", "attention", "dwt_attention"]
    att, both = rec(res, "attention"), rec(res, "dwt_attention")
    assert (att["status"], att["n_done"], att["n_failed"]) == ("2 done, 1 failed", 2, 1)
    assert both["status"] == "pending" and both["miou_best_mean"] is None and both["verdict"] is None
    notes = "\n".join(res.notes)
    assert "run `attention/seed2` failed: CUDA out of memory (attention/2)" in notes
    assert "run `dwt_attention/seed0` is pending" in notes
    assert "`dwt_attention` not measured: No module named 'torch'" in notes
    assert "aten::topk x2" in notes  # an uncounted operator is said, not hidden


def test_profile_label_and_conventions(tmp_path):
    res = results_for(tmp_path)
    assert res.profile_label == ("smoke profile: synthetic data, 40 iterations \u2014 "
                                 "not comparable to the paper's numbers")
    assert res.comparable is False
    assert "G multiply-accumulates (MACs) for one 3x512x512 image in inference mode" in res.conventions["FLOPs"]
    assert "does not see matrix products" in res.conventions["paper FLOPs"]

    study = three_seeds()
    paper = aggregate(study, "paper", [], {})
    assert paper.comparable is True
    assert paper.profile_label == "paper profile: real data \u2014 the paper's schedule"


def test_json_and_wandb_table_carry_the_same_unrounded_numbers(tmp_path):
    res = results_for(tmp_path)
    data = json.loads(json.dumps(res.to_dict(), allow_nan=False))  # no NaN anywhere
    columns, rows = res.table()
    assert columns == list(data["variants"][0])
    for row, record in zip(rows, data["variants"]):
        assert dict(zip(columns, row)) == record
    assert data["variants"][1]["miou_best_mean"] == 126.5 / 3  # unrounded
    assert data["compare_miou"] == "best" and data["profile"] == "smoke" and data["study"] == "table2"
    assert len(data["runs"]) == 12 and {r["status"] for r in data["runs"]} == {"done", "failed", "pending"}
    assert data["measurements"]["attention"]["uncounted"] == {"aten::topk": 2}


def test_rows_of_another_profile_are_refused(tmp_path):
    study = three_seeds()
    build_runs(tmp_path)
    rows = collect(study, "smoke", work_root=tmp_path, measure=False).runs.to_dict("records")
    with pytest.raises(ValueError, match="profile"):
        aggregate(study, "paper", rows)
