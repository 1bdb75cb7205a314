"""Compute plans: what a profile of a study will run and roughly what it will cost.

Reads the study, each run's resolved config (``train_cfg.max_iters`` and ``val_interval``, the
batch), each run's state (:func:`ablate.runs.read_state`: finished runs measured their seconds per
iteration) and the profile's ``timings.json`` (:mod:`ablate.timings`, written by
``ablate plan --measure``). Writes nothing itself.

Seconds per training iteration of a variant come from, in order: the ``--sec-per-iter`` flag, the
variant's timing in ``timings.json`` (unless its config changed since it was timed), the mean over
finished runs of this profile (``train_time_s / iterations``), the profile's ``sec_per_iter`` in the
study file. Without any of them the cost is shown as unknown rather than guessed. Evaluation costs
come from ``timings.json`` only: evaluations in the schedule x validation images x seconds per
image; without a timing the plan says that evaluation is left out.

``--power`` (:func:`power_plan`) adds, for each difference the study cares about (its effects and
its claims' comparisons, else each variant against the baseline), the seeds per variant needed to
find the paper's value of it (or ``--detect``) with a 95 % interval at power 0.8
(:func:`ablate.effects.seeds_needed`), and what those seeds cost. The seed std comes from, in
order: ``--seed-std``; this profile's finished runs, with 2 or more seeds of every variant (the
residual std of :class:`ablate.effects.Fit`); the study file (the profile's ``seed_std``, else the
study's); another profile's finished runs (said so: another schedule has other noise).

Device time: a run over K processes holds K devices for ``max_iters`` x seconds per iteration
(each process's pace at total/K images); an evaluation shards the validation images over the K
devices, so it costs images x seconds per image of device time whatever K is.
"""
from __future__ import annotations

from dataclasses import dataclass

from ablate import configs
from ablate.contrasts import Contrast, comparison_contrast, factorial_terms
from ablate.runs import Run, RunStatus, read_state
from ablate.study import Study
from ablate.timings import Timings, cost_key, read_timings


@dataclass(frozen=True)
class Pace:
    """How fast one variant trains and evaluates, and where the figures come from."""

    sec_per_iter: float | None
    source: str  # "flag", "timings.json", "measured (n runs)", "study file" or "unknown"
    eval_sec_per_image: float | None = None  # timings.json only


@dataclass(frozen=True)
class RunEstimate:
    """One run of a plan: its schedule, its pace and whether it is done already."""

    run: Run
    max_iters: int
    evaluations: int
    done: bool
    pace: Pace


@dataclass(frozen=True)
class Plan:
    study: Study
    profile: str
    runs: list[RunEstimate]
    processes: int  # per run
    total_batch: int  # images per iteration over the processes of a run
    timings: Timings | None  # the profile's timings.json, if any
    stale: list[str]  # variants whose timing is of another config than the one resolved now

    @property
    def total_iters(self) -> int:
        return sum(r.max_iters for r in self.runs)

    @property
    def remaining_iters(self) -> int:
        return sum(r.max_iters for r in self.runs if not r.done)

    def train_hours(self, item: RunEstimate) -> float | None:
        """Device-hours of one run's training (it holds ``processes`` devices)."""
        if item.pace.sec_per_iter is None:
            return None
        return item.max_iters * item.pace.sec_per_iter * self.processes / 3600

    def eval_hours(self, item: RunEstimate) -> float | None:
        """Device-hours of one run's evaluations; None when they were not timed."""
        images = self.timings.val_images if self.timings else None
        if item.pace.eval_sec_per_image is None or not images:
            return None
        return item.evaluations * images * item.pace.eval_sec_per_image / 3600

    def hours(self, remaining: bool = False) -> tuple[float | None, float | None]:
        """(training, evaluation) device-hours of every run, or of those not done; None: unknown."""
        items = [r for r in self.runs if not (remaining and r.done)]
        train = [self.train_hours(r) for r in items]
        evals = [self.eval_hours(r) for r in items]
        return (None if None in train else sum(train)), (None if None in evals else sum(evals))


def plan_study(study: Study, profile: str, sec_per_iter: float | None = None,
               processes: int | None = None, sets: dict | None = None) -> Plan:
    """Resolve every run of ``profile`` and estimate its cost.

    Args:
        study: the loaded study.
        profile: profile name.
        sec_per_iter: seconds per iteration to assume for every variant; None: timed, measured
            or the study's value (the module doc gives the order).
        processes: processes per run; None: the study's ``resources.gpus_per_run`` (else 1).
        sets: ``--set`` overrides (:func:`ablate.configs.parse_sets`), e.g. another ``train_cfg.max_iters``.
    """
    processes = processes or int(study.resources.get("gpus_per_run") or 1)
    timings = read_timings(study, profile)
    resolved, finished = [], []
    for run in study.runs(profile):
        cfg = configs.resolve(study, run, sets=sets, processes=processes)
        state = read_state(run)
        done = state.status is RunStatus.DONE
        if done and state.result.train_time_s and state.result.iterations:
            finished.append(state.result.train_time_s / state.result.iterations)
        resolved.append((run, cfg, done))
    paces, stale = {}, []
    for run, cfg, _ in resolved:
        if run.variant in paces:
            continue
        timing = timings.variants.get(run.variant) if timings else None
        if timing is not None and timing.config_key != cost_key(cfg):
            stale.append(run.variant)
            timing = None
        paces[run.variant] = _pace(study, profile, sec_per_iter, timing, finished)
    planned = [RunEstimate(run, int(cfg.train_cfg.max_iters), evaluations(cfg), done, paces[run.variant])
               for run, cfg, done in resolved]
    return Plan(study, profile, planned, processes, int(resolved[0][1].ablate.total_batch), timings, stale)


