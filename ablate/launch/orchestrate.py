"""``ablate run``: a study's runs, from resolved configs to finished, evaluated runs.

Reads the study and each run folder (``result.json``, ``run.json``, ``lock``, checkpoints,
``config.py``). Before a launch it takes the run's lock and writes ``config.py`` (resolved) and
``run.json`` (config hash, launcher, lock token); the worker and the launcher write the rest (see
CONTRACTS.md). Returns one :class:`~ablate.launch.base.RunOutcome` per run and leaves exit codes
to the CLI; the only output is live progress on a console, when one is given.

What happens to a run (:func:`plan_runs`), first rule that applies:

1. its folder holds training (a checkpoint or a result) from a config whose keys differ from the
   config resolved now: ``conflict``, refused with the changed keys; with ``restart`` it is
   ``restart``: the folder is emptied and the run trained again. Keys that cannot change a result
   (logging, visualisation, the folder's own path) do not count;
2. ``result.json``: ``done``, skipped;
3. an earlier ``--detach`` left its Slurm job queued or running: ``queued``; ``ablate run`` with
   the same launcher waits for it, anything else leaves it alone;
4. a live process holds its lock: ``locked``, skipped;
5. a complete checkpoint: ``resume`` from it; else ``start``.
"""
from __future__ import annotations

import os
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ablate import configs
from ablate.errors import LaunchError
from ablate.launch import rundir
from ablate.launch.base import Launcher, RunHandle, RunOutcome
from ablate.launch.lock import LockHeld, RunLock, live_holder, new_token
from ablate.study import Run, Study

POLL_S = 0.5
# Keys that change logs or paths but not what a run computes: changing them does not stop a resume.
NEUTRAL_KEYS = ("work_dir", "ablate", "visualizer", "vis_backends", "log_level", "log_processor",
                "default_hooks.logger", "default_hooks.visualization")
LAUNCHED = ("start", "resume", "restart")


@dataclass
class PlannedRun:
    """What ``ablate run`` will do with one run, and why."""

    run: Run
    action: str  # start | resume | restart | done | queued | locked | conflict
    digest: str | None  # hash of the config resolved now; None where nothing ran yet (hashed when written)
    cfg: Any = field(repr=False, default=None)
    note: str = ""  # resume point, lock holder, job state, changed keys
    changed: list[str] = field(default_factory=list)
    info: dict | None = None  # the folder's run.json
    discard: bool = False  # whether the folder is emptied before the launch


def data_root_for(study: Study, profile: str, data_root: str | os.PathLike | None, create: bool = True) -> Path:
    """The dataset root of a profile's runs.

    Args:
        study: the study.
        profile: its profile; ``data: synthetic`` makes the smoke dataset when missing.
        data_root: ``--data-root``; required by ``data: required`` profiles.
        create: whether a missing synthetic dataset is made now (not for ``--dry-run``).

    Raises:
        LaunchError: no data root where one is required, or one without ADE20K's folders.
    """
    from ablate.data import synthetic

    if data_root is not None:
        root = Path(data_root)
        missing = [d for d in ("images/training", "images/validation", "annotations/training",
                               "annotations/validation") if not (root / d).is_dir()]
        if missing:
            raise LaunchError(f"--data-root {root}: not a dataset in ADE20K's layout ({', '.join(missing)} "
                              f"missing); `ablate data check --data-root {root}` says more")
        return root
    if study.profile(profile).data == "synthetic":
        root = synthetic.default_root()
        return synthetic.ensure_synthetic(root) if create else root
    raise LaunchError(f"profile `{profile}` trains on real data: give --data-root DIR, the ADEChallengeData2016 "
                      "folder with images/ and annotations/ (`ablate data check --data-root DIR` checks it)")


def plan_runs(
    study: Study,
    runs: Sequence[Run],
    data_root: Path,
    restart: bool = False,
    overrides: dict[str, Any] | Callable[[Run, Any], dict[str, Any]] | None = None,
) -> list[PlannedRun]:
    """Resolve each run's config and decide what to do with it (the rules in the module doc).

    Args:
        study: the study.
        runs: runs of one profile (``study.runs(...)``).
        data_root: dataset root for every dataloader.
        restart: whether runs whose config changed are trained again (else they are conflicts).
        overrides: extra dotted config keys for every run, or ``f(run, cfg)`` returning them per run
            (``--wandb``: :func:`ablate.tracking.overrides_for` adds a vis backend).
    """
    planned = []
    for run in runs:
        cfg = configs.resolve(study, run, data_root=data_root)
        if overrides:
            cfg.merge_from_dict(dict(overrides(run, cfg) if callable(overrides) else overrides))
        planned.append(_decide(run, cfg, restart))
    return planned


