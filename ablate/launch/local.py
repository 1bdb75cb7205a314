"""Runs on this machine: one after another, or on a pool of GPU slots.

Without GPUs, runs go one at a time on the default device (the CPU on a machine without CUDA),
each worker using every core. With ``gpus=N`` the N visible GPUs are cut into slots of
``gpus_per_run`` and each worker sees only its slot through ``CUDA_VISIBLE_DEVICES``; the next
queued run starts as soon as a slot frees (on the next :meth:`~LocalLauncher.poll`, which
``ablate run`` calls twice a second).

Each worker is forked from a server that has imported torch, mmengine, mmseg and freqfusion
once (:mod:`ablate.launch.preload`), which saves seconds per run; ``ABLATE_PRELOAD=0`` starts
each as a fresh ``python -m ablate.train`` instead, as the torchrun launcher always does.

Writes ``worker.log`` in each run folder (the worker's stdout and stderr, appended per attempt).
Workers stay in ``ablate run``'s process group, so Ctrl-C, or a kill of the whole group, reaches
them too.
"""
from __future__ import annotations

import os
import subprocess
from collections import deque
from dataclasses import dataclass
from typing import Sequence

from ablate.errors import LaunchError
from ablate.launch import base, preload, rundir
from ablate.launch.base import Launcher, RunHandle, RunOutcome, ended, worker_command
from ablate.study import Run

CANCEL_GRACE_S = 10.0


@dataclass(frozen=True)
class PoolOptions:
    """Where local workers run."""

    gpus: int = 0  # GPUs in the pool; 0: no pool, one run at a time on the default device
    gpus_per_run: int = 1  # GPUs of one run (torchrun: also its number of processes)
    cpus: int | None = None  # cores shared by the workers that run at once; None: all of them
    gpu_ids: tuple[str, ...] | None = None  # the pool's devices; None: the first `gpus` visible ones


class LocalLauncher(Launcher):
    """Runs workers as child processes: sequentially, or on a pool of GPU slots."""

    name = "local"
    preloaded = True  # whether workers are forked from the preloaded server (when preload.enabled())

    def __init__(self, options: PoolOptions = PoolOptions()):
        self.options = options
        self._check(options)
        if options.gpus:
            ids = list(options.gpu_ids or visible_gpus(options.gpus))
            if len(ids) < options.gpus:
                raise LaunchError(f"--gpus {options.gpus}: only {len(ids)} GPU ids given ({','.join(ids)})")
            k = options.gpus_per_run
            self.slots: list[tuple[str, ...] | None] = [tuple(ids[i:i + k]) for i in range(0, options.gpus, k)]
        else:
            self.slots = [None]
        self._free = deque(self.slots)
        self._queue: deque[RunHandle] = deque()
        self._running: dict[RunHandle, tuple[str, ...] | None] = {}
        cores = options.cpus or len(os.sched_getaffinity(0))
        self.threads = max(1, cores // (len(self.slots) * self.processes_per_run))

    def _check(self, options: PoolOptions) -> None:
        if options.gpus_per_run != 1:
            raise LaunchError(f"--gpus-per-run {options.gpus_per_run}: the local launcher runs one process per "
                              "run; use --launcher torchrun (or slurm) for several GPUs per run")

    def forks_workers(self) -> bool:
        """Whether workers are forked from the preloaded server (``ABLATE_PRELOAD`` may say no)."""
        return self.preloaded and preload.enabled()

    def warm_up(self) -> None:
        if self.forks_workers():
            preload.start_server()  # it imports in the background while ablate run writes the configs

    def command(self, run: Run) -> list[str]:
        """The command line of one run's worker."""
        return worker_command(run.work_dir)

    def submit(self, runs: Sequence[Run]) -> list[RunHandle]:
        handles = [RunHandle(run) for run in runs]
        self._queue.extend(handles)
        self._start_queued()
        return handles

    def poll(self, handle: RunHandle) -> RunOutcome | None:
        self._reap()
        self._start_queued()
        return handle.outcome

    def cancel(self, handle: RunHandle) -> None:
        if handle in self._queue:
            self._queue.remove(handle)
            handle.outcome = RunOutcome(handle.run, "skipped", note="cancelled before it started")
            return
        process = handle.native
        if process is None or process.poll() is not None:
            return
        process.terminate()  # the worker releases its lock; torchrun forwards the signal
        try:
            process.wait(CANCEL_GRACE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if handle in self._running:
            self._free.append(self._running.pop(handle))
        handle.outcome = RunOutcome(handle.run, "skipped", note="cancelled; it resumes on the next `ablate run`")

    def _start_queued(self) -> None:
        while self._queue and self._free:
            handle, slot = self._queue.popleft(), self._free.popleft()
            self._start(handle, slot)

    def _start(self, handle: RunHandle, slot: tuple[str, ...] | None) -> None:
        work_dir = handle.run.work_dir
        env = dict(os.environ, OMP_NUM_THREADS=str(self.threads), PYTHONUNBUFFERED="1")
        # Idle OpenMP threads sleep instead of spinning: on a machine shared with other jobs, spinning
        # threads slowed CPU training ten-fold; alone, sleeping costs next to nothing.
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        if slot is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(slot)
        where = f"GPUs {','.join(slot)}" if slot else "default device"
        forked = self.forks_workers()
        how = "forked from the preloaded server" if forked else "a new process"
        log_path = work_dir / rundir.WORKER_LOG
        with open(log_path, "a") as log:
            log.write(f"\n=== {rundir.now()} ablate {self.name}: {' '.join(self.command(handle.run))} "
                      f"({where}; {how})\n")
            log.flush()
            if forked:
                handle.native = preload.start(work_dir, log_path, env, base.WORKER)
            else:
                handle.native = subprocess.Popen(self.command(handle.run), stdout=log, stderr=subprocess.STDOUT,
                                                 stdin=subprocess.DEVNULL, env=env)
        handle.job_id = str(handle.native.pid)
        self._running[handle] = slot

    def _reap(self) -> None:
        for handle, slot in list(self._running.items()):
            code = handle.native.poll()
            if code is None:
                continue
            del self._running[handle]
            self._free.append(slot)
            handle.outcome = ended(handle.run, code, handle.run.work_dir / rundir.WORKER_LOG)


def visible_gpus(wanted: int) -> list[str]:
    """The ids of ``wanted`` visible CUDA devices (as ``CUDA_VISIBLE_DEVICES`` names them).

    Raises:
        LaunchError: no CUDA, or fewer devices visible than wanted.
    """
    import torch  # lazy: only --gpus needs it

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise LaunchError(f"--gpus {wanted}: no CUDA device is visible here (torch.cuda.is_available() is "
                          "False); leave --gpus out to run on the CPU")
    if wanted > count:
        raise LaunchError(f"--gpus {wanted}: only {count} CUDA device{'s' * (count > 1)} visible")
    named = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [x.strip() for x in named.split(",") if x.strip()] if named else [str(i) for i in range(count)]
    return ids[:wanted]
