"""Checks a real ADE20K tree (ADEChallengeData2016) before weeks of GPU time go into it.

Reads ``images/{training,validation}/*.jpg`` and ``annotations/{training,validation}/*.png`` under
a root and reports, precisely, what differs from the release mmseg's ``ADE20KDataset`` expects:
the number of images per split (20210 / 2000), images without an annotation and annotations
without an image, and label maps that are not single-channel or hold values outside 0..150
(0 = "other", ignored; 1..150 = the classes), and images that do not decode. Writes nothing.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

EXPECTED = {"training": 20210, "validation": 2000}
NUM_CLASSES = 150
SHOWN = 5  # examples named per kind of problem


@dataclass
class CheckReport:
    """What :func:`check_ade20k` found: counts per split and one line per problem."""

    root: Path
    counts: dict[str, tuple[int, int]] = field(default_factory=dict)  # split -> (images, annotations)
    labels_checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_ade20k(
    root: str | os.PathLike,
    expected: dict[str, int] | None = None,
    label_sample: int | None = None,
    check_counts: bool = True,
) -> CheckReport:
    """Check the layout, counts, pairing and label values of an ADE20K tree.

    Args:
        root: the ADEChallengeData2016 folder (holding ``images/`` and ``annotations/``).
        expected: images per split; default the ADE20K release's (:data:`EXPECTED`).
        label_sample: check the label values (and that the images decode) of only this many pairs per
            split (evenly spread); None checks every one (about a minute for the full dataset).
        check_counts: compare the number of images per split with ``expected``.
    """
    root = Path(root)
    expected = EXPECTED if expected is None else expected
    report = CheckReport(root)
    if not root.is_dir():
        report.problems.append(f"{root}: no such directory")
        return report
    for split, count in expected.items():
        image_dir, label_dir = root / "images" / split, root / "annotations" / split
        missing = [str(d.relative_to(root)) for d in (image_dir, label_dir) if not d.is_dir()]
        if missing:
            report.problems.append(f"{', '.join(missing)}: missing folder")
            continue
        images = {p.stem: p for p in image_dir.iterdir() if p.suffix == ".jpg"}
        labels = {p.stem: p for p in label_dir.iterdir() if p.suffix == ".png"}
        report.counts[split] = (len(images), len(labels))
        if check_counts and len(images) != count:
            report.problems.append(f"images/{split}: {len(images)} .jpg images, expected {count}")
        _name_some(report, sorted(set(images) - set(labels)),
                   f"images/{split}: {{n}} image(s) without annotations/{split}/<name>.png", ".jpg")
        _name_some(report, sorted(set(labels) - set(images)),
                   f"annotations/{split}: {{n}} annotation(s) without images/{split}/<name>.jpg", ".png")
        paired = sorted(set(images) & set(labels))
        if label_sample is not None and len(paired) > label_sample:
            step = len(paired) / max(label_sample, 1)
            paired = [paired[int(i * step)] for i in range(label_sample)]
        _check_labels(report, split, [labels[name] for name in paired])
        _check_images(report, split, [images[name] for name in paired])
    return report


def quick_check(root: str | os.PathLike, sample: int = 20) -> None:
    """What ``ablate run`` checks of a real ``--data-root`` before it launches anything: both splits
    there, every image paired with its annotation, a sample of label maps in range and of images
    decodable. Counts may differ from the release (a subset is fine).

    Raises:
        LaunchError: one line per problem, each naming the files.
    """
    from ablate.errors import LaunchError

    report = check_ade20k(root, label_sample=sample, check_counts=False)
    if not report.ok:
        raise LaunchError("\n".join(f"{root}/{problem}" for problem in report.problems)
                          + f"\n(`ablate data check --data-root {root}` checks every file)")


def _name_some(report: CheckReport, names: list[str], message: str, suffix: str) -> None:
    if names:
        shown = ", ".join(n + suffix for n in names[:SHOWN])
        if len(names) > SHOWN:
            shown += f" and {len(names) - SHOWN} more"
        report.problems.append(message.format(n=len(names)) + f": {shown}")


def _check_labels(report: CheckReport, split: str, paths: list[Path]) -> None:
    import numpy as np
    from PIL import Image

    out_of_range, not_single, unreadable = [], [], []
    for path in paths:
        try:
            with Image.open(path) as image:
                mode = image.mode
                values = np.asarray(image)
        except OSError:
            unreadable.append(path.name)
            continue
        report.labels_checked += 1
        if mode not in ("L", "P") or values.ndim != 2:
            not_single.append(f"{path.name} (mode {mode})")
        elif values.max() > NUM_CLASSES:
            out_of_range.append(f"{path.name} (max {int(values.max())})")
    where = f"annotations/{split}"
    _name_some(report, unreadable, f"{where}: {{n}} unreadable PNG file(s)", "")
    _name_some(report, not_single, f"{where}: {{n}} label map(s) not single-channel (need mode L or P)", "")
    _name_some(report, out_of_range, f"{where}: {{n}} label map(s) with values above {NUM_CLASSES} "
                                     "(expected 0 = other, 1..150 = classes)", "")


def _check_images(report: CheckReport, split: str, paths: list[Path]) -> None:
    from PIL import Image

    unreadable = []
    for path in paths:
        try:
            with Image.open(path) as image:
                image.load()  # decodes every byte: a truncated file fails here
        except (OSError, SyntaxError):
            unreadable.append(path.name)
    _name_some(report, unreadable, f"images/{split}: {{n}} image(s) that do not decode", "")