def _decide(run: Run, cfg, restart: bool) -> PlannedRun:
    work_dir = run.work_dir
    info = rundir.read(work_dir, rundir.RUN_INFO)
    result = rundir.read(work_dir, rundir.RESULT)
    checkpoint = rundir.latest_checkpoint(work_dir) if work_dir.is_dir() else None
    recorded = (result or {}).get("config_hash") or (info or {}).get("config_hash")
    if recorded is None:
        digest = None  # nothing to compare with; config.py's text is formatted when it is written
    elif (info or {}).get("config_key") == configs.content_key(cfg):
        digest = recorded  # the content it was prepared with: no need to format its text again
    else:
        digest = configs.text_hash(configs.config_text(cfg))
    plan = PlannedRun(run, "start", digest, cfg, info=info)
    if recorded is not None and recorded != digest:
        changed = _changed_keys(work_dir, cfg)
        if changed and (checkpoint or result):
            plan.action, plan.changed, plan.discard = "restart" if restart else "conflict", changed, True
            plan.note = "config changed: " + ", ".join(changed)
            return plan
        if changed:  # nothing resumable was made with the old config
            plan.discard, plan.note = True, "config changed; nothing to resume, starting afresh"
            return plan
    if result is not None:
        plan.action, plan.note = "done", _result_note(result)
        return plan
    if info and info.get("launcher") == "slurm" and info.get("job_id"):
        from ablate.launch.slurm import job_state  # lazy: submitit, only for runs that went to Slurm

        state = job_state(run, info)
        if state is not None:
            plan.action, plan.note = "queued", f"job {info['job_id']} is {state.lower()}"
            return plan
    holder = live_holder(work_dir)
    if holder is not None:
        plan.action, plan.note = "locked", f"running: lock held by {holder}"
        return plan
    if checkpoint is not None:
        plan.action, plan.note = "resume", f"from iteration {checkpoint[1]}"
    return plan


def _changed_keys(work_dir: Path, cfg) -> list[str]:
    """Keys whose values differ between the config the run started with and ``cfg``.

    The run started with ``config.py``; if something rewrote that file since (its hash is not the
    recorded one), mmengine's dump of what ran (``runtime_config.py``) is compared instead.
    """
    from mmengine.config import Config

    info = rundir.read(work_dir, rundir.RUN_INFO) or {}
    candidates = [work_dir / rundir.CONFIG, work_dir / "runtime_config.py"]
    runtime_only = ("resume", "load_from", "launcher", "model_wrapper_cfg", "env_cfg.dist_cfg")
    for path in candidates:
        try:
            text = path.read_text()
            if path.name == rundir.CONFIG and configs.text_hash(text) != info.get("config_hash"):
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                old = Config.fromfile(str(path), import_custom_modules=False)
        except Exception:  # noqa: BLE001 - missing or unreadable: try the next, else say so below
            continue
        ignore = NEUTRAL_KEYS + (runtime_only if path.name != rundir.CONFIG else ())
        return [key for key, _, _ in configs.diff(old, cfg, ignore=ignore)]
    return ["(the config it started with is gone; which keys changed is unknown)"]


def _result_note(result: dict) -> str:
    best, last = result.get("miou_best"), result.get("miou_last")
    if isinstance(best, (int, float)) and isinstance(last, (int, float)):
        return f"mIoU best {best:.2f}, last {last:.2f}"
    return "finished"


def conflict_message(planned: Sequence[PlannedRun]) -> str:
    """The error for runs whose config changed since they started (one line per run)."""
    lines = [f"{p.run.key}: config changed since this run started ({', '.join(p.changed)}); "
             f"refusing to resume it" for p in planned]
    lines.append("--restart discards these runs and trains them again with the new config")
    return "\n".join(lines)


