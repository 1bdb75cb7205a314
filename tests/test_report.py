"""Report formats (markdown, CSV, LaTeX, JSON, PNG) and the `ablate report` command, from hand-built runs."""
import dataclasses
import difflib
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hand_runs import runs_frame
from typer.testing import CliRunner

from ablate import report
from ablate.cli import app
from ablate.errors import ReportError
from ablate.results import VARIANT_COLUMNS, summarize
from ablate.study import load_study

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "golden" / "table2_smoke.md"
FLOPS_CONVENTION = "G multiply-accumulates (MACs) for one 3x512x512 image in inference mode"
LABEL = "smoke profile: synthetic data, 40 iterations \u2014 not comparable to the paper's numbers"

# seed -> mIoU (best); last = best - 0.5. dwt's paired diffs 1.0, 1.1 -> p = 0.030 (marked);
# attention's seed 1 failed, dwt_attention has not started.
BEST = {"baseline": {0: 40.0, 1: 41.0}, "dwt": {0: 41.0, 1: 42.1}, "attention": {0: 40.6}}
FAILED = {("attention", 1): "loss is NaN at iter 31"}
MEASURED = {"baseline": {"params_m": 4.5213, "gmacs": 7.112},
            "dwt": {"params_m": 4.5762, "gmacs": 7.205},
            "attention": {"params_m": 4.5213, "gmacs": 24.131, "uncounted": {"aten::_foreach_mul": 3}},
            "dwt_attention": {"params_m": 4.5762, "gmacs": 24.224}}


@pytest.fixture(autouse=True)
def in_repo(monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("ABLATE_STUDIES", raising=False)
    monkeypatch.delenv("ABLATE_FULL_ERROR", raising=False)
    monkeypatch.setenv("ABLATE_WORK_DIR", str(tmp_path / "work_dirs"))


def two_seeds():
    return dataclasses.replace(load_study(str(REPO / "experiments" / "table2.yaml")), seeds=(0, 1))


def build_runs(root, study, best=BEST):
    """Run folders as training leaves them, for the CLI tests (which collect them)."""
    for run in study.runs("smoke", work_root=root):
        run.work_dir.mkdir(parents=True, exist_ok=True)
        value = best.get(run.variant, {}).get(run.seed)
        if value is not None:
            (run.work_dir / "result.json").write_text(json.dumps({
                "miou_best": value, "miou_last": value - 0.5, "aacc_last": 70.0, "iterations": 40,
                "max_iters": 40, "wall_time_s": 10.0}))
        elif run.variant == "attention":
            (run.work_dir / "failed.json").write_text(json.dumps({"error": "loss is NaN at iter 31"}))


def summarized(study):
    return summarize(study, "smoke", runs_frame(study, BEST, last_offset=0.5, measured=MEASURED, failed=FAILED),
                     MEASURED)


@pytest.fixture
def results():
    return summarized(two_seeds())


def table_rows(markdown: str, table: int = 0) -> list[list[str]]:
    """The header and rows of the markdown's ``table``-th table (0: the variants), separator left out."""
    tables, previous = [], False
    for line in markdown.splitlines():
        if line.startswith("| "):
            if not previous:
                tables.append([])
            tables[-1].append([cell.strip() for cell in line.strip("|").split(" | ")])
        previous = line.startswith("|")
    return tables[table]


# --------------------------------------------------------------------------- markdown


def test_markdown_matches_the_golden_file(results):
    text = report.render_markdown(results)
    if not GOLDEN.exists():
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(text)
        pytest.fail(f"wrote {GOLDEN}; check it and commit it")
    expected = GOLDEN.read_text()
    if text != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True),
                                            str(GOLDEN), "rendered"))
        pytest.fail(f"rendered markdown differs from the golden file:\n{diff}\n"
                    f"delete {GOLDEN} and rerun the tests if this change is intended")


