"""Text shared by what the stages print: durations."""
from __future__ import annotations


def duration(seconds: float | None) -> str:
    """``1:02:03`` / ``2:03`` for a duration in seconds; ``-`` for None."""
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"
