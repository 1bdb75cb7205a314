"""Effects, intervals, claim verdicts and seeds needed: checked against numbers worked out by hand,
against statsmodels' OLS (tests/test_power.py: the seeds needed)."""
import dataclasses
import json
import math
from pathlib import Path

import pandas as pd
import pytest
from hand_runs import KNOWN, runs_frame

from ablate import effects
from ablate.contrasts import Contrast
from ablate.results import summarize
from ablate.study import load_study

REPO = Path(__file__).resolve().parents[1]
T_975_6DF = 2.446912  # Student's t, 0.975 quantile, 6 degrees of freedom (from a printed table)

# By hand: residual sum of squares 4 over (4 - 1)(3 - 1) = 6 df, so s^2 = 2/3. A difference of two
# means has se = sqrt(s^2 (1/3 + 1/3)) = 2/3; the interaction (weights +-1 on four means) sqrt(s^2 4/3).
SE_DIFF, SE_INTERACTION = 2 / 3, math.sqrt(8 / 9)
HAND = {  # term: (estimate, se)
    "dwt": (45.0 - 41.0, SE_DIFF),
    "attention": (41.5 - 41.0, SE_DIFF),
    "dwt:attention": (42.2 - 45.0 - 41.5 + 41.0, SE_INTERACTION),  # -3.3
}


def table2(seeds=(0, 1, 2)):
    return dataclasses.replace(load_study(str(REPO / "experiments" / "table2.yaml")), seeds=tuple(seeds))


def known_results(best=KNOWN, seeds=(0, 1, 2)):
    study = table2(seeds)
    return summarize(study, "smoke", runs_frame(study, best))


def long_frame(best, study):
    rows = [{"variant": v, "seed": s, "miou": y, **study.variants[v].levels} for v, by in best.items()
            for s, y in by.items()]
    return pd.DataFrame(rows)


def test_effects_and_intervals_equal_the_hand_computation():
    res = known_results()
    assert list(res.effects.index) == ["dwt", "attention", "dwt:attention"]
    for term, (estimate, se) in HAND.items():
        row = res.effects.loc[term]
        assert row["estimate"] == pytest.approx(estimate, abs=1e-9), term
        assert row["se"] == pytest.approx(se, rel=1e-9), term
        assert (row["df"], row["n"]) == (6, 3)
        assert row["ci_low"] == pytest.approx(estimate - T_975_6DF * se, abs=1e-5), term
        assert row["ci_high"] == pytest.approx(estimate + T_975_6DF * se, abs=1e-5), term
    # the interaction's interval, by hand: -3.3 -+ 2.446912 * 0.942809
    assert (res.effects.at["dwt:attention", "ci_low"], res.effects.at["dwt:attention", "ci_high"]) == \
        pytest.approx((-5.606970, -0.993030), abs=1e-5)
    assert res.seed_noise["std"] == pytest.approx(math.sqrt(2 / 3)) and res.seed_noise["df"] == 6
    # the paper's implied values, with the same contrasts: 44.03 - 43.52, 43.75 - 43.52, 44.12 - 44.03 - 43.75 + 43.52
    assert res.effects["paper"].tolist() == pytest.approx([0.51, 0.23, -0.14], abs=1e-9)


def test_effects_equal_statsmodels_ols_with_seed_as_a_block():
    import statsmodels.formula.api as smf  # the test extra's reference OLS
    study = table2()
    fit = smf.ols("miou ~ C(dwt, Treatment('off')) * C(attention, Treatment('off')) + C(seed)",
                  long_frame(KNOWN, study)).fit()
    names = {"dwt": "C(dwt, Treatment('off'))[T.on]", "attention": "C(attention, Treatment('off'))[T.on]",
             "dwt:attention": "C(dwt, Treatment('off'))[T.on]:C(attention, Treatment('off'))[T.on]"}
    ours, ci = known_results().effects, fit.conf_int(alpha=0.05)
    for term, name in names.items():
        assert ours.at[term, "estimate"] == pytest.approx(fit.params[name], abs=1e-9)
        assert ours.at[term, "se"] == pytest.approx(fit.bse[name], rel=1e-9)
        assert (ours.at[term, "ci_low"], ours.at[term, "ci_high"]) == pytest.approx(tuple(ci.loc[name]), abs=1e-9)
    assert ours.at["dwt", "df"] == fit.df_resid


