"""`ablate eval` on the tiny study: a run's own checkpoint gives the mIoU the run recorded, released
mmseg 0.x weights (downloaded) are converted and give it too, errors are one line; `ablate report`
shows the evaluations as a table of their own, and nothing when there are none."""
import functools
import hashlib
import http.server
import json
import math
import re
import socket
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import TINY_BASE, _tiny_study_text  # the tiny_study fixture's parts: one trained run for the module
from hand_runs import runs_frame
from typer.testing import CliRunner

from ablate import configs, report
from ablate.cli import app
from ablate.errors import CheckpointError, StudyError
from ablate.evaluate import checkpoints_to_evaluate, read_evaluations
from ablate.io import write_json
from ablate.results import RELEASED_COLUMNS, summarize
from ablate.runs import CheckpointEval, WorkRoot
from ablate.study import load_study

REPO = Path(__file__).resolve().parents[1]
MSCAN_T_BLOCKS = 3 + 3 + 5 + 2  # one mlp.dwconv (weight and bias) each, renamed by the 0.x conversion
runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_data):
    """The tiny study with run `a` trained (4 iterations, evaluated at 4); env set for this module's tests."""
    from ablate.train import train

    root = tmp_path_factory.mktemp("evaluate")
    (root / "experiments" / "_base_").mkdir(parents=True)
    (root / "experiments" / "_base_" / "tiny.py").write_text(TINY_BASE)
    (root / "experiments" / "tiny.yaml").write_text(_tiny_study_text())
    with pytest.MonkeyPatch.context() as env:
        env.setenv("ABLATE_STUDIES", str(root / "experiments"))
        env.setenv("ABLATE_WORK_DIR", str(root / "work_dirs"))
        env.setenv("ABLATE_DATA", str(tiny_data))
        env.setenv("TORCH_HOME", str(root / "torch_home"))  # where downloads are cached
        env.delenv("ABLATE_FULL_ERROR", raising=False)
        study = load_study("tiny")
        (run,) = study.runs("smoke", variants=["a"])
        cfg = configs.resolve(study, run, data_root=tiny_data / "synthetic_ade20k")
        write_json(run.work_dir / "run.json", {"config_hash": configs.dump(cfg, run.work_dir / "config.py")})
        started = time.time()
        assert train(run.work_dir) == 0
        print(f"trained the tiny run in {time.time() - started:.1f} s")
        time.sleep(1.05)  # mmengine names the training's logger by the second
        yield study, run, json.loads((run.work_dir / "result.json").read_text()), root


def eval_dirs(root: Path, variant: str = "a") -> list[Path]:
    return WorkRoot(root / "work_dirs").eval_dirs("tiny", "smoke", variant)


