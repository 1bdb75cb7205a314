"""Compute plans: what a profile of a study will run and roughly what it will cost.

Reads the study, each run's resolved config (for ``train_cfg.max_iters``) and each run's state
(:func:`ablate.runs.read_state`: finished runs measured their seconds per iteration). Writes nothing.

Seconds per iteration come from, in order: the ``--sec-per-iter`` flag, the mean over finished
runs of this profile (``train_time_s / iterations``), the profile's ``sec_per_iter`` in the study
file. Without any of them the cost is shown as unknown rather than guessed.

``--power`` (:func:`power_plan`) adds, for each difference the study cares about (its effects and
its claims' comparisons, else each variant against the baseline), the seeds per variant needed to
find the paper's value of it (or ``--detect``) with a 95 % interval at power 0.8
(:func:`ablate.effects.seeds_needed`), and what those seeds cost. The seed std comes from, in
order: ``--seed-std``; this profile's finished runs, with 2 or more seeds of every variant (the
residual std of :class:`ablate.effects.Fit`); the study file (the profile's ``seed_std``, else the
study's); another profile's finished runs (said so: another schedule has other noise).
"""
from __future__ import annotations

from dataclasses import dataclass

from ablate import configs
from ablate.contrasts import Contrast, comparison_contrast, factorial_terms
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


def plan_study(study: Study, profile: str, sec_per_iter: float | None = None, sets: dict | None = None) -> Plan:
    """Resolve every run of ``profile`` and estimate its cost.

    Args:
        study: the loaded study.
        profile: profile name.
        sec_per_iter: seconds per iteration to assume; None picks measured or the study's value.
        sets: ``--set`` overrides (:func:`ablate.configs.parse_sets`), e.g. another ``train_cfg.max_iters``.
    """
    planned, measured = [], []
    for run in study.runs(profile):
        cfg = configs.resolve(study, run, sets=sets)
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


@dataclass(frozen=True)
class PowerRow:
    """One difference the study cares about and the seeds it needs."""

    name: str  # the effect's term or the claim's comparison
    contrast: Contrast
    difference: float | None  # the value to find: the paper's, or --detect; None: neither
    seeds: int | None  # per variant; None: no difference to find, or more than effects.MOST_SEEDS


@dataclass(frozen=True)
class PowerPlan:
    plan: Plan
    seed_std: float | None
    seed_std_source: str  # where seed_std came from, in words
    rows: list[PowerRow]

    def seed_hours(self) -> float | None:
        """Device-hours of one seed of every variant (the plan's runs of its first seed)."""
        first = min(r.run.seed for r in self.plan.runs)
        return self.plan.hours(sum(r.max_iters for r in self.plan.runs if r.run.seed == first))


def power_plan(plan: Plan, seed_std: float | None = None, detect: float | None = None,
               work_root=None) -> PowerPlan:
    """The seeds each difference of ``plan``'s study needs (the module doc says which and how).

    Args:
        plan: :func:`plan_study`'s plan of the profile whose cost is counted.
        seed_std: ``--seed-std``; None looks for one (runs, then the study file).
        detect: ``--detect``: find this difference (mIoU) everywhere instead of the paper's.
        work_root: root of the run folders; default ``$ABLATE_WORK_DIR`` or ``work_dirs``.
    """
    from ablate import effects  # lazy: numpy and pandas only for --power

    study = plan.study
    std, source = (seed_std, "--seed-std") if seed_std is not None else _seed_std(study, plan.profile, work_root)
    paper = {name: v.paper.get("mIoU") for name, v in study.variants.items()}
    rows, seen = [], set()
    for name, contrast in _differences(study):
        if contrast.key() in seen:
            continue
        seen.add(contrast.key())
        difference = detect if detect is not None else contrast.of(paper)
        sum_squares = sum(w * w for _, w in contrast.weights)
        seeds = (effects.seeds_needed(difference, std, sum_squares, len(study.variants))
                 if difference is not None and std is not None else None)
        rows.append(PowerRow(name, contrast, difference, seeds))
    return PowerPlan(plan, std, source, rows)


