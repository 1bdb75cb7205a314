"""The ground floor: run folders, their records and their state.

Every stage reads and writes run folders through this package, and this package imports no
stage (nor torch, mmengine or mmseg): it is plain files and plain Python.

- :mod:`~ablate.runs.layout`: the work root and where each run's folder is (:class:`WorkRoot`,
  :class:`Run`), and which names may become folders;
- :mod:`~ablate.runs.records`: the JSON files of a run folder as typed, schema-versioned records,
  written atomically (:class:`RunInfo`, :class:`Progress`, :class:`Result`, :class:`Failure`), and
  the record of a checkpoint's evaluation beside the runs (:class:`CheckpointEval`);
- :mod:`~ablate.runs.lock`: the run lock, which keeps a second process off a run;
- :mod:`~ablate.runs.folder`: the folder's other files (config, logs, checkpoints);
- :mod:`~ablate.runs.state`: :func:`read_state`, the one reader that decides a run's status.
"""
from ablate.runs.layout import Run, WorkRoot, bad_name
from ablate.runs.records import (Attempt, CheckpointEval, Evaluation, Failure, Progress, RecordError, Result,
                                 RunInfo)
from ablate.runs.state import JobState, RunState, RunStatus, read_state

__all__ = [
    "Attempt", "CheckpointEval", "Evaluation", "Failure", "JobState", "Progress", "RecordError", "Result", "Run",
    "RunInfo", "RunState", "RunStatus", "WorkRoot", "bad_name", "read_state",
]