def test_a_runs_last_checkpoint_gives_the_miou_it_recorded_and_the_report_shows_it(trained, tiny_data):
    study, run, result, root = trained
    checkpoint = run.work_dir / "iter_4.pth"
    (scalars,) = run.work_dir.glob("*/vis_data/scalars.json")
    trained_scalars = scalars.read_text()
    started = time.time()
    code, out, err = invoke("eval", "tiny", "-p", "smoke", "--checkpoint", f"a={checkpoint}")
    print(f"ablate eval: {time.time() - started:.1f} s\n{out}")
    assert code == 0, err
    assert scalars.read_text() == trained_scalars  # mmengine's visualizer of the training is not reused
    assert err == ""  # mmengine's log goes to its file, not to the terminal
    miou = float(re.search(r"^a: mIoU (\d+\.\d\d) ", out, re.M).group(1))
    assert abs(miou - result["miou_last"]) <= 0.01
    assert f"a: run a/seed0 evaluated iteration 4 in training at mIoU {result['miou_last']:.2f}" in out

    (folder,) = eval_dirs(root)
    sha256 = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert folder.name == f"eval-iter_4-{sha256[:8]}"
    record = CheckpointEval.read(folder)
    assert (record.study, record.profile, record.variant, record.source) == ("tiny", "smoke", "a", str(checkpoint))
    assert (record.sha256, record.format, record.converted, record.trusted) == (sha256, "1.x", 0, True)
    assert (record.miou, record.iteration, record.images) == (miou, 4, 2)
    last = result["evaluations"][-1]
    assert (record.aacc, record.macc) == (pytest.approx(last["aAcc"], abs=0.01), pytest.approx(last["mAcc"], abs=0.01))
    assert record.data_root == str(tiny_data / "synthetic_ade20k")
    assert record.run_key == configs.run_key(configs.resolve(study, run, data_root=record.data_root))
    assert (folder / "config.py").is_file() and list(folder.glob("*/*.log"))  # mmengine's, as evaluated
    assert '"mIoU": ' in next(folder.glob("*/vis_data/scalars.json")).read_text()
    assert not list(folder.glob("*.pth"))  # the checkpoint hook is off: no "best" copy of the weights

    out_dir = root / "reports"
    code, out, err = invoke("report", "tiny", "-p", "smoke", "--no-measure", "-o", out_dir)
    assert code == 0, err
    rows = [line for line in out.splitlines() if line.startswith("| A | iter_4.pth |")]
    assert rows == [f"| A | iter_4.pth | 1.x | {miou:.2f} | +0.00 | \u2014 | \u2014 | {record.aacc:.2f} | "
                    f"{record.macc:.2f} | {sha256[:12]} |"]
    assert "**Released weights**" in out and out.index("| variant | mIoU (best) |") < out.index("**Released weights**")
    released = pd.read_csv(out_dir / "tiny" / "smoke.released.csv")  # other tests may have added rows
    assert list(released.columns) == list(RELEASED_COLUMNS)
    assert released[released["sha256"] == sha256][["variant", "checkpoint", "miou"]].values.tolist() == [
        ["a", "iter_4.pth", miou]]
    data = json.loads((out_dir / "tiny" / "smoke.json").read_text())
    assert [(r["variant"], r["miou"], r["trained_miou"]) for r in data["released_weights"] if r["sha256"] == sha256] \
        == [("a", miou, result["miou_best"])]
    assert "Released weights" in (out_dir / "tiny" / "smoke.tex").read_text()


def test_released_0x_weights_are_downloaded_converted_and_give_the_same_miou(trained, tmp_path):
    study, run, result, root = trained
    weights = torch.load(run.work_dir / "iter_4.pth", map_location="cpu", weights_only=False)["state_dict"]
    # mmseg 0.x's MSCAN wraps each block's depthwise conv in a DWConv module: `mlp.dwconv.dwconv.*`
    released = {re.sub(r"(\.mlp\.dwconv)\.", r"\1.dwconv.", key): value for key, value in weights.items()}
    assert sum(key not in weights for key in released) == 2 * MSCAN_T_BLOCKS
    served = tmp_path / "served"
    served.mkdir()
    torch.save({"meta": {"CLASSES": ["x"]}, "state_dict": released}, served / "segnext_t_0x.pth")
    with serving(served) as base:
        code, out, err = invoke("eval", "tiny", "-p", "smoke", "-c", f"a={base}/segnext_t_0x.pth")
    assert code == 0, err
    assert re.search(rf"^a: mIoU {result['miou_last']:.2f} .*\(mmseg 0\.x, {2 * MSCAN_T_BLOCKS} keys renamed, ",
                     out, re.M), out
    record = next(CheckpointEval.read(d) for d in eval_dirs(root) if d.name.startswith("eval-segnext_t_0x-"))
    assert (record.format, record.converted, record.trusted, record.iteration) == ("0.x", 26, False, None)
    assert record.source == f"{base}/segnext_t_0x.pth"
    assert (root / "torch_home" / "hub" / "checkpoints" / "segnext_t_0x.pth").is_file()


class serving:
    """Serves a folder on 127.0.0.1 while in the ``with``; gives the base URL."""

    def __init__(self, folder: Path):
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))

    def __enter__(self) -> str:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


def test_the_weights_given_are_the_weights_evaluated(trained, tmp_path):
    study, run, result, root = trained
    weights = torch.load(run.work_dir / "iter_4.pth", map_location="cpu", weights_only=False)["state_dict"]
    weights["decode_head.conv_seg.bias"][149] += 100.0  # every pixel becomes class 149, absent from the data
    torch.save({"state_dict": weights}, tmp_path / "class149.pth")
    code, out, err = invoke("eval", "tiny", "-p", "smoke", "-c", f"a={tmp_path / 'class149.pth'}")
    assert code == 0, err
    assert re.search(r"^a: mIoU 0\.00  aAcc 0\.00 ", out, re.M), out
    assert result["miou_last"] > 0


