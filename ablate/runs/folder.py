"""The files of one run folder besides its JSON records, and the operations on the folder itself.

``work_dirs/<study>/<profile>/<variant>/seed<k>/`` holds:

- ``config.py``: the resolved config, written by ``ablate run`` before each (re)start; its hash
  is the run's ``config_hash``;
- ``runtime_config.py``: mmengine's dump of the config as it actually ran (``resume``,
  ``load_from`` and ``launcher`` set by the worker);
- ``run.json``, ``progress.json``, ``result.json``, ``failed.json``, ``attempts.jsonl``: the
  records of :mod:`ablate.runs.records`;
- ``lock``: :mod:`ablate.runs.lock`;
- ``worker.log``: the worker's stdout and stderr (local launchers), one ``=== <time> ...``
  header per attempt; Slurm jobs log to ``submitit/`` instead;
- mmengine's own output: ``iter_N.pth`` checkpoints, ``last_checkpoint``, a timestamped folder
  with the log and ``vis_data/scalars.json``.
"""
from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import zipfile
from collections import deque
from pathlib import Path

from ablate.runs.records import Failure, Result

CONFIG = "config.py"
RUNTIME_CONFIG = "runtime_config.py"
WORKER_LOG = "worker.log"
TAIL_LINES = 40
EXIT_LOCKED = 3  # the worker's exit status when another live process holds the run's lock


def now() -> str:
    """The current time as an ISO string with the local offset."""
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def abspath(path: str | os.PathLike) -> Path:
    """An absolute path without resolving symlinks (run folders may live behind one)."""
    return Path(os.path.abspath(path))


def record_failure(work_dir: Path, error: str, log_tail: str, exit_code: int | None) -> Failure:
    """Write ``failed.json``: a one-line error and the log's tail; returns the record."""
    failure = Failure(" ".join(error.split()) or "unknown error", log_tail, now(), exit_code)
    failure.write(work_dir)
    return failure


def tail(path: Path | None, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of a text file ("" when it is missing)."""
    if path is None:
        return ""
    try:
        with open(path, errors="replace") as f:
            return "".join(deque(f, maxlen=lines))
    except OSError:
        return ""


def checkpoint_iter(path: Path) -> int | None:
    """N of an ``iter_N.pth`` path, else None."""
    match = re.fullmatch(r"iter_(\d+)\.pth", Path(path).name)
    return int(match.group(1)) if match else None


def checkpoints(work_dir: Path) -> list[tuple[Path, int]]:
    """The complete ``iter_N.pth`` files of a run folder with their N, newest first.

    A kill (or a full disk) during ``torch.save`` leaves a truncated file, and torch's zip format
    keeps its index at the end, so "opens as a zip" means "was written completely". mmengine's
    ``last_checkpoint`` is not trusted: it is rewritten in place, after the checkpoint itself.
    """
    found = [(p, n) for p in Path(work_dir).glob("iter_*.pth") if (n := checkpoint_iter(p)) is not None]
    return [(p, n) for p, n in sorted(found, key=lambda item: -item[1]) if zipfile.is_zipfile(p)]


def remove_partial_checkpoints(work_dir: Path) -> None:
    """Delete ``iter_N.pth`` files that were not written completely (a kill or a full disk while saving)."""
    for path in Path(work_dir).glob("iter_*.pth"):
        if checkpoint_iter(path) is not None and not zipfile.is_zipfile(path):
            path.unlink(missing_ok=True)


def latest_checkpoint(work_dir: Path) -> tuple[Path, int] | None:
    """The newest complete checkpoint and its iteration, or None."""
    found = checkpoints(work_dir)
    return found[0] if found else None


def holds_training(work_dir: Path) -> bool:
    """Whether the folder holds something trained: a complete checkpoint or a result."""
    return (Path(work_dir) / Result.FILE).exists() or latest_checkpoint(work_dir) is not None


def discard(work_dir: Path, keep: tuple[str, ...] = ("lock",)) -> None:
    """Delete everything a run folder holds except ``keep`` (``--restart``)."""
    for entry in Path(work_dir).iterdir():
        if entry.name in keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
