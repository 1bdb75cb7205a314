"""Where a study's runs live: the work root and one folder per run.

::

    <work root>/                          $ABLATE_WORK_DIR, default ./work_dirs
      .measure/<model hash>.json          Params/FLOPs measurements, shared by every study
      <study>/<profile>/                  one profile of one study
        timings.json                      seconds per iteration measured by `ablate plan --measure`
        wandb/                            the W&B report job's files (ablate.tracking)
        <variant>/seed<k>/                one run (see :mod:`ablate.runs.folder`)
        <variant>/eval-<name>/            one checkpoint evaluated with the variant's model by
                                          `ablate eval`: evaluation.json and mmengine's log

A :class:`Run` knows its place in this tree; nothing else builds or takes apart these paths.
Names of studies, profiles and variants become folder names, so they are restricted to
:data:`NAME_PATTERN` (letters, digits, ``_ . -``, no leading dot): a name can never climb out
of the work root.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

ENV_WORK_DIR = "ABLATE_WORK_DIR"
DEFAULT_WORK_DIR = "work_dirs"
NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
EVAL_PREFIX = "eval-"  # a variant's evaluation folders; its runs' are seed<k>


def bad_name(name: object) -> str | None:
    """Why ``name`` cannot name a study, profile or variant folder, or None when it can."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        return (f"`{name}` is not a valid name: use letters, digits, `_`, `.` and `-`, "
                "not starting with `.` or `-`")
    return None


@dataclass(frozen=True)
class WorkRoot:
    """The folder that holds every run of every study (see the module doc for its layout)."""

    path: Path

    @classmethod
    def of(cls, root: str | os.PathLike | WorkRoot | None = None) -> WorkRoot:
        """``root`` as a WorkRoot; None means ``$ABLATE_WORK_DIR``, else ``./work_dirs``."""
        if isinstance(root, WorkRoot):
            return root
        return cls(Path(root if root is not None else os.environ.get(ENV_WORK_DIR, DEFAULT_WORK_DIR)))

    def profile_dir(self, study: str, profile: str) -> Path:
        """The folder of one profile of one study."""
        return self.path / _checked(study) / _checked(profile)

    def run(self, study: str, profile: str, variant: str, seed: int) -> Run:
        """The run ``variant``/``seed`` of ``study`` under ``profile``."""
        for name in (study, profile, variant):
            _checked(name)
        return Run(study, profile, variant, int(seed), self)

    @property
    def measure_cache(self) -> Path:
        """Where Params/FLOPs measurements are cached by model hash."""
        return self.path / ".measure"

    def eval_dir(self, study: str, profile: str, variant: str, checkpoint: str, sha256: str) -> Path:
        """The folder of one checkpoint's evaluation: ``<variant>/eval-<file stem>-<sha256[:8]>``.

        The stem names the checkpoint for a reader; the hash keeps two files of one name (every
        run's ``iter_40.pth``) apart, and gives an evaluation of the same file again the same folder.

        Args:
            study, profile, variant: whose model the weights are loaded into.
            checkpoint: the checkpoint's file name or path or URL; its stem, with characters a
                folder name may not hold replaced by ``_``.
            sha256: the checkpoint file's hash, in hex.
        """
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(checkpoint.split("?")[0]).name)
        stem = stem.removesuffix(".pth").lstrip(".-") or "checkpoint"
        return self.profile_dir(study, profile) / _checked(variant) / f"{EVAL_PREFIX}{stem}-{sha256[:8]}"

    def eval_dirs(self, study: str, profile: str, variant: str) -> list[Path]:
        """The evaluation folders of a variant, by name (finished or not)."""
        return sorted(p for p in (self.profile_dir(study, profile) / _checked(variant)).glob(f"{EVAL_PREFIX}*")
                      if p.is_dir())

    def timings_file(self, study: str, profile: str) -> Path:
        """Seconds per iteration measured by ``ablate plan --measure`` for one profile."""
        return self.profile_dir(study, profile) / "timings.json"


@dataclass(frozen=True)
class Run:
    """One training run: a variant of a study under a profile with one seed, in a work root."""

    study: str
    profile: str
    variant: str
    seed: int
    root: WorkRoot

    @property
    def work_dir(self) -> Path:
        """The run's folder: ``<root>/<study>/<profile>/<variant>/seed<k>``."""
        return self.root.profile_dir(self.study, self.profile) / self.variant / f"seed{self.seed}"

    @property
    def key(self) -> str:
        """``variant/seedK``: how the run is named in tables and messages."""
        return f"{self.variant}/seed{self.seed}"


def _checked(name: str) -> str:
    reason = bad_name(name)
    if reason is not None:
        raise ValueError(reason)
    return name