def run_study(
    study: Study,
    runs: Sequence[Run],
    launcher: Launcher,
    data_root: Path,
    restart: bool = False,
    detach: bool = False,
    overrides: dict[str, Any] | Callable[[Run, Any], dict[str, Any]] | None = None,
    console=None,
) -> list[RunOutcome]:
    """Train and evaluate every run that is not done yet; one outcome per run, in ``runs`` order.

    Args:
        study: the study.
        runs: runs of one profile.
        launcher: the backend that starts the workers.
        data_root: dataset root (see :func:`data_root_for`).
        restart: discard runs whose config changed instead of refusing them.
        detach: submit and return at once (launchers that outlive this process only).
        overrides: extra dotted config keys for every run (see :func:`plan_runs`).
        console: a rich console for live progress, or None for none.

    Raises:
        LaunchError: changed configs without ``restart``, ``detach`` on a launcher that cannot,
            or a launch the backend refuses.
    """
    if detach and not launcher.can_detach:
        raise LaunchError(f"--detach needs a launcher whose jobs outlive `ablate run` (slurm), not `{launcher.name}`")
    planned = plan_runs(study, runs, data_root, restart, overrides)
    conflicts = [p for p in planned if p.action == "conflict"]
    if conflicts:
        raise LaunchError(conflict_message(conflicts))
    outcomes: dict[Run, RunOutcome] = {}
    attached: list[RunHandle] = []
    for p in planned:
        if p.action == "done":
            outcomes[p.run] = RunOutcome(p.run, "skipped", note=f"done earlier ({p.note})",
                                         result=rundir.read(p.run.work_dir, rundir.RESULT))
        elif p.action == "locked":
            outcomes[p.run] = RunOutcome(p.run, "skipped", note=p.note)
        elif p.action == "queued":
            handle = None if detach else launcher.attach(p.run, p.info or {})
            if handle is None:
                outcomes[p.run] = RunOutcome(p.run, "skipped", note=p.note)
            else:
                attached.append(handle)
    launched = [p for p in planned if p.action in LAUNCHED]
    if launched:
        launcher.warm_up()  # e.g. the local launcher's preloaded server imports while configs are written
    locks = _prepare(launched, launcher, outcomes, console)
    try:
        handles = launcher.submit([p.run for p in planned if p.run in locks]) if locks else []
        for handle in handles:
            if handle.job_id and launcher.can_detach:
                info = rundir.read(handle.run.work_dir, rundir.RUN_INFO) or {}
                rundir.write(handle.run.work_dir, rundir.RUN_INFO, {**info, "job_id": handle.job_id})
        if detach:
            for handle in handles:
                outcomes[handle.run] = RunOutcome(handle.run, "submitted", note=f"job {handle.job_id}")
            return [outcomes[r] for r in runs]
        outcomes.update(monitor(launcher, attached + handles, console))
    finally:
        for lock in locks.values():
            lock.release()  # the worker's lock, too: it carries the same token
    return [outcomes[r] for r in runs]


def _prepare(planned: Sequence[PlannedRun], launcher: Launcher, outcomes: dict, console) -> dict[Run, RunLock]:
    """Lock each run, empty it when it is discarded, write config.py and run.json."""
    locks = {}
    for p in planned:
        lock = RunLock(p.run.work_dir, new_token())
        try:
            stale = lock.acquire()
        except LockHeld as exc:
            outcomes[p.run] = RunOutcome(p.run, "skipped", note=f"running: {exc}")
            continue
        if stale is not None and console is not None:
            console.print(f"[yellow]warning:[/] {p.run.key}: took over the stale lock of {stale} (not running)")
        if p.discard:
            rundir.discard(p.run.work_dir)
        (p.run.work_dir / rundir.FAILED).unlink(missing_ok=True)
        digest = configs.dump(p.cfg, p.run.work_dir / rundir.CONFIG)
        info = {"config_hash": digest, "config_key": configs.content_key(p.cfg), "started_at": rundir.now(),
                "launcher": launcher.name, "job_id": None, "host": socket.gethostname(),
                "world_size": launcher.processes_per_run, "lock_token": lock.token, **launcher.run_info()}
        rundir.write(p.run.work_dir, rundir.RUN_INFO, info)
        locks[p.run] = lock
    return locks


