"""The JSON files of a run folder, as typed records: the only code that reads or writes them.

================  =======================  ==================================================
file              record                   written by, when
================  =======================  ==================================================
``run.json``      :class:`RunInfo`         ``ablate run``, at every (re)start of the run
``progress.json`` :class:`Progress`        the worker's progress hook, about once a second
``result.json``   :class:`Result`          the worker, atomically and LAST: training and the
                                           final evaluation finished; its presence means done
``failed.json``   :class:`Failure`         the worker or its launcher, when an attempt failed;
                                           removed when the run is started again
================  =======================  ==================================================

Beside the runs, ``<variant>/eval-<checkpoint>/`` (:meth:`ablate.runs.WorkRoot.eval_dir`) holds
``evaluation.json`` (:class:`CheckpointEval`), written atomically by ``ablate eval`` when the
evaluation of one checkpoint on the profile's validation split finished.

Every file carries ``"schema": SCHEMA``; a file without one was written by an ablate before
schemas and reads the same. Every write is atomic (:func:`ablate.io.atomic_write`: a temporary
file, fsync, ``os.replace``), so a reader sees the old file or the new one, never half of one:
a file that does not parse is damaged, not "being written", and :meth:`Record.read` raises
:class:`RecordError` naming the file and what is wrong. Keys a record does not know are ignored,
so that an older ablate reads a newer file of the same schema.

``attempts.jsonl`` is the one append-only file: one :class:`Attempt` per line, one line per
worker start. It is what survives when ``progress.json`` is damaged (:func:`read_attempts`).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from ablate.errors import AblateError
from ablate.io import atomic_write

SCHEMA = 1
ATTEMPTS_FILE = "attempts.jsonl"

R = TypeVar("R", bound="Record")


class RecordError(AblateError):
    """A run-folder file that exists but cannot be read; the message names it and says why."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


@dataclass
class Evaluation:
    """One evaluation on the validation split: mmseg's IoUMetric, in percent."""

    iteration: int
    mIoU: float  # noqa: N815 - mmseg's metric names
    aAcc: float | None = None  # noqa: N815
    mAcc: float | None = None  # noqa: N815


@dataclass
class Attempt:
    """One start of a worker on the run: when, from which checkpoint iteration, which process."""

    started_at: str
    start_iter: int
    pid: int
    host: str | None = None


class Record:
    """A run-folder JSON file (a dataclass subclass sets ``FILE``)."""

    FILE: ClassVar[str]

    @classmethod
    def read(cls: type[R], work_dir: str | os.PathLike) -> R | None:
        """The record in ``work_dir``, or None when the file does not exist.

        Raises:
            RecordError: the file exists but is not valid JSON, not an object, lacks a required
                field, has a field of the wrong type, or has a newer schema.
        """
        path = Path(work_dir) / cls.FILE
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise RecordError(path, f"unreadable ({exc.strerror or exc})") from None
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise RecordError(path, f"not valid JSON ({exc})") from None
        return cls.from_json(data, path)

    @classmethod
    def from_json(cls: type[R], data: Any, path: Path | str = "") -> R:
        """The record from parsed JSON; raises :class:`RecordError` (naming ``path``) when it does not fit."""
        path = Path(path or cls.FILE)
        if not isinstance(data, dict):
            raise RecordError(path, f"not a JSON object but {type(data).__name__}")
        schema = data.get("schema", SCHEMA)
        if not isinstance(schema, int) or schema > SCHEMA:
            raise RecordError(path, f"schema {schema!r} is newer than this ablate reads ({SCHEMA}); upgrade ablate")
        return _build(cls, data, path, "")

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, **dataclasses.asdict(self)}

    def write(self, work_dir: str | os.PathLike) -> None:
        """Write the record into ``work_dir`` atomically."""
        with atomic_write(Path(work_dir) / self.FILE) as tmp:
            tmp.write_text(json.dumps(self.to_json(), indent=2, sort_keys=True, allow_nan=False) + "\n")


@dataclass
class RunInfo(Record):
    """``run.json``: how the run was (re)started by ``ablate run``."""

    FILE: ClassVar[str] = "run.json"

    config_hash: str | None = None  # sha256 (16 hex) of config.py's text
    run_key: str | None = None  # ablate.configs.run_key: what the run computes, logging and paths left out
    started_at: str | None = None  # ISO time with offset
    launcher: str | None = None  # the launcher's name (ablate.launch.LAUNCHERS)
    job_id: str | None = None  # the pid or the scheduler's job id, once known
    host: str | None = None  # where `ablate run` ran
    world_size: int = 1  # processes per run
    lock_token: str | None = None  # the worker adopts the run's lock when it carries this token
    scheduler: str | None = None  # where job_id lives, for launchers with several (slurm: "slurm" | "local")
    data_root: str | None = None  # the dataset root the run trains on
    total_batch: int | None = None  # images per iteration over all processes
    sets: dict[str, Any] | None = None  # the `--set KEY=VALUE` overrides it was launched with (YAML values)


