"""Worker processes on this machine: one run per slot, the next queued run as soon as a slot frees.

Without GPUs there is one slot, the default device (the CPU on a machine without CUDA), and runs
go one at a time, each worker using every core. With ``gpus=N`` the N visible GPUs are cut into
slots of ``gpus_per_run`` and each worker sees only its slot through ``CUDA_VISIBLE_DEVICES``;
the next queued run starts on the first poll after a slot frees (``ablate run`` polls twice a
second). The local and torchrun launchers each own a :class:`ProcessPool` and differ only in the
command they give it.

Writes ``worker.log`` in each run folder (the worker's stdout and stderr, one header line per
attempt). Workers stay in ``ablate run``'s process group, so a kill of the whole group reaches
them too; a cancelled worker gets SIGTERM (it releases its lock and exits; torchrun forwards the
signal to its processes) and, if it does not heed it, SIGKILL.
"""
from __future__ import annotations

import os
import subprocess
from collections import deque
from dataclasses import dataclass
from typing import Callable, Sequence

from ablate.errors import LaunchError
from ablate.launch.base import RunHandle, RunOutcome, ended
from ablate.runs import Result, Run, folder

Slot = tuple[str, ...] | None  # GPU ids, or None: the default device


@dataclass(frozen=True)
class PoolOptions:
    """Where local workers run."""

    gpus: int = 0  # GPUs in the pool; 0: no pool, one run at a time on the default device
    gpus_per_run: int = 1  # GPUs of one run (torchrun: also its number of processes)
    cpus: int | None = None  # cores shared by the workers that run at once; None: all of them
    gpu_ids: tuple[str, ...] | None = None  # the pool's devices; None: the first `gpus` visible ones


class ProcessHandle(RunHandle):
    """A run in a :class:`ProcessPool`: queued until a slot frees, then a worker process."""

    def __init__(self, run: Run, pool: ProcessPool):
        super().__init__(run)
        self.pool = pool
        self.process: subprocess.Popen | None = None
        self.cancelled = False

    def poll(self) -> RunOutcome | None:
        self.pool.step()
        return self.outcome

    def cancel(self) -> None:
        self.cancelled = True
        if self.process is None and self.outcome is None:
            self.pool.unqueue(self)
        elif self.process is not None and self.process.poll() is None:
            self.process.terminate()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()

    @property
    def waiting(self) -> bool:
        return self.process is None and self.outcome is None


class ProcessPool:
    """Runs ``command(run)`` for each submitted run, at most one per slot.

    Args:
        options: the pool's GPUs and cores.
        command: the worker's command line for a run.
        processes_per_run: processes each command starts (for the cores each one gets).
        label: names the launcher in each attempt's ``worker.log`` header.
    """

    def __init__(self, options: PoolOptions, command: Callable[[Run], list[str]], processes_per_run: int,
                 label: str):
        self.command, self.label = command, label
        if options.gpus:
            ids = list(options.gpu_ids or visible_gpus(options.gpus))
            if len(ids) < options.gpus:
                raise LaunchError(f"--gpus {options.gpus}: only {len(ids)} GPU ids given ({','.join(ids)})")
            k = options.gpus_per_run
            self.slots: list[Slot] = [tuple(ids[i:i + k]) for i in range(0, options.gpus, k)]
        else:
            self.slots = [None]
        self._free: deque[Slot] = deque(self.slots)
        self._queue: deque[ProcessHandle] = deque()
        self._running: dict[ProcessHandle, Slot] = {}
        cores = options.cpus or len(os.sched_getaffinity(0))
        self.threads = max(1, cores // (len(self.slots) * processes_per_run))

    def submit(self, runs: Sequence[Run]) -> list[ProcessHandle]:
        handles = [ProcessHandle(run, self) for run in runs]
        self._queue.extend(handles)
        self.step()
        return handles

    def step(self) -> None:
        """Record the workers that exited and start queued runs on the freed slots."""
        for handle, slot in list(self._running.items()):
            code = handle.process.poll()
            if code is None:
                continue
            del self._running[handle]
            self._free.append(slot)
            if handle.cancelled and not (handle.run.work_dir / Result.FILE).exists():
                handle.outcome = RunOutcome(handle.run, "skipped", note="stopped; the next `ablate run` resumes it")
            else:
                handle.outcome = ended(handle.run, code, handle.run.work_dir / folder.WORKER_LOG)
        while self._queue and self._free:
            self._start(self._queue.popleft(), self._free.popleft())

    def unqueue(self, handle: ProcessHandle) -> None:
        """Take a run that has not started off the queue: it never starts."""
        self._queue.remove(handle)
        handle.outcome = RunOutcome(handle.run, "skipped", note="cancelled before it started")

    def _start(self, handle: ProcessHandle, slot: Slot) -> None:
        env = dict(os.environ, OMP_NUM_THREADS=str(self.threads), PYTHONUNBUFFERED="1")
        # Idle OpenMP threads sleep instead of spinning: on a machine shared with other jobs, spinning
        # threads slowed CPU training ten-fold; alone, sleeping costs next to nothing.
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        if slot is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(slot)
        command = self.command(handle.run)
        log_path = handle.run.work_dir / folder.WORKER_LOG
        with open(log_path, "a") as log:
            where = f"GPUs {','.join(slot)}" if slot else "default device"
            log.write(f"\n=== {folder.now()} ablate {self.label}: {' '.join(command)} ({where})\n")
            log.flush()
            handle.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL, env=env)
        handle.job_id = str(handle.process.pid)
        self._running[handle] = slot


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