def test_markdown_columns_and_cells(results):
    text = report.render_markdown(results)
    header, *rows = table_rows(text)
    assert header == ["variant", "mIoU (best)", "\u0394 base", "paper", "\u0394 paper", "mIoU (last)",
                      "Params (M)", "\u0394 base", "paper", "FLOPs (G)", "\u0394 base", "paper", "status"]
    assert len(rows) == 4 and all(len(r) == len(header) for r in rows)
    base, dwt, att, both = rows
    assert base == ["SegNeXt + FreqFusion", "40.50 \u00b1 0.71 (n=2)", "\u2014", "43.52", "-3.02",
                    "40.00 \u00b1 0.71 (n=2)", "4.52", "\u2014", "4.44", "7.11", "\u2014", "7.03", "done"]
    # dwt: +1.05 with p = 0.030 -> marked; params delta with 3 decimals; the paper's as printed (+0.06)
    assert dwt[1:5] == ["41.55 \u00b1 0.78 (n=2)", "+1.05\u2020", "44.03", "-2.48"]  # 2.48 > 2 x 0.78
    assert dwt[6:] == ["4.58", "+0.055", "+0.06", "7.21", "+0.09", "+0.09", "done"]
    # attention: one seed, no std, not marked; its FLOPs delta is the attention's matrix products
    assert att[1:5] == ["40.60", "+0.10", "43.75", "-3.15"]
    assert att[10:] == ["+17.02", "+0.01", "1 done, 1 failed"]
    # nothing finished: dashes, not zeros, and the status says why
    assert both[1:3] == ["\u2014", "\u2014"] and both[-1] == "pending"


def test_markdown_opens_with_the_profile_label_and_states_the_conventions(results):
    text = report.render_markdown(results)
    first_lines = text.splitlines()[:3]
    assert LABEL in first_lines[2]
    assert FLOPS_CONVENTION in text and "does not see matrix products" in text
    assert "aten::_foreach_mul x3" in text          # uncounted operators are said
    assert "run `attention/seed1` failed: loss is NaN at iter 31" in text
    assert "compare" in text.lower() and "best" in text


def test_compare_last_puts_the_last_evaluation_first():
    res = summarized(dataclasses.replace(two_seeds(), compare_miou="last"))
    header, base, *_ = table_rows(report.render_markdown(res))
    assert header[1] == "mIoU (last)" and header[5] == "mIoU (best)"
    assert base[1].startswith("40.00") and base[4] == "-3.52"


def test_pipe_in_a_label_does_not_break_the_markdown_table(results):
    results.variants.loc["dwt", "label"] = "a | b"
    header, _, dwt, *_ = table_rows(report.render_markdown(results))
    assert dwt[0] == "a \\| b"


def test_rows_without_paper_numbers_show_dashes_in_the_paper_columns():
    study = load_study(str(REPO / "experiments" / "dsconv.yaml"))
    measured = {"baseline": {"params_m": 4.5213, "gmacs": 7.112}, "dsconv": {"params_m": 4.4011, "gmacs": 6.93}}
    runs = runs_frame(study, {"baseline": {0: 40.0}, "dsconv": {0: 40.4}}, measured=measured)
    header, base, dsconv, both = table_rows(report.render_markdown(summarize(study, "smoke", runs)))
    assert base[3:5] == ["43.52", "-3.52"] and base[8] == "4.44"
    assert dsconv == ["+ DSConv", "40.40", "+0.40", "\u2014", "\u2014", "39.40", "4.40", "-0.120", "\u2014",
                      "6.93", "-0.18", "\u2014", "done"]
    assert both[3:5] == ["\u2014", "\u2014"] and both[-1] == "pending"


# --------------------------------------------------------------------------- CSV, JSON, LaTeX


def test_csv_is_one_header_and_a_row_per_variant_that_pandas_reads_back(results):
    text = report.render_csv(results)
    assert not any(line.startswith("#") for line in text.splitlines())  # no prose: that is in md and json
    frame = pd.read_csv(io.StringIO(text))
    assert list(frame.columns) == ["variant", *VARIANT_COLUMNS]  # the first line is the one header
    assert frame["variant"].tolist() == ["baseline", "dwt", "attention", "dwt_attention"]
    for column in ("miou_best_mean", "miou_best_std", "miou_best_delta", "miou_best_p", "paper_miou",
                   "miou_vs_paper", "params_m", "params_m_delta", "paper_params_m_delta", "gmacs", "gmacs_delta"):
        assert pd.api.types.is_float_dtype(frame[column]), column
    dwt = frame.iloc[1]
    # rounded as the markdown prints them: 41.55 +- 0.78, +1.05, -2.48; Params 4.58 (+0.055); FLOPs 7.21 (+0.09)
    assert (dwt["miou_best_mean"], dwt["miou_best_std"], dwt["miou_best_delta"]) == (41.55, 0.78, 1.05)
    assert (dwt["miou_vs_paper"], dwt["miou_last_mean"], dwt["miou_best_n"]) == (-2.48, 41.05, 2)
    assert (dwt["params_m"], dwt["params_m_delta"], dwt["paper_params_m_delta"]) == (4.58, 0.055, 0.06)
    assert (dwt["gmacs"], dwt["gmacs_delta"], dwt["paper_gmacs_delta"]) == (7.21, 0.09, 0.09)
    assert dwt["miou_best_p"] == 0.0303  # 0.030292: three significant digits
    assert dwt["seeds_done"] == "0;1" and not dwt["is_baseline"] and dwt["status"] == "done"
    assert frame.iloc[2]["status"] == "1 done, 1 failed"
    assert pd.isna(frame.iloc[3]["miou_best_mean"])  # not finished: empty, not 0
    assert frame.iloc[0]["params_m_delta"] == 0.0 and "-0.0" not in text


