"""Compute plans: what a profile of a study will run and roughly what it will cost.

Reads the study, each run's resolved config (for ``train_cfg.max_iters``) and each run's state
(:func:`ablate.runs.read_state`: finished runs measured their seconds per iteration). Writes nothing.

Seconds per iteration come from, in order: the ``--sec-per-iter`` flag, the mean over finished
runs of this profile (``train_time_s / iterations``), the profile's ``sec_per_iter`` in the study
file. Without any of them the cost is shown as unknown rather than guessed.
"""
from __future__ import annotations

from dataclasses import dataclass

from ablate import configs
from ablate.runs import Run, RunStatus, read_state
from ablate.study import Study


@dataclass(frozen=True)
class RunEstimate:
    """One run of a plan: its schedule and whether it is done already."""

    run: Run
    max_iters: int
    done: bool


@dataclass(frozen=True)
class Plan:
    study: Study
    profile: str
    runs: list[RunEstimate]
    sec_per_iter: float | None
    sec_per_iter_source: str  # "flag", "measured (n runs)", "study file" or "unknown"
    gpus_per_run: int

    @property
    def total_iters(self) -> int:
        return sum(r.max_iters for r in self.runs)

    @property
    def remaining_iters(self) -> int:
        return sum(r.max_iters for r in self.runs if not r.done)

    def hours(self, iters: int) -> float | None:
        """Device-hours for ``iters`` iterations (each run holds ``gpus_per_run`` devices)."""
        if self.sec_per_iter is None:
            return None
        return iters * self.sec_per_iter * self.gpus_per_run / 3600


def plan_study(study: Study, profile: str, sec_per_iter: float | None = None) -> Plan:
    """Resolve every run of ``profile`` and estimate its cost.

    Args:
        study: the loaded study.
        profile: profile name.
        sec_per_iter: seconds per iteration to assume; None picks measured or the study's value.
    """
    planned, measured = [], []
    for run in study.runs(profile):
        cfg = configs.resolve(study, run)
        state = read_state(run)
        done = state.status is RunStatus.DONE
        if done and state.result.train_time_s and state.result.iterations:
            measured.append(state.result.train_time_s / state.result.iterations)
        planned.append(RunEstimate(run, int(cfg.train_cfg.max_iters), done))
    if sec_per_iter is not None:
        source = "flag"
    elif measured:
        sec_per_iter, source = sum(measured) / len(measured), f"measured ({len(measured)} runs)"
    elif study.profile(profile).sec_per_iter is not None:
        sec_per_iter, source = study.profile(profile).sec_per_iter, "study file"
    else:
        source = "unknown"
    gpus = int(study.resources.get("gpus_per_run", 1) or 1)
    return Plan(study, profile, planned, sec_per_iter, source, gpus)


def render_plan(console, plan: Plan) -> None:
    """Print the plan as a table and a one-line cost summary."""
    from rich.table import Table

    table = Table("run", "iterations", "state", "estimate", box=None)
    for item in plan.runs:
        hours = plan.hours(item.max_iters)
        table.add_row(item.run.key, f"{item.max_iters:,}", "done" if item.done else "to run",
                      _duration(hours) if hours is not None else "?")
    console.print(table)
    total, remaining = plan.hours(plan.total_iters), plan.hours(plan.remaining_iters)
    pace = (f"{plan.sec_per_iter:.3g} s/iter ({plan.sec_per_iter_source})" if plan.sec_per_iter
            else "unknown s/iter: pass --sec-per-iter or finish one run")
    console.print(
        f"{len(plan.runs)} runs, {plan.total_iters:,} iterations ({plan.remaining_iters:,} left) at {pace}; "
        f"{plan.gpus_per_run} device(s) per run"
    )
    if total is not None:
        console.print(f"estimated compute: {_duration(total)} device time in all, {_duration(remaining)} left")


def _duration(hours: float) -> str:
    seconds = hours * 3600
    if seconds < 120:
        return f"{seconds:.0f} s"
    if hours < 2:
        return f"{seconds / 60:.0f} min"
    return f"{hours:.1f} h"
