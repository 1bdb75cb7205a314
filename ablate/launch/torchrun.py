"""One run across K processes of this node, through ``torch.distributed.run`` (torchrun).

Each run's worker is ``python -m torch.distributed.run --standalone --nproc-per-node K -m
ablate.train WORK_DIR``; ``--standalone`` gives every run its own rendezvous on a free port, so
several runs can share the node. With ``gpus=N`` the runs share a pool of N/K slots of K GPUs
(:class:`~ablate.launch.pool.ProcessPool`); without GPUs the K processes train on the CPU over
gloo (the worker sets that up), one run at a time.
"""
from __future__ import annotations

import sys
from typing import Sequence

from ablate.errors import LaunchError
from ablate.launch.base import Launcher, RunHandle, worker_command
from ablate.launch.pool import PoolOptions, ProcessPool
from ablate.runs import Run


class TorchrunLauncher(Launcher):
    """Runs each worker as K processes of ``torch.distributed.run`` on this node."""

    name = "torchrun"

    def __init__(self, options: PoolOptions = PoolOptions()):
        if options.gpus_per_run < 1:
            raise LaunchError(f"--gpus-per-run {options.gpus_per_run}: a run needs at least one process")
        if options.gpus and options.gpus % options.gpus_per_run:
            raise LaunchError(f"--gpus {options.gpus} is not a multiple of --gpus-per-run {options.gpus_per_run}")
        self.processes_per_run = options.gpus_per_run
        self.pool = ProcessPool(options, self.command, self.processes_per_run, self.name)

    def command(self, run: Run) -> list[str]:
        """``python -m torch.distributed.run ... -m ablate.train WORK_DIR`` for one run."""
        worker = worker_command(run.work_dir)[1:]  # ["-m", "ablate.train", WORK_DIR]
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
                "--nproc-per-node", str(self.processes_per_run), *worker]

    def submit(self, runs: Sequence[Run]) -> list[RunHandle]:
        return list(self.pool.submit(runs))