def test_csv_numbers_are_those_the_markdown_shows_not_their_float_noise():
    study = dataclasses.replace(two_seeds(), seeds=(0,))
    res = summarize(study, "smoke", runs_frame(study, {"baseline": {0: 71.78}}))
    assert res.variants.at["baseline", "miou_vs_paper"] == 28.259999999999998  # 71.78 - 43.52, unrounded
    text = report.render_csv(res)
    assert "28.259999" not in text and ",28.26," in text
    assert pd.read_csv(io.StringIO(text))["miou_vs_paper"].iloc[0] == 28.26
    assert "| 71.78 | \u2014 | 43.52 | +28.26 |" in report.render_markdown(res)


def test_json_parses_back_with_every_number_unrounded(results):
    data = json.loads(report.render_json(results))
    assert (data["study"], data["profile"], data["compare_miou"]) == ("table2", "smoke", "best")
    assert data["profile_label"] == LABEL and data["comparable_to_paper"] is False
    assert FLOPS_CONVENTION in data["conventions"]["FLOPs"]
    dwt = data["variants"][1]
    assert dwt["miou_best_mean"] == (41.0 + 42.1) / 2
    assert dwt["miou_best_p"] == pytest.approx(0.030292, abs=1e-6)  # t = 21 on 1 df
    assert dwt["params_m_delta"] == 4.5762 - 4.5213
    assert data["variants"][3]["miou_best_mean"] is None
    assert any("aten::_foreach_mul" in note for note in data["notes"])
    assert data["problems"] == [] and data["include_stale"] is False
    assert len(data["runs"]) == 8 and data["runs"][5] == {
        "study": "table2", "profile": "smoke", "variant": "attention", "seed": 1, "status": "failed",
        "work_dir": "work_dirs/table2/smoke/attention/seed1", "miou_best": None, "miou_last": None, "aacc": None,
        "iterations": None, "max_iters": None, "wall_time_s": None, "train_time_s": None, "params_m": 4.5213,
        "gmacs": 24.131, "error": "loss is NaN at iter 31"}


def test_latex_is_booktabs_and_escaped(results):
    results.variants.loc["dwt", "label"] = "DWT_FF & 50% #1 {x} ~$^\\"
    text = report.render_latex(results)
    assert text.startswith("% Table 2") and "needs \\usepackage{booktabs}" in text.splitlines()[0]
    lines = text[:text.index("\\end{table}")].splitlines()  # the variants' table (effects and claims follow)
    for rule in ("\\begin{tabular}{lrrrrrrrrrrrl}", "\\toprule", "\\midrule", "\\bottomrule", "\\end{tabular}"):
        assert lines.count(rule) == 1, rule
    top, mid, bottom = (lines.index(rule) for rule in ("\\toprule", "\\midrule", "\\bottomrule"))
    assert top + 2 == mid and bottom - mid - 1 == 4  # the header row, then one row per variant
    assert all(line.endswith(" \\\\") for line in lines[top + 1:bottom] if line != "\\midrule")
    below = "\n".join(lines[1:])  # under the comment line nothing special is left bare
    assert not re.search(r"(?<!\\)[_%#&]", below.replace(" & ", " ")), "unescaped _ % # &"
    assert "\\texttt{dwt\\_attention/seed0}" in text and "aten::\\_foreach\\_mul" in text
    assert ("DWT\\_FF \\& 50\\% \\#1 \\{x\\} \\textasciitilde{}\\$\\textasciicircum{}\\textbackslash{}"
            in text)
    assert "$\\Delta$ base" in text and "$\\pm$" in text and "+1.05$^\\dagger$" in text
    assert "\\texttt{attention/seed1}" in text  # `code` spans converted
    assert "`" not in text.split("\n", 1)[1]  # none left below the comment line
    assert "\u2014" not in text and "\u0394" not in text and "\u00b1" not in text  # no raw unicode symbols
    assert "smoke profile: synthetic data, 40 iterations --- not comparable" in text
    assert FLOPS_CONVENTION in text
    body = text[text.index("\\midrule"):text.index("\\bottomrule")]
    assert all(line.count(" & ") == 12 for line in body.splitlines()[1:] if line)


