"""Runs on this machine, one worker process per run: one after another, or on a pool of GPU slots.

Each worker is a fresh ``python -m ablate.train WORK_DIR`` (:func:`~ablate.launch.base.worker_command`)
in a :class:`~ablate.launch.pool.ProcessPool`, which says how runs share the GPUs and cores.
"""
from __future__ import annotations

from typing import Sequence

from ablate.errors import LaunchError
from ablate.launch.base import Launcher, RunHandle, worker_command
from ablate.launch.pool import PoolOptions, ProcessPool
from ablate.runs import Run


class LocalLauncher(Launcher):
    """Runs each worker as one child process: sequentially, or on a pool of GPU slots."""

    name = "local"

    def __init__(self, options: PoolOptions = PoolOptions()):
        if options.gpus_per_run != 1:
            raise LaunchError(f"--gpus-per-run {options.gpus_per_run}: the local launcher runs one process per "
                              "run; use --launcher torchrun (or slurm) for several GPUs per run")
        self.pool = ProcessPool(options, lambda run: worker_command(run.work_dir), 1, self.name)

    def submit(self, runs: Sequence[Run]) -> list[RunHandle]:
        return list(self.pool.submit(runs))
