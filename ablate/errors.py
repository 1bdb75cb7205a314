"""User-facing errors: one line each, printed by the CLI without a traceback, exit code 2.

Raise an :class:`AblateError` subclass for anything the user can fix (a bad study file, an
unknown variant, a missing dataset). Bugs stay ordinary exceptions so they keep their traceback.
``ABLATE_FULL_ERROR=1`` makes the CLI re-raise these too, for debugging.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class AblateError(Exception):
    """A problem with the user's input; the message is the whole explanation."""

    exit_code = 2


class StudyError(AblateError):
    """A study file that cannot be loaded or validated."""


class ConfigError(AblateError):
    """A variant or profile override that does not fit the base config."""


class LaunchError(AblateError):
    """A launch that cannot start (no GPUs, unknown launcher, missing dataset)."""


class ReportError(AblateError):
    """Nothing to report, or results that cannot be read."""


class CheckpointError(AblateError):
    """A checkpoint that cannot be read safely, downloaded, converted or loaded into the model."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """``"; did you mean `x`?"`` for the closest of ``choices``, or ``""`` when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f"; did you mean `{close[0]}`?" if close else ""


def one_of(name: str, kind: str, choices: Iterable[str]) -> str:
    """``"unknown variant `x`; choose from a, b"`` with a suggestion when one is close."""
    choices = list(choices)
    hint = did_you_mean(name, choices)
    return f"unknown {kind} `{name}`{hint or ''}; choose from {', '.join(choices) or '(none)'}"
