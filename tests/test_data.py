"""Datasets: the synthetic smoke set (layout, determinism, learnable classes, chance level as
mmseg computes it) and the check of a real ADE20K tree (`ablate data check`)."""
import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from ablate.cli import app
from ablate.data.check import check_ade20k
from ablate.data.synthetic import CLASSES, FORMAT, META_FILE, ensure_synthetic, make_synthetic, read_meta
from ablate.errors import LaunchError

runner = CliRunner()


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_synthetic_data_is_deterministic_and_in_ade20k_layout(tmp_path):
    meta = make_synthetic(tmp_path / "a", num_train=6, num_val=3)
    make_synthetic(tmp_path / "b", num_train=6, num_val=3)
    make_synthetic(tmp_path / "c", num_train=6, num_val=3, seed=1)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert _files(tmp_path / "a") != _files(tmp_path / "c")
    root = tmp_path / "a"
    for split, count in (("training", 6), ("validation", 3)):
        images = sorted((root / "images" / split).glob("*.jpg"))
        labels = sorted((root / "annotations" / split).glob("*.png"))
        assert len(images) == len(labels) == count
        assert [p.stem for p in images] == [p.stem for p in labels]
        for path in labels:
            label = Image.open(path)
            assert label.mode == "L" and label.size == (128, 96)
            assert set(np.unique(np.asarray(label))) <= {0, *CLASSES}
        assert Image.open(images[0]).mode == "RGB"
    assert meta == read_meta(root) and meta["counts"] == {"training": 6, "validation": 3}
    assert 0 < meta["chance_miou"] < 100


def test_each_class_has_its_own_colour_so_labels_can_be_learned(tmp_path):
    root = tmp_path / "d"
    make_synthetic(root, num_train=4, num_val=1)
    image = np.asarray(Image.open(root / "images" / "training" / "synth_train_00000.jpg"), dtype=float)
    label = np.asarray(Image.open(root / "annotations" / "training" / "synth_train_00000.png"))
    for cls in np.unique(label[label > 0]):
        mean = image[label == cls].mean(axis=0)
        assert np.abs(mean - CLASSES[int(cls)][1]).max() < 30  # JPEG and noise stay near the colour


def test_chance_miou_is_what_mmseg_iou_metric_gives_the_most_frequent_class(tmp_path):
    import torch
    from mmseg.evaluation import IoUMetric

    meta = make_synthetic(tmp_path / "e", num_train=1, num_val=5)
    labels = [np.asarray(Image.open(p)) for p in sorted((tmp_path / "e" / "annotations" / "validation").glob("*.png"))]
    reduced = [np.where(lab == 0, 255, lab.astype(np.int64) - 1) for lab in labels]  # reduce_zero_label
    counts = np.bincount(np.concatenate([r[r != 255] for r in reduced]), minlength=150)
    most = int(counts.argmax())
    results = [IoUMetric.intersect_and_union(torch.full(r.shape, most), torch.from_numpy(r), 150, 255)
               for r in reduced]
    totals = [sum(r[i] for r in results) for i in range(4)]
    miou = IoUMetric.total_area_to_metrics(*totals, metrics=["mIoU"])["IoU"]
    assert meta["chance_miou"] == pytest.approx(np.nanmean(miou) * 100, abs=0.01)


def test_ensure_synthetic_makes_it_once_and_leaves_other_folders_alone(tmp_path):
    root = ensure_synthetic(tmp_path / "f")
    stamp = (root / META_FILE).stat().st_mtime_ns
    assert ensure_synthetic(root) == root and (root / META_FILE).stat().st_mtime_ns == stamp
    outdated = {**read_meta(root), "format": 1}  # made by an older ablate: other images
    (root / META_FILE).write_text(json.dumps(outdated))
    assert read_meta(ensure_synthetic(root))["format"] == FORMAT
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(LaunchError, match="exists and is not a synthetic dataset"):
        make_synthetic(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_data_synth_command(tmp_path):
    result = runner.invoke(app, ["data", "synth", "--out", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    chance = json.loads((tmp_path / "s" / META_FILE).read_text())["chance_miou"]
    assert "64 training and 16 validation images" in result.output and f"chance mIoU {chance:.2f}" in result.output


@pytest.fixture
def ade_tree(tmp_path):
    """A 3 + 2 image tree in ADEChallengeData2016's layout, and the counts it should have."""
    root = tmp_path / "ADEChallengeData2016"
    for split, n in (("training", 3), ("validation", 2)):
        for i in range(n):
            stem = f"ADE_{split[:5]}_{i:08d}"
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "images" / split / f"{stem}.jpg")
            Image.fromarray(np.full((8, 8), 150, np.uint8)).save(root / "annotations" / split / f"{stem}.png")
    return root, {"training": 3, "validation": 2}


def test_a_complete_tree_passes(ade_tree):
    root, expected = ade_tree
    report = check_ade20k(root, expected)
    assert report.ok and report.counts == {"training": (3, 3), "validation": (2, 2)} and report.labels_checked == 5


def test_the_check_says_precisely_what_is_wrong(ade_tree):
    root, expected = ade_tree
    (root / "annotations" / "training" / "ADE_train_00000001.png").unlink()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "annotations" / "training" / "ADE_train_00000099.png")
    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(root / "annotations" / "validation" / "ADE_valid_00000000.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "annotations" / "validation" / "ADE_valid_00000001.png")
    (root / "images" / "validation" / "ADE_valid_00000001.jpg").rename(root / "images" / "validation" / "x.txt")
    problems = check_ade20k(root, expected).problems
    assert problems == [
        "images/training: 1 image(s) without annotations/training/<name>.png: ADE_train_00000001.jpg",
        "annotations/training: 1 annotation(s) without images/training/<name>.jpg: ADE_train_00000099.png",
        "images/validation: 1 .jpg images, expected 2",
        "annotations/validation: 1 annotation(s) without images/validation/<name>.jpg: ADE_valid_00000001.png",
        "annotations/validation: 1 label map(s) with values above 150 (expected 0 = other, 1..150 = classes): "
        "ADE_valid_00000000.png (max 200)",
    ]


def test_data_check_command_exits_2_with_one_line_per_problem(ade_tree, monkeypatch):
    import ablate.data.check

    root, expected = ade_tree
    monkeypatch.setattr(ablate.data.check, "EXPECTED", expected)
    good = runner.invoke(app, ["data", "check", "--data-root", str(root)])
    assert good.exit_code == 0 and "ADE20K looks complete (5 label maps checked)" in good.output
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "annotations" / "training" / "ADE_train_00000000.png")
    (root / "images" / "training" / "ADE_train_00000002.jpg").unlink()
    bad = runner.invoke(app, ["data", "check", "--data-root", str(root)])
    assert bad.exit_code == 2
    assert f"error: {root}/images/training: 2 .jpg images, expected 3\n" in bad.output
    assert f"{root}/annotations/training: 1 label map(s) not single-channel (need mode L or P): " \
           "ADE_train_00000000.png (mode RGB)" in bad.output
    assert "Traceback" not in bad.output
    missing = runner.invoke(app, ["data", "check", "--data-root", str(root.parent / "nope")])
    assert missing.exit_code == 2 and "no such directory" in missing.output