def _pace(study: Study, profile: str, flag: float | None, timing, finished: list[float]) -> Pace:
    eval_pace = timing.eval_sec_per_image if timing else None
    if flag is not None:
        return Pace(flag, "flag", eval_pace)
    if timing is not None:
        return Pace(timing.sec_per_iter, "timings.json", eval_pace)
    if finished:
        return Pace(sum(finished) / len(finished), f"measured ({len(finished)} runs)")
    if study.profile(profile).sec_per_iter is not None:
        return Pace(study.profile(profile).sec_per_iter, "study file")
    return Pace(None, "unknown")


def evaluations(cfg) -> int:
    """How often mmengine's ``IterBasedTrainLoop`` evaluates in ``cfg``'s schedule.

    It evaluates after iteration i when i >= ``val_begin`` and i is a multiple of
    ``val_interval`` or the last one; without a validation loop, never.
    """
    train_cfg = cfg.get("train_cfg") or {}
    if not (cfg.get("val_dataloader") and cfg.get("val_cfg")):
        return 0
    max_iters = int(train_cfg.get("max_iters", 0))
    interval, begin = int(train_cfg.get("val_interval", 1000)), int(train_cfg.get("val_begin", 1))
    if max_iters < begin:
        return 0
    multiples = max_iters // interval - (begin - 1) // interval
    return multiples + (max_iters % interval != 0)


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
        """Device-hours of one seed of every variant (the plan's runs of its first seed), evaluation
        included where it was timed; None when a variant's pace is unknown."""
        first = min(r.run.seed for r in self.plan.runs)
        hours = [(self.plan.train_hours(r), self.plan.eval_hours(r)) for r in self.plan.runs if r.run.seed == first]
        if any(train is None for train, _ in hours):
            return None
        return sum(train + (evals or 0) for train, evals in hours)


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
        console.print("device time unknown: pass --sec-per-iter, --measure or finish one run")
    else:
        console.print(f"one seed of every variant: {_duration(per_seed)} device time")


def render_plan(console, plan: Plan) -> None:
    """Print the runs, each variant's pace and a cost summary that says what it includes."""
    from rich.table import Table

    table = Table("run", "iterations", "evaluations", "state", "estimate", box=None)
    for item in plan.runs:
        train, evals = plan.train_hours(item), plan.eval_hours(item)
        estimate = "?" if train is None else _duration(train + (evals or 0))
        table.add_row(item.run.key, f"{item.max_iters:,}", str(item.evaluations),
                      "done" if item.done else "to run", estimate)
    console.print(table)
    paces = {item.run.variant: item.pace for item in plan.runs}
    table = Table("variant", "s/iter", "eval s/image", "source", box=None)
    for variant, pace in paces.items():
        table.add_row(variant, _num(pace.sec_per_iter), _num(pace.eval_sec_per_image), pace.source)
    console.print(table)
    if plan.timings is not None:
        console.print(f"timings.json: {plan.timings.device}, measured {plan.timings.measured_at}; "
                      f"{plan.timings.val_images or '?'} validation images")
    again = (f"`ablate plan {plan.study.name} -p {plan.profile} --gpus-per-run {plan.processes} --measure` "
             "times it again")
    if plan.timings is not None and plan.timings.processes != plan.processes:
        console.print(f"[yellow]timings.json timed {plan.timings.processes} process(es) per run, not "
                      f"{plan.processes}[/]; {again}")
    else:
        for variant in plan.stale:
            console.print(f"[yellow]timings.json timed `{variant}` with another config[/]; {again}")
    shared = {(p.sec_per_iter, p.source) for p in paces.values()}
    if len(shared) > 1:
        pace = "each variant's s/iter"
    else:
        value, source = shared.pop()
        pace = (f"{value:.3g} s/iter ({source})" if value is not None
                else "unknown s/iter: pass --sec-per-iter, --measure or finish one run")
    console.print(f"{len(plan.runs)} runs, {plan.total_iters:,} iterations ({plan.remaining_iters:,} left) at "
                  f"{pace}; {plan.processes} process(es) per run, total batch {plan.total_batch} "
                  f"({plan.total_batch // plan.processes} per process)")
    (train, evals), (train_left, evals_left) = plan.hours(), plan.hours(remaining=True)
    if train is None:
        return
    if evals is None:
        console.print(f"estimated compute: {_duration(train)} device time in all, {_duration(train_left)} left; "
                      "training only, evaluation not timed (`--measure` times it)")
        return
    console.print(f"estimated compute: {_duration(train + evals)} device time in all (training "
                  f"{_duration(train)}, evaluation {_duration(evals)}), {_duration(train_left + evals_left)} left")


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _duration(hours: float) -> str:
    seconds = hours * 3600
    if seconds < 120:
        return f"{seconds:.0f} s"
    if hours < 2:
        return f"{seconds / 60:.0f} min"
    return f"{hours:.1f} h"