def test_latex_escape():
    assert report.latex_escape("a_b & c% `x_y`") == "a\\_b \\& c\\% \\texttt{x\\_y}"
    assert report.latex_escape("|x| \u2264 2") == "\\textbar{}x\\textbar{} $\\leq$ 2"


# --------------------------------------------------------------------------- files, plot


def test_write_reports_writes_every_format_and_a_png(results, tmp_path):
    paths = report.write_reports(results, tmp_path / "reports", report.parse_formats(["all"]))
    names = sorted(p.name for p in paths)
    assert names == ["smoke.csv", "smoke.json", "smoke.md", "smoke.png", "smoke.tex"]
    assert all(p.parent == tmp_path / "reports" / "table2" for p in paths)
    png = (tmp_path / "reports" / "table2" / "smoke.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    assert not list((tmp_path / "reports" / "table2").glob(".*tmp"))  # atomic writes left nothing behind


def test_plot_marks_paper_points_hollow_and_ours_filled(results, tmp_path, monkeypatch):
    from matplotlib.collections import PathCollection
    from matplotlib.figure import Figure

    saved = []
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: saved.append(self))
    report.plot(results, tmp_path / "x.png")
    ax = saved[0].axes[0]
    paper, caps, ours = (c for c in ax.collections if isinstance(c, PathCollection))  # the three scatter calls
    assert paper.get_offsets().tolist() == [[7.03, 43.52], [7.12, 44.03], [7.04, 43.75], [7.13, 44.12]]
    assert paper.get_facecolors().size == 0 and paper.get_edgecolors().shape[0] == 4  # hollow
    assert ours.get_offsets().tolist() == [[7.112, 40.5], [7.205, 41.55], [24.131, 40.6]]  # not dwt_attention
    assert ours.get_facecolors().shape[0] == 3  # filled
    # error bars end at mean -+ std (ddof=1) of the seeds: baseline 40, 41; dwt 41, 42.1; attention has one seed
    half, dwt_half = 0.5 ** 0.5, 1.1 / 2 ** 0.5
    assert caps.get_offsets().flatten().tolist() == pytest.approx(
        [7.112, 40.5 - half, 7.112, 40.5 + half, 7.205, 41.55 - dwt_half, 7.205, 41.55 + dwt_half])
    labels = {t.get_text() for t in ax.texts}
    assert labels == {"SegNeXt + FreqFusion", "+ DWT", "+ Attention", "+ DWT + Attention"}
    figure = saved[0]
    renderer = figure.canvas.get_renderer()
    inside = figure.bbox
    for text in ax.texts:  # no label runs off the figure, also beside the rightmost points
        box = text.get_window_extent(renderer)
        assert inside.x0 <= box.x0 and box.x1 <= inside.x1, text.get_text()


def test_parse_formats():
    assert report.parse_formats(["all"]) == ["md", "csv", "latex", "json", "png"]
    assert report.parse_formats(["md", "tex,json", "md"]) == ["md", "latex", "json"]
    assert report.parse_formats([]) == ["md", "csv", "latex", "json"]  # the plot on request
    with pytest.raises(ReportError, match="did you mean `latex`"):
        report.parse_formats(["latx"])


