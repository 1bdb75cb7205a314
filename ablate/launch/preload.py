"""Preloaded workers: local runs forked from a process that has already imported what they need.

A worker started as ``python -m ablate.train`` spends about 3 s importing torch, mmengine, mmseg
and freqfusion before it trains, and its first optimizer and visualizer 2 s more (they import
``torch._dynamo`` and matplotlib): a sixth of a 35-second smoke run. ``ablate run`` therefore
starts multiprocessing's *forkserver* once, with :func:`warm_up` as its preload, as soon as it
knows that it has runs to launch (the server imports while the run folders are prepared), and
forks each local worker from it; a fork takes milliseconds. The child becomes what a fresh
``python -m ablate.train WORK_DIR`` would be: the environment the launcher gives it, its output
appended to ``worker.log``, stdin from ``/dev/null``, no multiprocessing start method chosen yet,
``ablate.train.main``'s exit status, and its ``atexit`` handlers run before it exits (W&B's, for
one). As with any multiprocessing start method but fork, the child first imports the parent's
main module under another name: a script that calls :func:`ablate.launch.orchestrate.run_study`
must guard that call with ``if __name__ == "__main__":`` (the ``ablate`` command does).

The server must not have started anything a fork cannot carry: CUDA (a forked child cannot
use a context its parent made, and mmengine asks CUDA about its devices on import) or OpenMP
threads. Importing does neither, except that mmengine's device query initialises CUDA on a CUDA
or ROCm build of torch: with such a build the server preloads only torch and leaves the rest to
each child. ``ABLATE_PRELOAD=0`` turns preloading off (a fresh interpreter per worker, as the
torchrun and Slurm launchers always do).
"""
from __future__ import annotations

import atexit
import importlib
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

ENV_SWITCH = "ABLATE_PRELOAD"
_context = None


def enabled() -> bool:
    """Whether local workers are forked from a preloaded server (``ABLATE_PRELOAD`` is not 0)."""
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def warm_up() -> None:
    """Import what a worker imports; the forkserver runs this once (importing ``ablate.launch.warm``)."""
    # Read by OpenMP when torch loads it, so it must be set here, not in the child; the local
    # launcher sets the same default for fresh workers.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    if torch.version.cuda is not None or torch.version.hip is not None:
        return  # see the module doc: mmengine's import would initialise CUDA here
    from ablate import compat

    compat.apply()  # before mmseg
    import matplotlib.pyplot  # noqa: F401  (mmengine's visualizer)
    import mmengine.runner  # noqa: F401
    import torch._dynamo  # noqa: F401  (the first optimizer step imports it)
    from mmseg.utils import register_all_modules

    import ablate.train  # noqa: F401
    import freqfusion  # noqa: F401

    register_all_modules(init_default_scope=False)
    # An optimizer's first construction and step wrap its methods for torch._dynamo (0.5 s); the
    # wrappers are cached on the functions, so one tiny step here serves every child.
    weight = torch.nn.Parameter(torch.zeros(1))
    weight.grad = torch.zeros(1)
    torch.optim.AdamW([weight]).step()


def start_server() -> None:
    """Start the preloaded server if it is not running; it warms up in the background."""
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(["ablate.launch.warm"])  # its import runs warm_up()
    from multiprocessing import forkserver

    forkserver.ensure_running()


def start(work_dir: Path, log: Path, env: dict[str, str], worker: str) -> "PreloadedWorker":
    """Fork the worker of the run in ``work_dir`` from the preloaded server (started on first use).

    Args:
        work_dir: the run folder.
        log: the file that gets the worker's output (appended).
        env: the worker's whole environment.
        worker: the worker module (:data:`ablate.launch.base.WORKER`); the child calls its
            ``main([WORK_DIR])`` and exits with what that returns.
    """
    start_server()
    process = _context.Process(target=_worker_main, args=(worker, str(work_dir), str(log), env),
                               name=f"ablate.train {work_dir}")
    process.start()
    return PreloadedWorker(process)


class PreloadedWorker:
    """A forked worker behind the part of ``subprocess.Popen`` the local launcher uses."""

    def __init__(self, process: multiprocessing.process.BaseProcess):
        self.process = process
        self.pid = process.pid

    def poll(self) -> int | None:
        return self.process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self.process.join(timeout)
        if self.process.exitcode is None:
            raise subprocess.TimeoutExpired(self.process.name, timeout)
        return self.process.exitcode

    def terminate(self) -> None:
        self.process.terminate()

    def kill(self) -> None:
        self.process.kill()


def _worker_main(worker: str, work_dir: str, log: str, env: dict[str, str]) -> None:
    """The forked child: become ``python -m WORKER WORK_DIR`` with ``env`` and ``log``."""
    os.environ.clear()
    os.environ.update(env)
    with open(log, "ab", buffering=0) as out, open(os.devnull, "rb") as null:
        os.dup2(null.fileno(), 0)
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=True)
    multiprocessing.set_start_method(None, force=True)  # unset, as in a fresh interpreter (mmengine sets it)
    threads = env.get("OMP_NUM_THREADS")
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    module = importlib.import_module(worker)
    sys.argv = [module.__file__, work_dir]
    try:
        code = module.main([work_dir])
    finally:
        atexit._run_exitfuncs()  # multiprocessing ends the child with os._exit, which skips them
    sys.exit(code)