@dataclass
class Progress(Record):
    """``progress.json``: where the current attempt is, and what every attempt so far did."""

    FILE: ClassVar[str] = "progress.json"

    iteration: int = 0  # the last finished training iteration
    max_iters: int | None = None
    loss: float | None = None
    eta_s: float | None = None  # until training ends, from this attempt's pace
    phase: str = "train"  # "train" | "eval" (an evaluation is running) | "done"
    updated_at: str | None = None
    pid: int | None = None
    wall_time_s: float = 0.0  # every attempt so far
    train_time_s: float = 0.0  # inside the training loop, every attempt so far
    evaluations: list[Evaluation] = field(default_factory=list)  # so far, kept across resumes
    attempts: list[Attempt] = field(default_factory=list)


@dataclass
class Result(Record):
    """``result.json``: the run finished training and its final evaluation."""

    FILE: ClassVar[str] = "result.json"

    miou_best: float  # percent, best evaluation
    miou_last: float  # percent, evaluation of the final weights
    study: str | None = None
    profile: str | None = None
    variant: str | None = None
    seed: int | None = None
    config_hash: str | None = None
    run_key: str | None = None  # as run.json's, of the config it trained with
    status: str = "done"
    aacc_last: float | None = None
    macc_last: float | None = None
    best_iter: int | None = None
    evaluations: list[Evaluation] = field(default_factory=list)
    iterations: int | None = None
    max_iters: int | None = None
    wall_time_s: float | None = None  # the worker processes, all attempts added up
    train_time_s: float | None = None  # inside mmengine's training loop, all attempts
    resumed_from: int | None = None  # checkpoint iteration the last attempt started from
    attempts: list[Attempt] = field(default_factory=list)
    finished_at: str | None = None
    chance_miou: float | None = None  # of a synthetic dataset (ablate_synthetic.json)
    world_size: int | None = None  # processes that trained it
    total_batch: int | None = None  # images per iteration over all processes


@dataclass
class Failure(Record):
    """``failed.json``: why the last attempt failed."""

    FILE: ClassVar[str] = "failed.json"

    error: str  # one line
    log_tail: str = ""  # the last lines of the worker's output
    failed_at: str | None = None
    exit_code: int | None = None  # negative: killed by that signal


@dataclass
class CheckpointEval(Record):
    """``evaluation.json``: one checkpoint's weights evaluated on a profile's validation split (``ablate eval``)."""

    FILE: ClassVar[str] = "evaluation.json"

    study: str
    profile: str
    variant: str  # the variant whose config built the model the weights were loaded into
    source: str  # the checkpoint as given: an absolute path or an http(s) URL
    sha256: str  # of the checkpoint file as read (the download, for a URL)
    format: str  # "0.x" (keys renamed by ablate.convert) or "1.x"
    miou: float  # percent, mmseg's IoUMetric
    aacc: float | None = None
    macc: float | None = None
    converted: int = 0  # keys renamed from mmseg 0.x names
    trusted: bool = False  # read as one of ablate's own run checkpoints (lies under the work root)
    iteration: int | None = None  # N of a run's iter_N.pth
    images: int | None = None  # validation images evaluated
    data_root: str | None = None
    run_key: str | None = None  # ablate.configs.run_key of the variant's config, as trained runs record it
    evaluated_at: str | None = None  # ISO time with offset, when the evaluation finished
    wall_time_s: float | None = None  # building the model and data, loading the weights, evaluating


def append_attempt(work_dir: str | os.PathLike, attempt: Attempt) -> None:
    """Add one line to ``attempts.jsonl`` (appended and flushed: earlier lines are never rewritten)."""
    with open(Path(work_dir) / ATTEMPTS_FILE, "a") as f:
        f.write(json.dumps(dataclasses.asdict(attempt)) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_attempts(work_dir: str | os.PathLike) -> list[Attempt]:
    """Every attempt ``attempts.jsonl`` records, oldest first; damaged lines are skipped."""
    path = Path(work_dir) / ATTEMPTS_FILE
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    attempts = []
    for line in lines:
        try:
            attempts.append(_build(Attempt, json.loads(line), path, ""))
        except (ValueError, RecordError):
            continue
    return attempts


# --------------------------------------------------------------------------- typed JSON


def _build(cls: type, data: dict, path: Path, where: str):
    """An instance of the dataclass ``cls`` from ``data``, each field checked against its annotation."""
    if not isinstance(data, dict):
        raise RecordError(path, f"`{where}` is not an object")
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        name = f"{where}.{f.name}" if where else f.name
        if f.name in data:
            values[f.name] = _value(data[f.name], hints[f.name], path, name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise RecordError(path, f"missing field `{name}`")
    return cls(**values)


def _value(value: Any, hint: Any, path: Path, name: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (hint,) = [a for a in args if a is not type(None)]
        return _value(value, hint, path, name)
    if origin is list:
        if not isinstance(value, list):
            raise RecordError(path, f"`{name}` is {value!r}, not a list")
        return [_value(item, args[0], path, f"{name}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise RecordError(path, f"`{name}` is {value!r}, not an object")
        return {key: _value(item, args[1], path, f"{name}.{key}") for key, item in value.items()}
    if hint is Any:  # JSON as it came: `--set` values
        return value
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, path, name)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    if hint is bool and isinstance(value, bool):
        return value
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is str and isinstance(value, str):
        return value
    raise RecordError(path, f"`{name}` is {value!r}, not {'a finite number' if hint is float else hint.__name__}")
