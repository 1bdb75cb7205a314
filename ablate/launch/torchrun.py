"""One run across K processes of this node, through ``torch.distributed.run`` (torchrun).

Each run's worker is ``python -m torch.distributed.run --standalone --nproc-per-node K -m
ablate.train WORK_DIR``; ``--standalone`` gives every run its own rendezvous on a free port, so
several runs can share the node. With ``gpus=N`` the runs share a pool of N/K slots of K GPUs, as
in :mod:`ablate.launch.local`; without GPUs the K processes train on the CPU over gloo (the worker
sets that up), one run at a time. Writes what the local launcher writes.
"""
from __future__ import annotations

import sys

from ablate.errors import LaunchError
from ablate.launch import base
from ablate.launch.local import LocalLauncher, PoolOptions
from ablate.study import Run


class TorchrunLauncher(LocalLauncher):
    """Runs each worker as K processes of ``torch.distributed.run`` on this node."""

    name = "torchrun"
    preloaded = False  # torchrun starts the processes itself

    def __init__(self, options: PoolOptions = PoolOptions()):
        self.processes_per_run = options.gpus_per_run
        super().__init__(options)

    def _check(self, options: PoolOptions) -> None:
        if options.gpus_per_run < 1:
            raise LaunchError(f"--gpus-per-run {options.gpus_per_run}: a run needs at least one process")
        if options.gpus and options.gpus % options.gpus_per_run:
            raise LaunchError(f"--gpus {options.gpus} is not a multiple of --gpus-per-run {options.gpus_per_run}")

    def command(self, run: Run) -> list[str]:
        worker = base.worker_command(run.work_dir)[1:]  # ["-m", "ablate.train", WORK_DIR]
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
                "--nproc-per-node", str(self.processes_per_run), *worker]