def monitor(launcher: Launcher, handles: Sequence[RunHandle], console=None) -> dict[Run, RunOutcome]:
    """Poll ``handles`` until each has ended; show one live line per active run on ``console``.

    Ctrl-C (or any exception) cancels the runs still going, which stay resumable, and re-raises.
    """
    since = time.time()
    pending, outcomes = list(handles), {}
    live = _live(console)
    try:
        with live:
            while pending:
                for handle in list(pending):
                    outcome = launcher.poll(handle)
                    if outcome is not None:
                        pending.remove(handle)
                        outcomes[handle.run] = outcome
                        if console is not None:
                            console.print(describe(outcome))
                if pending:
                    live.update(_progress_lines(pending, since))
                    time.sleep(POLL_S)
    except BaseException:
        for handle in pending:
            launcher.cancel(handle)
        raise
    return outcomes


def _live(console):
    if console is None or not console.is_terminal:
        return _NoLive()
    from rich.live import Live

    return Live(console=console, refresh_per_second=2, transient=True)


class _NoLive:
    """Stands in for rich's Live where nothing is shown (no console, or not a terminal)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, renderable) -> None:
        pass


def _progress_lines(pending: Sequence[RunHandle], since: float):
    """One line per active run (variant/seed, iteration/total, loss, ETA) and a count of waiting ones."""
    from rich.console import Group
    from rich.text import Text

    lines, waiting = [], 0
    for handle in pending:
        path = handle.run.work_dir / rundir.PROGRESS
        progress = rundir.read(handle.run.work_dir, rundir.PROGRESS) if _mtime(path) >= since else None
        if progress is None:  # this attempt has not written yet
            waiting += 1
            continue
        loss = progress.get("loss")
        line = Text(f"{handle.run.key:<24} {progress.get('iteration', 0):>6}/{progress.get('max_iters', '?'):<6} ")
        line.append(f"loss {loss:.3f}  " if isinstance(loss, (int, float)) else "loss -      ")
        line.append(f"ETA {rundir.elapsed(progress.get('eta_s'))}", style="dim")
        lines.append(line)
    if waiting:
        lines.append(Text(f"{waiting} run{'s' * (waiting > 1)} starting or queued", style="dim"))
    return Group(*lines)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def describe(outcome: RunOutcome) -> str:
    """One rich-markup line for an outcome."""
    from rich.markup import escape

    key = escape(outcome.run.key)
    if outcome.status == "done" and outcome.result:
        r = outcome.result
        return (f"[green]done[/]      {key}  mIoU best {r['miou_best']:.2f} (iteration {r.get('best_iter')}), "
                f"last {r['miou_last']:.2f}  [dim]{rundir.elapsed(r.get('wall_time_s'))}[/]")
    if outcome.status == "failed":
        return f"[red]failed[/]    {key}: {escape(outcome.error or '')}  [dim]{outcome.work_dir}/failed.json[/]"
    return f"[yellow]{outcome.status:<9}[/] {key}: {escape(outcome.note)}"


def status_rows(study: Study, profile: str, work_root: str | os.PathLike | None = None) -> list[dict]:
    """:func:`ablate.collect.collect`'s rows (no measurements), completed from unfinished runs' progress.

    Adds ``note`` to every row and, for runs without a result, ``wall_time_s``, ``miou_best`` and
    ``miou_last`` from the evaluations that ``progress.json`` holds so far.
    """
    from ablate.collect import collect

    rows = collect(study, profile, work_root=work_root, measure=False)
    for row in rows:
        row["note"] = ""
        if row["status"] == "done":
            continue
        work_dir = Path(row["work_dir"])
        progress = rundir.read(work_dir, rundir.PROGRESS) or {}
        evaluations = progress.get("evaluations") or []
        if evaluations:
            row["miou_best"] = max(e["mIoU"] for e in evaluations)
            row["miou_last"] = max(evaluations, key=lambda e: e["iteration"])["mIoU"]
        row["wall_time_s"] = progress.get("wall_time_s")
        if row["status"] == "running" and progress.get("eta_s") is not None:
            row["note"] = f"ETA {rundir.elapsed(progress['eta_s'])}"
        elif row["status"] == "pending":
            info = rundir.read(work_dir, rundir.RUN_INFO) or {}
            if info.get("launcher") == "slurm" and info.get("job_id"):
                from ablate.launch.slurm import job_state  # lazy: submitit

                run = Run(study.name, profile, row["variant"], row["seed"], work_dir)
                state = job_state(run, info)
                row["note"] = f"job {info['job_id']} {state.lower()}" if state else ""
            elif (checkpoint := rundir.latest_checkpoint(work_dir)) is not None:
                row["note"] = f"resumes from iteration {checkpoint[1]}"
    return rows
