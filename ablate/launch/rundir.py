"""The files of one run folder, as CONTRACTS.md lays them out; every writer goes through here.

``config.py`` (resolved config), ``run.json`` (written at each (re)start), ``lock`` (see
:mod:`ablate.launch.lock`), ``progress.json`` (training hook), ``result.json`` (written last,
atomically, only when training and evaluation finished), ``failed.json`` (why the last attempt
failed, with the log's tail), ``worker.log`` (the worker's stdout and stderr, appended per
attempt) and mmengine's own output (``iter_N.pth``, ``last_checkpoint``, a timestamped log folder).
"""
from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import zipfile
from collections import deque
from pathlib import Path
from typing import Any

from ablate.io import read_json, write_json

CONFIG = "config.py"
RUN_INFO = "run.json"
PROGRESS = "progress.json"
RESULT = "result.json"
FAILED = "failed.json"
WORKER_LOG = "worker.log"
TAIL_LINES = 40
EXIT_LOCKED = 3  # the worker's exit status when another live process holds the run's lock


def now() -> str:
    """The current time as an ISO string with the local offset."""
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def read(work_dir: Path, name: str) -> dict | None:
    """A JSON file of the run folder, or None when it is missing or torn."""
    try:
        data = read_json(Path(work_dir) / name)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write(work_dir: Path, name: str, data: dict[str, Any]) -> None:
    """Write a JSON file of the run folder atomically."""
    write_json(Path(work_dir) / name, data)


def write_failed(work_dir: Path, error: str, log_tail: str, exit_code: int | None) -> None:
    """Record why an attempt failed: ``failed.json`` with a one-line error and the log's tail."""
    error = " ".join(error.split()) or "unknown error"
    write(work_dir, FAILED, {"error": error, "log_tail": log_tail, "failed_at": now(), "exit_code": exit_code})


def tail(path: Path, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of a text file ("" when it is missing)."""
    try:
        with open(path, errors="replace") as f:
            return "".join(deque(f, maxlen=lines))
    except OSError:
        return ""


def checkpoint_iter(path: Path) -> int | None:
    """N of an ``iter_N.pth`` path, else None."""
    match = re.fullmatch(r"iter_(\d+)\.pth", Path(path).name)
    return int(match.group(1)) if match else None


def latest_checkpoint(work_dir: Path) -> tuple[Path, int] | None:
    """The newest complete ``iter_N.pth`` of a run folder, with N, or None.

    A kill during ``torch.save`` leaves a truncated file, and torch's zip format keeps its index at
    the end, so "opens as a zip" means "was written completely". ``last_checkpoint`` is not trusted
    alone: mmengine rewrites it in place, after the checkpoint itself.
    """
    found = [(n, p) for p in Path(work_dir).glob("iter_*.pth") if (n := checkpoint_iter(p)) is not None]
    for n, path in sorted(found, reverse=True):
        if zipfile.is_zipfile(path):
            return path, n
    return None


def discard(work_dir: Path, keep: tuple[str, ...] = ("lock",)) -> None:
    """Delete everything a run folder holds except ``keep`` (``--restart``)."""
    for entry in Path(work_dir).iterdir():
        if entry.name in keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def elapsed(seconds: float | None) -> str:
    """``1:02:03`` / ``2:03`` for a duration; ``-`` for None."""
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def abspath(path: str | os.PathLike) -> Path:
    """An absolute path without resolving symlinks (run folders may live behind one)."""
    return Path(os.path.abspath(path))