# --------------------------------------------------------------------------- CLI

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_cli_report_prints_markdown_and_writes_files(tmp_path):
    build_runs(tmp_path / "work_dirs", two_seeds(), {"baseline": {0: 40.0}, "dwt": {0: 41.0}})
    code, out, err = invoke("report", "table2", "--profile", "smoke", "--no-measure", "--out", str(tmp_path / "r"))
    assert code == 0, err
    assert LABEL in out and "| variant | mIoU (best) |" in out and "| + DWT | 41.00 | +1.00 |" in out
    for ext in ("md", "csv", "tex", "json"):
        assert (tmp_path / "r" / "table2" / f"smoke.{ext}").is_file(), ext
    assert not (tmp_path / "r" / "table2" / "smoke.png").exists()  # the plot on request: --format png/all
    assert "Params/FLOPs not measured" in out


def test_cli_report_one_format(tmp_path):
    build_runs(tmp_path / "work_dirs", two_seeds(), {"baseline": {0: 40.0}})
    code, out, _ = invoke("report", "table2", "-p", "smoke", "--no-measure", "-o", str(tmp_path / "r"),
                          "--format", "json")
    assert code == 0
    assert [p.name for p in (tmp_path / "r" / "table2").iterdir()] == ["smoke.json"]
    assert "| SegNeXt + FreqFusion | 40.00 |" in out  # the terminal still shows markdown


@pytest.mark.parametrize("formats, needed", [("md,csv,latex,json", ["numpy", "pandas"]),
                                             ("png", ["matplotlib", "numpy", "pandas"])])
def test_cli_report_imports_only_what_its_formats_need(tmp_path, formats, needed):
    # a fresh interpreter: scipy (one seed: no t-test), torch and mmseg (--no-measure) stay out,
    # pandas (with numpy) holds the results, and matplotlib loads for the PNG only
    build_runs(tmp_path / "work_dirs", two_seeds(), {"baseline": {0: 40.0}, "dwt": {0: 41.0}})
    heavy = ("matplotlib", "mmseg", "numpy", "pandas", "scipy", "torch")
    script = ("import sys\n"
              "from ablate.cli import app\n"
              "app(sys.argv[1:], standalone_mode=False)\n"
              f"print([name for name in {heavy!r} if name in sys.modules])\n")
    proc = subprocess.run([sys.executable, "-c", script, "report", "table2", "-p", "smoke", "--no-measure",
                           "-o", str(tmp_path / "r"), "-f", formats], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == repr(needed)


def test_cli_report_measures_through_ablate_measure(tmp_path, monkeypatch):
    import types

    fake = types.ModuleType("ablate.measure")
    fake.measure_cached = lambda cfg, shape, cache: {"params_m": 4.5213, "gmacs": 7.112, "uncounted": {}}
    monkeypatch.setitem(sys.modules, "ablate.measure", fake)
    build_runs(tmp_path / "work_dirs", two_seeds(), {"baseline": {0: 40.0}})
    code, out, err = invoke("report", "table2", "-p", "smoke", "-o", str(tmp_path / "r"), "-f", "md")
    assert code == 0, err
    assert "| 4.52 | \u2014 | 4.44 | 7.11 |" in out


def test_cli_corrupt_result_names_the_file_and_reports_the_rest(tmp_path):
    work = tmp_path / "work_dirs"
    build_runs(work, two_seeds(), {"baseline": {0: 40.0}, "dwt": {0: 41.0}})
    bad = work / "table2" / "smoke" / "dwt" / "seed0" / "result.json"
    bad.write_text('{"miou_best": 41.0')
    code, out, err = invoke("report", "table2", "-p", "smoke", "--no-measure", "-o", str(tmp_path / "r"))
    assert code == 1
    assert str(bad) in err.replace("\n", "")
    assert "| SegNeXt + FreqFusion | 40.00 |" in out              # the rest is reported
    md = (tmp_path / "r" / "table2" / "smoke.md").read_text()
    assert "Left out (unreadable results)" in md and "dwt/seed0" in md


def test_cli_no_runs_says_which_command_to_run(tmp_path):
    code, out, err = invoke("report", "table2", "--profile", "smoke", "--no-measure")
    assert code == 2
    assert "`ablate run table2 --profile smoke`" in err and "none has started" in err


def test_cli_unknown_profile_and_format(tmp_path):
    code, _, err = invoke("report", "table2", "--profile", "smok")
    assert code == 2 and "unknown profile `smok`; did you mean `smoke`?" in err
    code, _, err = invoke("report", "table2", "--profile", "smoke", "--format", "docx")
    assert code == 2 and "unknown report format `docx`" in err
    code, _, err = invoke("report", "tabel2")
    assert code == 2 and "unknown study `tabel2`" in err
