"""Start-up time of the ``ablate`` command and the orchestration overhead of a smoke study.

Usage: ``python benchmarks/cli.py [--repeats N] [--skip-study] [--keep]``.

1. ``ablate --help``: wall time of the whole subprocess (interpreter start included), median of
   ``--repeats``; ``python -c pass`` is timed alongside for the interpreter's own share. Target
   under 0.3 s. When it misses, the largest imports of ``python -X importtime -m ablate.cli
   --help`` are printed.
2. ``ablate report table2 --profile smoke --no-measure``, its default formats (the four tables)
   and ``--format all`` (with the PNG plot, which imports matplotlib), written to a temp folder:
   against the finished smoke runs in ``$ABLATE_WORK_DIR`` (default ``work_dirs``) if there are
   any, else against fake finished runs (a ``result.json`` per run, see ``ablate.runs.records``)
   in a temp work dir. Target under 1 s for the default formats.
3. Unless ``--skip-study`` (four smoke runs: minutes, more on a busy machine): ``ablate run
   table2 --profile smoke`` in a fresh temp work dir, with the synthetic data made beforehand
   (``ablate data synth``, timed apart). The overhead per run is the command's wall time not
   spent inside the runs' training loops (``train_time_s`` of each ``result.json``, which includes
   the evaluations), divided by the number of runs: target under 10 s, which is below 0.1 % of a
   paper run (hours). It is split into the workers' start-up before ``train()`` (from the launch
   line the local launcher writes to ``worker.log`` to the start of ``wall_time_s``: a new
   interpreter's imports), their set-up and wrap-up inside it (``wall_time_s - train_time_s``:
   mmengine's Runner, model, data, result), and the rest, which ``ablate run`` itself spends
   (start-up, configs, launching, polling). Then a second ``ablate run`` of the finished study is
   timed: it trains nothing.

Start-up is given as wall time and as CPU time (user + system of the child, from
``getrusage``): on a machine shared with other work the wall time also counts waiting for a core,
the CPU time hardly does. Bytecode is cached as in an installed tool (``PYTHONPYCACHEPREFIX`` in a
temp folder, filled by one untimed warm-up run), even where ``PYTHONDONTWRITEBYTECODE`` is set.
The script states the machine and the CPU threads torch may use.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUDY, PROFILE = "table2", "smoke"
TARGETS = {"help": 0.3, "report": 1.0, "overhead_per_run_s": 10.0}
WORKER_IMPORTS = ("import torch, mmengine.runner, freqfusion, ablate.train\n"
                  "from mmseg.utils import register_all_modules; register_all_modules()")


def ablate_command() -> list[str]:
    """The installed console script next to this interpreter, else ``python -m ablate.cli``."""
    script = Path(sys.executable).parent / "ablate"
    return [str(script)] if script.exists() else [sys.executable, "-m", "ablate.cli"]


def timed(cmd: list[str], env: dict | None = None, check: bool = True) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one subprocess run from the repository root.

    The CPU time, read from the children's resource usage, is much less sensitive than the wall
    time to other processes competing for the cores."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if check and proc.returncode != 0:
        raise SystemExit(f"`{' '.join(cmd)}` failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu


def median_of(cmds: dict[str, list[str]], repeats: int, env: dict | None = None) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) seconds of each command, interleaved round by round (one untimed warm-up each)."""
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in cmds}
    for cmd in cmds.values():
        timed(cmd, env)  # warm the page cache and .pyc files
    for _ in range(repeats):
        for name, cmd in cmds.items():
            times[name].append(timed(cmd, env))
    return {name: (statistics.median(w for w, _ in t), statistics.median(c for _, c in t))
            for name, t in times.items()}