def test_an_unbalanced_study_still_matches_statsmodels_and_a_lone_run_has_no_interval():
    import statsmodels.formula.api as smf  # the test extra's reference OLS
    best = {v: dict(by) for v, by in KNOWN.items()}
    del best["dwt"][2], best["attention"][1]  # two runs failed
    study = table2()
    fit = smf.ols("miou ~ C(variant, Treatment('baseline')) + C(seed)", long_frame(best, study)).fit()
    res = known_results(best)
    for _, row in res.claims.iterrows():  # simple differences of two variants
        hi, lo = row["contrast"].split(" \u2212 ")
        value = fit.params.get(f"C(variant, Treatment('baseline'))[T.{hi}]", 0.0) - \
            fit.params.get(f"C(variant, Treatment('baseline'))[T.{lo}]", 0.0)
        assert row["estimate"] == pytest.approx(value, abs=1e-9), row["comparison"]
    dwt = fit.conf_int().loc["C(variant, Treatment('baseline'))[T.dwt]"]
    assert (res.effects.at["dwt", "ci_low"], res.effects.at["dwt", "ci_high"]) == pytest.approx(tuple(dwt), abs=1e-9)
    assert res.effects.at["dwt", "df"] == fit.df_resid == 4  # 10 runs - 4 variants - 2 seed shifts
    # a variant with one run: an estimate, but no interval and no verdict
    one = dict(best, attention={0: 40.5})
    res = known_results(one)
    assert not math.isnan(res.effects.at["attention", "estimate"]) and res.effects.at["attention", "n"] == 1
    assert math.isnan(res.effects.at["attention", "ci_low"]) and math.isnan(res.effects.at["attention", "ci_high"])
    assert res.claims.set_index("comparison").at["attention > baseline", "verdict"] == "inconclusive"


def test_claims_get_verdicts_from_their_intervals():
    claims = known_results().claims.set_index("comparison")
    # dwt - baseline = 4 -+ 1.63: above 0; attention - baseline = 0.5 -+ 1.63: contains 0;
    # dwt_attention - dwt = -2.8 -+ 1.63: below 0, so the complementarity claim is contradicted
    assert claims["verdict"].to_dict() == {"dwt > baseline": "supported", "attention > baseline": "inconclusive",
                                           "dwt_attention > dwt": "contradicted",
                                           "dwt_attention > attention": "inconclusive"}
    assert claims["claim_verdict"].to_dict() == {"dwt > baseline": "supported", "attention > baseline": "inconclusive",
                                                 "dwt_attention > dwt": "contradicted",
                                                 "dwt_attention > attention": "contradicted"}
    assert claims.at["dwt_attention > dwt", "estimate"] == pytest.approx(42.2 - 45.0)
    assert claims.at["dwt_attention > dwt", "paper"] == pytest.approx(0.09)
    assert claims.at["dwt_attention > dwt", "ci_high"] == pytest.approx(-2.8 + T_975_6DF * SE_DIFF, abs=1e-5)


@pytest.mark.parametrize("op, low, high, expected", [
    (">", 0.1, 2.0, "supported"), (">", -2.0, -0.1, "contradicted"), (">", -1.0, 1.0, "inconclusive"),
    ("<", -2.0, -0.1, "supported"), ("<", 0.1, 2.0, "contradicted"), (">", math.nan, math.nan, "inconclusive"),
])
def test_verdict(op, low, high, expected):
    found = effects.Estimate((low + high) / 2, 0.5, 6, low, high, 3)
    assert effects.verdict(op, found) == expected


def test_claim_verdict_needs_every_part_and_one_contradiction_decides():
    assert effects.claim_verdict(["supported", "supported"]) == "supported"
    assert effects.claim_verdict(["supported", "inconclusive"]) == "inconclusive"
    assert effects.claim_verdict(["inconclusive", "contradicted"]) == "contradicted"