def _differences(study: Study) -> list[tuple[str, Contrast]]:
    """Effects, then claims' comparisons; without either, every variant against the baseline."""
    found = [(t.name, t.contrast) for t in factorial_terms(study.factors, study.cells())]
    for claim in study.claims:
        found += [(part.text, comparison_contrast(part, study.factors, study.cells(), list(study.variants)))
                  for part in claim.parts]
    if not found:
        found = [(f"{name} > {study.baseline}", Contrast(((name, 1.0), (study.baseline, -1.0))))
                 for name in study.variants if name != study.baseline]
    return found


def _seed_std(study: Study, profile: str, work_root) -> tuple[float | None, str]:
    """The seed std of ``profile``: measured, else the study file's, else another profile's measured."""
    found = _measured_std(study, profile, work_root)
    if found is not None:
        return found[0], f"measured: profile `{profile}`, {found[1]} finished runs, residual std over {found[2]} df"
    if study.profile(profile).seed_std is not None:
        return study.profile(profile).seed_std, f"study file: profiles.{profile}.seed_std"
    if study.seed_std is not None:
        return study.seed_std, "study file: seed_std"
    for other in (p for p in study.profiles if p != profile):
        found = _measured_std(study, other, work_root)
        if found is not None:
            return found[0], (f"measured on profile `{other}` ({found[1]} runs, {found[2]} df), not `{profile}`: "
                              "another schedule has other noise; state `seed_std` for this profile")
    return None, "unknown"


def _measured_std(study: Study, profile: str, work_root) -> tuple[float, int, int] | None:
    """(residual std, finished runs, df) of a profile with 2+ finished seeds of every variant, else None."""
    from ablate.collect import collect  # lazy: mmengine, to tell stale runs
    from ablate.effects import Fit

    column = "miou_" + study.compare_miou
    runs = collect(study, profile, work_root=work_root, measure=False).runs
    done = runs[(runs["status"] == "done") & runs[column].notna()]
    if done.empty or (done["variant"].value_counts().reindex(list(study.variants), fill_value=0) < 2).any():
        return None
    fit = Fit(done, column, list(study.variants))
    return (fit.seed_std, len(done), fit.df) if fit.df > 0 else None


def render_power(console, power: PowerPlan) -> None:
    """Print the seeds each difference needs, with the seed std used and what the seeds cost."""
    from rich.table import Table

    from ablate.effects import ALPHA, MOST_SEEDS, POWER

    plan = power.plan
    variants = len(plan.study.variants)
    std = f"{power.seed_std:.3g} mIoU" if power.seed_std is not None else "unknown"
    console.print(f"seed std {std} ({power.seed_std_source}); a 95 % interval (alpha {ALPHA}) on the right side of "
                  f"0 with power {POWER}; seeds per variant, {variants} variants per seed")
    per_seed = power.seed_hours()
    table = Table("difference", "contrast", "to find", "seeds", "device time", box=None)
    for row in power.rows:
        if row.difference is None:
            table.add_row(row.name, row.contrast.text(), "-", "-", "no paper value: --detect MIOU")
            continue
        if row.seeds is None:
            seeds, cost = ("-", "-") if power.seed_std is None else (f">{MOST_SEEDS:,}", "-")
        else:
            seeds = str(row.seeds)
            cost = _duration(row.seeds * per_seed) if per_seed is not None else "?"
        table.add_row(row.name, row.contrast.text(), f"{row.difference:+.2f}", seeds, cost)
    console.print(table)
    if power.seed_std is None:
        console.print("no seed std: finish 2+ seeds of every variant, state `seed_std` in the study file, or "
                      "pass --seed-std")
    if per_seed is None:
        console.print("device time unknown: pass --sec-per-iter or finish one run")
    else:
        console.print(f"one seed of every variant: {_duration(per_seed)} device time")


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