def test_every_evaluation_starts_from_one_random_state_and_training_keeps_its_own():
    from mmseg.models.decode_heads.ham_head import NMF2D

    from ablate.train import SeededValidation

    nmf = NMF2D(dict(MD_R=4)).eval()  # LightHamHead's matrix decomposition: random bases on every forward pass
    x = torch.rand(1, 16, 6, 6)
    assert not torch.equal(nmf(x), nmf(x))
    hook = SeededValidation()

    def evaluation():
        hook.before_val_epoch(runner=None)
        y = nmf(x)
        hook.after_val_epoch(runner=None)
        return y

    torch.manual_seed(1)
    first, then = evaluation(), torch.rand(3)
    torch.manual_seed(2)
    torch.rand(100)  # training drew other numbers before this evaluation
    assert torch.equal(evaluation(), first)
    torch.manual_seed(1)
    assert torch.equal(torch.rand(3), then)  # training continues as if no evaluation had run


def test_weights_of_another_architecture_are_one_line_naming_the_keys(trained, tmp_path):
    study, run, result, root = trained
    weights = torch.load(run.work_dir / "iter_4.pth", map_location="cpu", weights_only=False)["state_dict"]
    weights.pop("decode_head.conv_seg.weight")
    weights["decode_head.classifier.weight"] = torch.zeros(3, 3)
    torch.save({"state_dict": weights}, tmp_path / "other.pth")
    before = {p.name for p in eval_dirs(root)}
    code, out, err = invoke("eval", "tiny", "-p", "smoke", "-c", f"a={tmp_path / 'other.pth'}")
    assert code == 2
    line = err.replace("\n", "")  # the console wraps, the message is one line
    assert line.startswith(f"error: a: {tmp_path / 'other.pth'} does not fit the model: 1 missing "
                           "(decode_head.conv_seg.weight); 1 unexpected (decode_head.classifier.weight)")
    assert "Traceback" not in out + err
    assert not any(CheckpointEval.read(root / "work_dirs" / "tiny" / "smoke" / "a" / name)
                   for name in {p.name for p in eval_dirs(root)} - before)  # nothing recorded


def test_an_unreachable_url_is_named_and_the_other_checkpoints_are_still_evaluated(trained):
    study, run, result, root = trained
    with socket.socket() as sock:  # a port nothing listens on once closed: connections are refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/released.pth"
    code, out, err = invoke("eval", "tiny", "-p", "smoke", "-c", f"a={url}", "-c", f"b={run.work_dir / 'iter_4.pth'}")
    assert code == 2
    assert re.fullmatch(rf"error: a: cannot download {re.escape(url)}: .*refused.*\n", err, re.I), err
    assert re.search(r"^b: mIoU \d+\.\d\d ", out, re.M), out  # b's model is a's but dropout: the same weights fit


@pytest.mark.parametrize("given, message", [
    (["a"], "--checkpoint `a`: expected VARIANT=PATH or VARIANT=URL"),
    (["=x.pth"], "--checkpoint `=x.pth`: expected VARIANT=PATH"),
    (["d=x.pth"], "--checkpoint `d=x.pth`: unknown variant `d`; choose from a, b, c"),
    (["a=/nonexistent/iter_4.pth"], "a: /nonexistent/iter_4.pth: no such checkpoint file"),
    (["a=ftp://host/x.pth"], "a: ftp://host/x.pth: only http:// and https:// URLs are fetched"),
])
def test_bad_checkpoint_arguments_are_one_line_and_exit_2(tiny_study, given, message):
    code, out, err = invoke("eval", "tiny", "-p", "smoke", *(f"--checkpoint={g}" for g in given))
    assert code == 2
    assert err.startswith(f"error: {message}") and err.count("\n") == 1, err


