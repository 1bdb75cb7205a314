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

Device time: a run over K processes holds K devices for ``max_iters`` x seconds per iteration
(each process's pace at total/K images); an evaluation shards the validation images over the K
devices, so it costs images x seconds per image of device time whatever K is.
"""
from __future__ import annotations

from dataclasses import dataclass

from ablate import configs
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
               processes: int | None = None) -> Plan:
    """Resolve every run of ``profile`` and estimate its cost.

    Args:
        study: the loaded study.
        profile: profile name.
        sec_per_iter: seconds per iteration to assume for every variant; None: timed, measured
            or the study's value (the module doc gives the order).
        processes: processes per run; None: the study's ``resources.gpus_per_run`` (else 1).
    """
    processes = processes or int(study.resources.get("gpus_per_run") or 1)
    timings = read_timings(study, profile)
    resolved, finished = [], []
    for run in study.runs(profile):
        cfg = configs.resolve(study, run, processes=processes)
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
