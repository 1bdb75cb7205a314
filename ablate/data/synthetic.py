"""A tiny, deterministic dataset in ADE20K's layout, for the smoke profile.

Writes ``images/{training,validation}/*.jpg`` and ``annotations/{training,validation}/*.png``
under one root, exactly as mmseg's ``ADE20KDataset`` reads ADEChallengeData2016: label 0 is
"other" (ignored, since the dataset sets ``reduce_zero_label=True``) and 1..150 are ADE20K's
classes. Only :data:`CLASSES` (eight of the 150) occur, each painted in its own colour as
rectangles and ellipses on a background class, so a network learns to tell them apart within a
few dozen iterations and mIoU rises clearly above chance.

The root also gets :data:`META_FILE`: the generator's settings and the validation split's chance
level, the mIoU of predicting its most frequent class everywhere, computed as mmseg's
``IoUMetric`` does (per-class IoU over the whole split, averaged over the classes present). A run
on this data copies that number into its ``result.json``.

The same arguments always give the same files. The dataset is written to a temporary folder and
renamed into place, so a killed writer never leaves a half dataset that looks complete.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from ablate.errors import LaunchError

META_FILE = "ablate_synthetic.json"
FORMAT = 2  # bump when the images change; an older dataset is then made again
SPLITS = ("training", "validation")

# ADE20K label -> (its ADE20K name, RGB colour); label 1 is the background of every image. The
# colours are far apart (grey and the corners of the RGB cube), so colour alone tells the class.
CLASSES: dict[int, tuple[str, tuple[int, int, int]]] = {
    1: ("wall", (128, 128, 128)),
    3: ("sky", (20, 20, 230)),
    5: ("tree", (20, 210, 20)),
    7: ("road", (20, 20, 20)),
    13: ("person", (230, 20, 20)),
    21: ("car", (230, 230, 20)),
    22: ("water", (20, 230, 230)),
    29: ("rug", (230, 20, 230)),
}
_BACKGROUND = 1
_IGNORE = 0


def default_root() -> Path:
    """Where the smoke profile keeps its data: ``$ABLATE_DATA/synthetic_ade20k`` (default ``data/``)."""
    return Path(os.environ.get("ABLATE_DATA", "data")) / "synthetic_ade20k"


def read_meta(root: str | os.PathLike) -> dict | None:
    """The generator's metadata of a synthetic dataset, or None when ``root`` is not one."""
    path = Path(root) / META_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def ensure_synthetic(root: str | os.PathLike | None = None) -> Path:
    """Make the synthetic dataset at ``root`` (default :func:`default_root`) unless it is there, current."""
    root = Path(root) if root is not None else default_root()
    if (read_meta(root) or {}).get("format") != FORMAT:
        make_synthetic(root)
    return root


def make_synthetic(
    out: str | os.PathLike,
    num_train: int = 64,
    num_val: int = 16,
    size: tuple[int, int] = (96, 128),
    seed: int = 0,
) -> dict:
    """Write the dataset to ``out`` (replacing a synthetic dataset there) and return its metadata.

    Args:
        out: dataset root; gets ``images/``, ``annotations/`` and :data:`META_FILE`.
        num_train: images in the training split.
        num_val: images in the validation split.
        size: (height, width) of every image.
        seed: seeds the shapes; the same seed gives the same files.

    Returns:
        The metadata written to :data:`META_FILE`, with ``chance_miou`` in percent.

    Raises:
        LaunchError: ``out`` holds files that are not a synthetic dataset (they are left alone).
    """
    from PIL import Image

    out = Path(out)
    if out.exists() and read_meta(out) is None and any(out.iterdir()):
        raise LaunchError(f"{out} exists and is not a synthetic dataset; choose another --out")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    counts = {"training": num_train, "validation": num_val}
    val_labels = []
    for split, count in counts.items():
        (tmp / "images" / split).mkdir(parents=True)
        (tmp / "annotations" / split).mkdir(parents=True)
        for index in range(count):
            rng = np.random.default_rng([seed, SPLITS.index(split), index])
            image, label = _sample(rng, size)
            stem = f"synth_{split[:5]}_{index:05d}"
            Image.fromarray(image).save(tmp / "images" / split / f"{stem}.jpg", quality=95)
            Image.fromarray(label).save(tmp / "annotations" / split / f"{stem}.png")
            if split == "validation":
                val_labels.append(label)
    meta = {
        "generator": "ablate.data.synthetic",
        "format": FORMAT,
        "seed": seed,
        "size": list(size),
        "counts": counts,
        "classes": {str(k): name for k, (name, _) in CLASSES.items()},
        "chance_miou": chance_miou(val_labels),
        "chance_rule": "most frequent validation class predicted everywhere; IoU per class over "
                       "the split, mean over the classes present (as mmseg IoUMetric)",
    }
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    try:
        os.rename(tmp, out)
    except OSError:  # another process finished first; its files are the same
        shutil.rmtree(tmp, ignore_errors=True)
    return meta


def _sample(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One image and its ADE20K label map: coloured shapes on the background class."""
    height, width = size
    label = np.full((height, width), _BACKGROUND, dtype=np.uint8)
    yy, xx = np.mgrid[:height, :width]
    foreground = [k for k in CLASSES if k != _BACKGROUND]
    for _ in range(rng.integers(2, 5)):
        cls = int(rng.choice(foreground))
        h, w = rng.integers(height // 5, height // 2), rng.integers(width // 5, width // 2)
        y, x = rng.integers(0, height - h), rng.integers(0, width - w)
        if rng.random() < 0.5:
            mask = (yy >= y) & (yy < y + h) & (xx >= x) & (xx < x + w)
        else:
            cy, cx = y + h / 2, x + w / 2
            mask = ((yy - cy) / (h / 2)) ** 2 + ((xx - cx) / (w / 2)) ** 2 <= 1
        label[mask] = cls
    label[:2, :] = label[-2:, :] = label[:, :2] = label[:, -2:] = _IGNORE  # an "other" frame
    palette = np.zeros((256, 3), dtype=np.int16)
    for cls, (_, colour) in CLASSES.items():
        palette[cls] = colour
    noise = rng.integers(-12, 13, size=(height, width, 3))
    image = np.clip(palette[label] + noise, 0, 255).astype(np.uint8)
    return image, label


def chance_miou(labels: list[np.ndarray]) -> float:
    """mIoU (percent) of predicting the most frequent valid class everywhere, as mmseg's IoUMetric.

    Labels are raw ADE20K maps (0 = ignore); classes whose union is empty do not count.
    """
    hist = np.zeros(256, dtype=np.int64)
    for label in labels:
        hist += np.bincount(label.ravel(), minlength=256)
    hist[_IGNORE] = 0
    valid = int(hist.sum())
    present = np.flatnonzero(hist)
    # The predicted class intersects only itself, and its union is every valid pixel; every other
    # present class has an empty intersection, so its IoU is 0.
    iou_of_most_frequent = hist.max() / valid
    return round(float(iou_of_most_frequent / len(present)) * 100, 2)