def test_every_bad_checkpoint_argument_is_named_at_once(tiny_study):
    with pytest.raises(CheckpointError) as err:
        checkpoints_to_evaluate(load_study("tiny"), ["a=/none.pth", "a=/other.pth", "x"])
    assert str(err.value).splitlines() == [
        "--checkpoint `a=/other.pth`: variant `a` is given twice",
        "--checkpoint `x`: expected VARIANT=PATH or VARIANT=URL, e.g. baseline=iter_40.pth",
        "a: /none.pth: no such checkpoint file",
    ]


def test_the_study_files_checkpoints_are_the_default(tiny_study, tmp_path):
    text = json.loads(tiny_study.read_text())
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "c.pth").write_bytes(b"")
    text["variants"]["a"]["checkpoint"] = "https://example.org/a.pth"
    text["variants"]["c"]["checkpoint"] = "../weights/c.pth"  # relative to the study file
    tiny_study.write_text(json.dumps(text))
    study = load_study("tiny")
    assert (study.variant("a").checkpoint, study.variant("b").checkpoint) == ("https://example.org/a.pth", None)
    assert checkpoints_to_evaluate(study, []) == [("a", "https://example.org/a.pth"),
                                                  ("c", str(tmp_path / "weights" / "c.pth"))]
    assert checkpoints_to_evaluate(study, [f"b={tmp_path / 'weights' / 'c.pth'}"]) == [  # given: only those
        ("b", str(tmp_path / "weights" / "c.pth"))]


def test_without_checkpoints_there_is_nothing_to_evaluate(tiny_study):
    code, _, err = invoke("eval", "tiny", "-p", "smoke")
    assert code == 2
    assert err.startswith("error: nothing to evaluate: give --checkpoint VARIANT=PATH (or =URL), or give variants "
                          "of tiny.yaml a `checkpoint:`")


@pytest.mark.parametrize("value, message", [
    ("ftp://host/a.pth", "variant `a`: `checkpoint` URL `ftp://host/a.pth`: only http:// and https:// are fetched"),
    (3, "variant `a`: `checkpoint` must be a path or an http(s) URL, not 3"),
    ("", "variant `a`: `checkpoint` must be a path or an http(s) URL, not ''"),
])
def test_a_bad_checkpoint_in_the_study_file_names_file_and_line(tiny_study, value, message):
    text = json.loads(tiny_study.read_text())
    text["variants"]["a"]["checkpoint"] = value
    tiny_study.write_text(json.dumps(text, indent=1))
    with pytest.raises(StudyError) as err:
        load_study("tiny")
    line = next(i for i, row in enumerate(tiny_study.read_text().splitlines(), 1) if '"checkpoint"' in row)
    assert str(err.value) == f"tiny.yaml:{line}: {message}"


# --------------------------------------------------------------------------- report, from records by hand


def table2():
    return load_study(str(REPO / "experiments" / "table2.yaml"))


def record(variant="baseline", miou=43.1, **fields):
    values = dict(study="table2", profile="smoke", variant=variant, source=f"https://example.org/{variant}_0x.pth",
                  sha256="ab" * 32, format="0.x", miou=miou, aacc=80.0, macc=55.5, converted=26, images=2000,
                  data_root="/data/ADEChallengeData2016", evaluated_at="2025-01-01T00:00:00+00:00")
    return CheckpointEval(**{**values, **fields})


def summarized(released):
    study = table2()
    return summarize(study, "smoke", runs_frame(study, {"baseline": {0: 40.0}, "dwt": {0: 41.0}}), {},
                     released=released)


