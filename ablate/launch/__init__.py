"""Launching runs: one small class per backend behind :class:`~ablate.launch.base.Launcher`.

- :mod:`~ablate.launch.local`: this machine, one run at a time or a pool of GPU slots;
- :mod:`~ablate.launch.torchrun`: one run over K processes of this node (gloo on CPUs);
- :mod:`~ablate.launch.slurm`: one submitit job per run, requeued on preemption or timeout;
- :mod:`~ablate.launch.pool`: the process pool the first two share;
- :mod:`~ablate.launch.orchestrate`: what ``ablate run`` does around them (configs, skips,
  locks, config checks, live progress, outcomes), without naming any backend.

Backends are imported when chosen (submitit only for Slurm), so importing this package is cheap.
"""
from __future__ import annotations

import importlib
from typing import Any

from ablate.errors import LaunchError, one_of
from ablate.launch.base import Launcher, RunHandle, RunOutcome
from ablate.runs import JobState, Run, RunInfo, RunState
from ablate.study import Study

# name -> the module and class of the backend
LAUNCHERS = {"local": ("ablate.launch.local", "LocalLauncher"),
             "torchrun": ("ablate.launch.torchrun", "TorchrunLauncher"),
             "slurm": ("ablate.launch.slurm", "SlurmLauncher")}

__all__ = ["LAUNCHERS", "Launcher", "RunHandle", "RunOutcome", "job_state", "launcher_class", "make_launcher",
           "settle"]


def launcher_class(name: str) -> type[Launcher]:
    """The backend class of ``name`` (imports its module)."""
    if name not in LAUNCHERS:
        raise LaunchError(one_of(name, "launcher", LAUNCHERS))
    module, cls = LAUNCHERS[name]
    return getattr(importlib.import_module(module), cls)


def job_state(run: Run, info: RunInfo) -> JobState | None:
    """The scheduler's word on the job a run's ``run.json`` records, asked of the backend that
    launched it (:meth:`Launcher.job_state`); None where no scheduler knows the run."""
    if info.launcher not in LAUNCHERS or not info.job_id:
        return None
    return launcher_class(info.launcher).job_state(run, info)


def settle(state: RunState) -> bool:
    """Record the end of a run's job that ended unseen (:meth:`Launcher.settle` of the backend that
    launched it); True when the run folder changed, so that ``state`` is out of date."""
    job, info = state.job, state.info
    if job is None or job.active or info is None or state.result is not None or info.launcher not in LAUNCHERS:
        return False
    return launcher_class(info.launcher).settle(state.run, info, job)


def make_launcher(
    name: str,
    study: Study,
    gpus: int | None = None,
    gpus_per_run: int | None = None,
    **slurm: Any,
) -> Launcher:
    """The launcher ``name``, set up from the study's ``resources``/``slurm`` sections and flags.

    Args:
        name: one of :data:`LAUNCHERS`.
        study: the study (its ``resources`` and ``slurm`` sections give defaults).
        gpus: size of the local GPU pool (local, torchrun); None or 0: no pool.
        gpus_per_run: GPUs (processes) per run; default the study's ``resources.gpus_per_run``
            (torchrun, slurm) or 1 (local); slurm: 0 runs one process on CPUs only.
        **slurm: :class:`~ablate.launch.slurm.SlurmOptions` fields given on the command line.

    Raises:
        LaunchError: an unknown launcher, or options that do not fit it or this machine.
    """
    cls = launcher_class(name)
    for value, flag in ((gpus, "--gpus"), (gpus_per_run, "--gpus-per-run")):
        least = 0 if flag == "--gpus" or name == "slurm" else 1  # a Slurm job may run on CPUs only
        if value is not None and value < least:
            raise LaunchError(f"{flag} {value}: must be {'0 or more' if least == 0 else 'at least 1'}")
    if name == "slurm":
        from ablate.launch.slurm import SlurmOptions

        if gpus:
            raise LaunchError("--gpus sizes a pool of this machine's GPUs; Slurm jobs take --gpus-per-run")
        return cls(SlurmOptions.from_study(study, gpus_per_run=gpus_per_run, **slurm))
    given = [f"--{k.replace('_', '-')}" for k, v in slurm.items() if v is not None]
    if given:
        raise LaunchError(f"{', '.join(given)}: Slurm options, but the launcher is `{name}`")
    from ablate.launch.pool import PoolOptions

    if name == "local":
        return cls(PoolOptions(gpus=gpus or 0, gpus_per_run=gpus_per_run or 1))
    per_run = gpus_per_run or int(study.resources.get("gpus_per_run") or 1)
    return cls(PoolOptions(gpus=gpus or 0, gpus_per_run=per_run))