def test_one_seed_gives_estimates_but_says_the_interval_is_unknown():
    res = known_results({v: {0: by[0]} for v, by in KNOWN.items()}, seeds=(0,))
    effects_ = res.effects
    assert effects_.at["dwt:attention", "estimate"] == pytest.approx(41.2 - 43.0 - 40.5 + 41.0)
    assert effects_[["se", "ci_low", "ci_high"]].isna().all().all() and (effects_["n"] == 1).all()
    assert (res.claims["verdict"] == "inconclusive").all()
    data = json.loads(json.dumps(res.to_dict(), allow_nan=False))
    assert data["effects"][2]["ci_low"] is None and data["claims"][0]["verdict"] == "inconclusive"
    from ablate import report

    markdown = report.render_markdown(res)
    assert "| dwt:attention | dwt_attention \u2212 dwt \u2212 attention + baseline | -1.30 | unknown (n=1) | 1 " \
           "| -0.14 |" in markdown
    assert "inconclusive (n=1: no interval)" in markdown and "one seed per variant" in markdown


def test_json_holds_effects_and_claims_as_the_reports_promise():
    data = json.loads(json.dumps(known_results().to_dict(), allow_nan=False))
    assert [e["term"] for e in data["effects"]] == ["dwt", "attention", "dwt:attention"]
    assert {"term", "estimate", "ci_low", "ci_high", "n", "paper"} <= set(data["effects"][0])
    assert [(c["claim"], c["verdict"]) for c in data["claims"]] == [
        ("DWT improves mIoU", "supported"), ("Attention improves mIoU", "inconclusive"),
        ("DWT and attention are complementary (together they beat either alone)", "contradicted")]
    assert [p["comparison"] for p in data["claims"][2]["parts"]] == ["dwt_attention > dwt",
                                                                     "dwt_attention > attention"]


def test_a_study_without_factors_claims_or_paper_numbers_gets_none_of_them(tmp_path):
    from ablate import report

    (tmp_path / "base.py").write_text("model = dict(decode_head=dict(dropout_ratio=0.1))\n")
    (tmp_path / "plain.yaml").write_text("base: base.py\nseeds: [0, 1]\nvariants:\n  a: {}\n  b: {overrides: "
                                         "{model.decode_head.dropout_ratio: 0.0}}\nprofiles: {smoke: {data: synthetic}}\n")
    study = load_study(str(tmp_path / "plain.yaml"))
    res = summarize(study, "smoke", runs_frame(study, {"a": {0: 40.0, 1: 41.0}, "b": {0: 40.5, 1: 41.7}}))
    assert res.effects.empty and res.claims.empty
    assert not {"effects", "intervals", "claims", "paper", "paper FLOPs"} & set(res.conventions)
    markdown = report.render_markdown(res)
    assert "Effects" not in markdown and "Claims" not in markdown
    header = next(line for line in markdown.splitlines() if line.startswith("| variant"))
    assert "paper" not in header and "paper" not in markdown.split("**Conventions**")[1]
    latex = report.render_latex(res)
    assert "paper" not in latex[latex.index("\\begin{tabular}"):]


def test_the_plot_shows_effects_with_intervals_and_the_papers_values(tmp_path, monkeypatch):
    from matplotlib.collections import LineCollection, PathCollection
    from matplotlib.figure import Figure

    from ablate import report

    saved = []
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: saved.append(self))
    report.plot(known_results(), tmp_path / "x.png")
    ax = saved[0].axes[1]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    # effects first; a claim's difference that is an effect (dwt > baseline) is shown once
    assert labels == ["dwt", "attention", "dwt:attention", "dwt_attention > dwt", "dwt_attention > attention"]
    (bars,) = (c for c in ax.collections if isinstance(c, LineCollection))
    ends = [sorted(x for x, _ in segment) for segment in bars.get_segments()]
    assert ends[2] == pytest.approx([-5.606970, -0.993030], abs=1e-5)  # the interaction, top to bottom
    estimates, paper = (c for c in ax.collections if isinstance(c, PathCollection))
    assert estimates.get_offsets()[:, 0].tolist() == pytest.approx([4.0, 0.5, -3.3, -2.8, 0.7])
    assert paper.get_offsets()[:, 0].tolist() == pytest.approx([0.51, 0.23, -0.14, 0.09, 0.37])
    assert paper.get_facecolors().size == 0  # hollow