def slowest_imports(env: dict, n: int = 8) -> list[str]:
    """The ``n`` top-level imports of ``ablate --help`` with the largest cumulative time."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "ablate.cli", "--help"], cwd=ROOT,
                          env=env, capture_output=True, text=True)
    rows = []
    for line in proc.stderr.splitlines():
        parts = line.split("|")
        # "import time: self | cumulative | <depth spaces>name"; top level has one space
        if len(parts) == 3 and parts[1].strip().isdigit() and not parts[2].startswith("  "):
            rows.append((int(parts[1]), parts[2].strip()))
    return [f"{name}: {us / 1e3:.0f} ms" for us, name in sorted(rows, reverse=True)[:n]]


# --- 2. report ---------------------------------------------------------------------------------


def finished_runs(work_root: Path) -> list[Path]:
    return sorted((work_root / STUDY / PROFILE).glob("*/seed*/result.json"))


def write_fake_runs(work_root: Path) -> int:
    """A finished-looking run folder (``result.json`` only) for every run of the smoke profile."""
    from ablate.study import load_study  # light: yaml and dataclasses

    spec = load_study(STUDY)
    runs = spec.runs(PROFILE, work_root=work_root)
    for i, run in enumerate(runs):
        miou = 20.0 + i
        evaluations = [{"iteration": 40, "mIoU": miou, "aAcc": 60.0, "mAcc": 30.0}]
        result = {
            "study": STUDY, "profile": PROFILE, "variant": run.variant, "seed": run.seed,
            "config_hash": "0" * 16, "status": "done", "miou_best": miou, "miou_last": miou,
            "aacc_last": 60.0, "macc_last": 30.0, "best_iter": 40, "evaluations": evaluations,
            "iterations": 40, "max_iters": 40, "wall_time_s": 60.0, "train_time_s": 50.0,
            "resumed_from": None, "finished_at": "2025-01-01T00:00:00+00:00", "chance_miou": 5.0,
        }
        run.work_dir.mkdir(parents=True, exist_ok=True)
        (run.work_dir / "result.json").write_text(json.dumps(result))
    return len(runs)


# --- 3. smoke study ----------------------------------------------------------------------------


def study_overhead(tmp: Path, env: dict) -> dict:
    """Run the smoke study in ``tmp`` and split its wall time (seconds, summed over the runs)."""
    env = {**env, "ABLATE_WORK_DIR": str(tmp / "work_dirs"), "ABLATE_DATA": str(tmp / "data")}
    cmd = ablate_command()
    synth, _ = timed([*cmd, "data", "synth"], env)
    # Untimed: fill the bytecode cache with what a worker imports, as an installed tool has it.
    timed([sys.executable, "-c", WORKER_IMPORTS], env)
    print(f"  synthetic data made in {synth:.1f} s (not counted); running the study ...", flush=True)
    wall, _ = timed([*cmd, "run", STUDY, "--profile", PROFILE, "--no-wandb"], env)
    paths = finished_runs(tmp / "work_dirs")
    if not paths:
        raise SystemExit(f"the smoke study left no result.json in {tmp / 'work_dirs'}")
    rerun, _ = timed([*cmd, "run", STUDY, "--profile", PROFILE, "--no-wandb"], env)
    split = {"runs": len(paths), "wall": wall, "train": 0.0, "in_worker": 0.0, "start_up": 0.0, "rerun": rerun}
    for path in paths:
        result = json.loads(path.read_text())
        split["train"] += result["train_time_s"]
        split["in_worker"] += result["wall_time_s"] - result["train_time_s"]
        # wall_time_s counts from the start of ablate.train's train(); the launcher's header
        # line in worker.log says when the process was started (1 s resolution).
        train_started = path.stat().st_mtime - result["wall_time_s"]
        launched = _launch_time(path.parent / "worker.log")
        split["start_up"] += max(train_started - launched, 0.0) if launched else float("nan")
    return split


def _launch_time(log: Path) -> float | None:
    """When the (last) worker was launched: the ``=== <ISO time> ablate ...`` line of worker.log."""
    from datetime import datetime

    try:
        headers = [line for line in log.read_text().splitlines() if line.startswith("=== ")]
        return datetime.fromisoformat(headers[-1].split()[1]).timestamp()
    except (OSError, IndexError, ValueError):
        return None


# --- main --------------------------------------------------------------------------------------


def machine() -> str:
    from ablate.measure import cpu_model  # light: torch is imported by its measuring functions only

    cpu = cpu_model()
    threads = os.environ.get("OMP_NUM_THREADS") or f"torch default ({os.cpu_count()} cores)"
    return f"{cpu}, {os.cpu_count()} cores; CPU threads: {threads}; Python {platform.python_version()}"


def verdict(value: float, target: float) -> str:
    return "ok" if value < target else "MISSED"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed runs of each start-up command (median)")
    parser.add_argument("--skip-study", action="store_true", help="skip the smoke study (minutes)")
    parser.add_argument("--keep", action="store_true", help="keep the temp folders and print where")
    args = parser.parse_args(argv)
    cmd = ablate_command()
    tmp = Path(tempfile.mkdtemp(prefix="ablate-bench-"))
    # Bytecode as an installed tool has it: cached after the warm-up run (in a temp prefix, so
    # nothing is written into the checkout), even where PYTHONDONTWRITEBYTECODE is set.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(WANDB_MODE="offline", PYTHONPYCACHEPREFIX=str(tmp / "pycache"))
    print(f"machine: {machine()}")
    print(f"command: {' '.join(cmd)}\n")
    rows = []
    try:
        med = median_of({"python -c pass": [sys.executable, "-c", "pass"], "ablate --help": [*cmd, "--help"]},
                        args.repeats, env)
        rows.append(("`python -c pass` (interpreter alone)", med["python -c pass"], None))
        rows.append(("`ablate --help`", med["ablate --help"], TARGETS["help"]))
        work_root = Path(os.environ.get("ABLATE_WORK_DIR", ROOT / "work_dirs"))
        if not work_root.is_absolute():
            work_root = ROOT / work_root
        source = f"{len(finished_runs(work_root))} finished runs in {work_root}"
        if not finished_runs(work_root):
            work_root = tmp / "fake_work_dirs"
            source = f"{write_fake_runs(work_root)} fake finished runs (result.json only) in a temp dir"
        report_env = {**env, "ABLATE_WORK_DIR": str(work_root)}
        base = [*cmd, "report", STUDY, "--profile", PROFILE, "--no-measure", "--out", str(tmp / "reports")]
        med = median_of({"default": base, "all": [*base, "--format", "all"]}, max(3, args.repeats // 2), report_env)
        rows.append((f"`ablate report {STUDY} --profile {PROFILE} --no-measure` (md, csv, tex, json)", med["default"],
                     TARGETS["report"]))
        rows.append(("  the same, `--format all` (adds the PNG plot: matplotlib)", med["all"], None))

        print("| what | median wall s | median CPU s | target | wall / CPU vs target |")
        print("|---|---|---|---|---|")
        for what, (wall, cpu), target in rows:
            goal = f"< {target:g} s" if target else ""
            met = f"{verdict(wall, target)} / {verdict(cpu, target)}" if target else ""
            print(f"| {what} | {wall:.3f} | {cpu:.3f} | {goal} | {met} |")
        print(f"\n{args.repeats} runs each, interleaved; report: {max(3, args.repeats // 2)} runs, {source}.")
        if max(rows[1][1]) >= TARGETS["help"]:
            print("`ablate --help` took longer than its target; largest imports (`python -X importtime`, "
                  "inflated by the instrumentation):")
            for line in slowest_imports(env):
                print(f"  {line}")

        if not args.skip_study:
            print(f"\nsmoke study: `ablate run {STUDY} --profile {PROFILE}` in {tmp}")
            s = study_overhead(tmp / "study", env)
            per_run = (s["wall"] - s["train"]) / s["runs"]
            rest = s["wall"] - s["train"] - s["in_worker"] - (s["start_up"] if s["start_up"] == s["start_up"] else 0)
            print("| smoke study | s | share of wall |")
            print("|---|---|---|")
            rows = [(f"command wall time ({s['runs']} runs)", s["wall"]),
                    ("inside the training loops (sum of train_time_s; evaluations included)", s["train"]),
                    ("workers: launch to train(): the interpreter and its imports", s["start_up"]),
                    ("workers: Runner, model and data set-up, result (wall_time_s - train_time_s)",
                     s["in_worker"]),
                    ("`ablate run` itself: CLI start-up, configs, launching and polling", rest)]
            for what, value in rows:
                print(f"| {what} | {value:.1f} | {value / s['wall']:.1%} |")
            print(f"\noverhead per run (wall - train) / runs: {per_run:.1f} s (target < "
                  f"{TARGETS['overhead_per_run_s']:g} s: {verdict(per_run, TARGETS['overhead_per_run_s'])}), "
                  f"beside a training loop of {s['train'] / s['runs']:.1f} s")
            print(f"a second `ablate run` of the finished study (trains nothing): {s['rerun']:.1f} s")
    finally:
        if args.keep:
            print(f"\nkept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