def test_released_rows_sit_beside_our_trained_mean_and_the_paper():
    res = summarized([record("dwt", 44.0, evaluated_at="2025-01-02"), record("baseline", 43.1),
                      record("dwt", 43.9, source="/ckpt/dwt_1x.pth", format="1.x", converted=0)])
    rel = res.released
    assert list(rel.columns) == list(RELEASED_COLUMNS)
    assert rel[["variant", "checkpoint"]].values.tolist() == [  # study order, then time
        ["baseline", "baseline_0x.pth"], ["dwt", "dwt_1x.pth"], ["dwt", "dwt_0x.pth"]]
    assert rel["trained_miou"].tolist() == [40.0, 41.0, 41.0]
    assert rel["miou_vs_trained"].tolist() == pytest.approx([3.1, 2.9, 3.0])
    assert rel["miou_vs_paper"].tolist() == pytest.approx([43.1 - 43.52, 43.9 - 44.03, 44.0 - 44.03])
    md = report.render_markdown(res)
    assert ("| SegNeXt + FreqFusion | baseline_0x.pth | 0.x | 43.10 | +3.10 | 43.52 | -0.42 | 80.00 | 55.50 | "
            "abababababab |") in md
    assert "| + DWT | dwt_1x.pth | 1.x | 43.90 | +2.90 | 44.03 | -0.13 |" in md
    assert md.index("**Released weights**") < md.index("**Conventions**")
    tex = report.render_latex(res)
    assert "\\textbf{Released weights.}" in tex and "baseline\\_0x.pth & 0.x & 43.10 & +3.10 & 43.52 & -0.42" in tex
    # variants, released weights, and table2's effects and claims
    assert tex.count("\\begin{tabular}") == tex.count("\\end{tabular}") == 4
    assert [r["miou_vs_trained"] for r in json.loads(report.render_json(res))["released_weights"]] == \
        pytest.approx([3.1, 2.9, 3.0])


def test_a_variant_without_trained_runs_or_paper_has_dashes_not_deltas():
    res = summarized([record("dwt_attention", 44.2, aacc=None, macc=None)])
    row = res.released.iloc[0]
    assert math.isnan(row["trained_miou"]) and math.isnan(row["miou_vs_trained"])
    assert "| + DWT + Attention | dwt_attention_0x.pth | 0.x | 44.20 | \u2014 | 44.12 | +0.08 | \u2014 | \u2014 |" \
        in report.render_markdown(res)
    assert json.loads(report.render_json(res))["released_weights"][0]["trained_miou"] is None


def test_without_evaluations_no_format_shows_them(tmp_path):
    res = summarized([])
    assert res.released.empty
    assert "Released weights" not in report.render_markdown(res) + report.render_latex(res)
    assert "released_weights" not in json.loads(report.render_json(res))
    stale = tmp_path / "table2" / "smoke.released.csv"  # from a report when there were some
    stale.parent.mkdir(parents=True)
    stale.write_text("variant\n")
    assert [p.name for p in report.write_reports(res, tmp_path, ["csv"])] == ["smoke.csv"]
    assert not stale.exists()
    written = report.write_reports(summarized([record()]), tmp_path, ["csv"])
    assert [p.name for p in written] == ["smoke.csv", "smoke.released.csv"]
    assert pd.read_csv(written[1])["miou_vs_paper"].tolist() == [-0.42]


def test_evaluations_of_another_profile_are_refused():
    with pytest.raises(ValueError, match="evaluations of paper/baseline given for profile `smoke`"):
        summarized([record(profile="paper")])


def test_unfinished_evaluations_are_left_out_and_unreadable_ones_named(tmp_path):
    study, root = table2(), WorkRoot(tmp_path)
    done = root.eval_dir("table2", "smoke", "dwt", "https://example.org/dwt_0x.pth", "ab" * 32)
    record("dwt").write(done)
    root.eval_dir("table2", "smoke", "dwt", "killed.pth", "cd" * 32).mkdir()  # killed before its record
    bad = root.eval_dir("table2", "smoke", "baseline", "/x/iter_40.pth", "ef" * 32)
    bad.mkdir(parents=True)
    (bad / "evaluation.json").write_text('{"miou": 4')
    found, problems = read_evaluations(study, "smoke", tmp_path)
    assert found == [record("dwt")]
    assert len(problems) == 1 and problems[0].startswith(f"{bad / 'evaluation.json'}: not valid JSON")


@pytest.mark.parametrize("source, name", [
    ("/w/table2/smoke/baseline/seed0/iter_40.pth", "eval-iter_40-abababab"),
    ("https://host/d/segnext t+ff.pth?download=1", "eval-segnext_t_ff-abababab"),
    ("https://host/d/..pth", "eval-checkpoint-abababab"),
    ("/w/weights.ckpt", "eval-weights.ckpt-abababab"),
])
def test_an_evaluation_folder_is_named_by_the_file_and_its_hash(tmp_path, source, name):
    folder = WorkRoot(tmp_path).eval_dir("table2", "smoke", "baseline", source, "ab" * 32)
    assert folder == tmp_path / "table2" / "smoke" / "baseline" / name