def test_contrast_text_and_paper_values():
    c = Contrast((("dwt_attention", 1.0), ("dwt", -1.0), ("attention", -1.0), ("baseline", 1.0)))
    assert c.text() == "dwt_attention \u2212 dwt \u2212 attention + baseline"
    assert c.of({"dwt_attention": 44.12, "dwt": 44.03, "attention": 43.75, "baseline": 43.52}) == pytest.approx(-0.14)
    assert c.of({"dwt_attention": 44.12}) is None
    assert Contrast((("a", 2.0), ("b", -2.0)), -0.5).text() == "2\u00b7a \u2212 2\u00b7b \u2212 0.5"


def test_a_note_says_when_seed_noise_hides_the_papers_differences():
    (note,) = [n for n in known_results().notes if n.startswith("seed noise")]
    # s = sqrt(2/3); the narrowest interval is a difference of two means: 2.446912 * 2/3 = 1.63 > 0.51
    assert note.startswith("seed noise: residual std 0.82 mIoU over seeds (6 df;")
    assert "the narrowest 95 % interval is \u00b11.63, wider than every difference the paper reports (at most " \
           "0.51): at these seeds, noise hides them" in note
    quiet = {}  # every run ten times closer to its variant's mean: intervals of +-0.16 no longer hide 0.51
    for variant, by in KNOWN.items():
        mean = sum(by.values()) / 3
        quiet[variant] = {s: mean + (y - mean) / 10 for s, y in by.items()}
    (note,) = [n for n in known_results(quiet).notes if n.startswith("seed noise")]
    assert "hides" not in note


def test_latex_gets_an_effects_and_a_claims_table():
    from ablate import report

    latex = report.render_latex(known_results())
    assert latex.count("\\begin{table}[t]") == 3 and latex.count("\\end{table}") == 3
    assert "\\begin{tabular}{llrrrr}" in latex  # term, contrast; estimate, CI, n, paper
    assert ("dwt:attention & dwt\\_attention $-$ dwt $-$ attention + baseline & -3.30 & [-5.61, -0.99] & 3 & "
            "-0.14 \\\\") in latex
    assert "DWT improves mIoU & dwt \\textgreater{} baseline & dwt $-$ baseline: +4.00 [+2.37, +5.63] & +0.51 & " \
           "supported at n=3 \\\\" in latex


def test_cli_report_json_of_the_seeded_smoke_profile_holds_effects_and_claims(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from ablate.cli import app
    from ablate.runs import Result

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("ABLATE_WORK_DIR", str(tmp_path / "work_dirs"))
    for run in load_study("table2").runs("smoke-seeds"):
        run.work_dir.mkdir(parents=True)
        Result(miou_best=KNOWN[run.variant][run.seed], miou_last=0.0, iterations=40, max_iters=40).write(run.work_dir)
    result = CliRunner().invoke(app, ["report", "table2", "-p", "smoke-seeds", "--format", "json", "--no-measure",
                                      "--out", str(tmp_path / "reports")])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "reports" / "table2" / "smoke-seeds.json").read_text())
    effects_ = {e["term"]: e for e in data["effects"]}
    assert set(effects_) == {"dwt", "attention", "dwt:attention"}
    interaction = effects_["dwt:attention"]
    assert (interaction["estimate"], interaction["ci_low"], interaction["ci_high"], interaction["n"]) == \
        pytest.approx((-3.3, -5.606970, -0.993030, 3), abs=1e-5)
    assert [(c["claim"], c["verdict"]) for c in data["claims"]] == [
        ("DWT improves mIoU", "supported"), ("Attention improves mIoU", "inconclusive"),
        ("DWT and attention are complementary (together they beat either alone)", "contradicted")]
