"""A stand-in for ``ablate.train`` that trains nothing, for launcher and orchestration tests.

Reads ``WORK_DIR/fake.json`` (``{"sleep": s, "outcome": "done" | "fail" | "kill" | "exit", "code": n}``),
adopts the run's lock (rank 0, when ``run.json`` names a token), appends one JSON line per process to ``WORK_DIR/fake_calls.jsonl`` (pid, parent pid, rank, world
size, CUDA_VISIBLE_DEVICES, OMP_NUM_THREADS, $FAKE_MARK, whether torch was imported before it
started, multiprocessing's start method, start and end time), writes a line to stdout and one to
stderr, and leaves what the real worker leaves: ``progress.json`` at iteration 3 of 4, ``result.json`` when done, ``failed.json`` on a
failure (rank 0 only). Run as
``python -m fake_worker WORK_DIR`` (local, torchrun) or through ``train(WORK_DIR)`` (submitit).
"""
import json
import multiprocessing
import os
import signal
import sys
import time
from pathlib import Path

from ablate.runs import Progress, Result, RunInfo, folder
from ablate.runs.lock import RunLock


def train(work_dir) -> int:
    work_dir = Path(work_dir)
    spec = json.loads((work_dir / "fake.json").read_text()) if (work_dir / "fake.json").exists() else {}
    rank = int(os.environ.get("RANK", "0"))
    call = {"pid": os.getpid(), "ppid": os.getppid(), "torch": "torch" in sys.modules,
            "start_method": multiprocessing.get_start_method(allow_none=True),
            "mark": os.environ.get("FAKE_MARK"), "rank": rank, "world_size": int(os.environ.get("WORLD_SIZE", "1")),
            "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "omp": os.environ.get("OMP_NUM_THREADS"),
            "start": time.time()}
    _append(work_dir, call)
    print(f"fake worker {rank}: stdout", flush=True)
    print(f"fake worker {rank}: stderr", file=sys.stderr, flush=True)
    if rank == 0:
        info = RunInfo.read(work_dir)
        if info is not None and info.lock_token:  # adopt the run's lock, as the real worker does
            RunLock(work_dir, info.lock_token).acquire()
        Progress(iteration=3, max_iters=4, loss=0.5, eta_s=75.0).write(work_dir)
    time.sleep(float(spec.get("sleep", 0)))
    outcome = spec.get("outcome", "done")
    if outcome == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    call["end"] = time.time()
    _append(work_dir, call)
    if rank != 0:
        return 0
    if outcome == "done":
        Result(miou_best=12.5, miou_last=11.0, best_iter=4, iterations=4, max_iters=4,
               wall_time_s=1.0).write(work_dir)
        return 0
    if outcome == "fail":
        folder.record_failure(work_dir, "ValueError at iteration 3: fake failure", "line 1\nline 2\n", 1)
        return 1
    return int(spec.get("code", 5))


def _append(work_dir: Path, call: dict) -> None:
    with open(work_dir / "fake_calls.jsonl", "a") as f:
        f.write(json.dumps(call) + "\n")


def main(argv: list[str]) -> int:
    return train(argv[0])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
