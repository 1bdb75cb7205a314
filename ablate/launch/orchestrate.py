"""``ablate run``: a study's runs, from resolved configs to finished, evaluated runs.

Reads each run folder through :func:`ablate.runs.read_state`. Before a launch it takes the run's
lock and writes ``config.py`` (resolved) and ``run.json`` (config hash and key, launcher, lock
token, data root, ``--set`` overrides); the worker and the launcher write the rest (see :mod:`ablate.runs`). Returns
one :class:`~ablate.launch.base.RunOutcome` per run and leaves exit codes to the CLI; the only
output is progress on a console, when one is given. No backend is named here: a launcher's
handles answer for their runs, and :func:`ablate.launch.job_state` asks the backend that
launched a detached run.

What happens to a run (:func:`decide`), first rule that applies:

1. its folder holds training (a checkpoint or a result) from a config whose keys differ from the
   config resolved now: ``conflict``, refused with the changed keys; with ``restart`` it is
   ``restart``: the folder is emptied and the run trained again. Keys that cannot change a result
   (logging, visualisation, the folder's own path: :data:`ablate.configs.NEUTRAL_KEYS`) do not
   count. The config the training was made with is the key ``run.json``/``result.json`` record,
   else ``runtime_config.py`` or ``config.py`` in the folder; with none of them readable the run
   is a conflict too, since nothing says what it trained with;
2. ``result.json``: ``done``, skipped;
3. an earlier ``--detach`` left its job queued or running: ``queued``; ``ablate run`` with the
   same launcher waits for it, anything else leaves it alone;
4. a live process holds its lock: ``locked``, skipped;
5. a complete checkpoint: ``resume`` from it; else ``start``.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ablate import configs
from ablate.display import duration
from ablate.errors import LaunchError
from ablate.launch import job_state, settle
from ablate.launch.base import Launcher, RunHandle, RunOutcome
from ablate.runs import Failure, Progress, RecordError, Result, Run, RunInfo, RunState, folder, read_state
from ablate.runs.lock import LAUNCHER, LockHeld, RunLock, new_token
from ablate.study import Study

POLL_S = 0.5
PROGRESS_EVERY_S = 60.0  # plain progress lines (not a terminal): at least one a minute per active run
CANCEL_GRACE_S = 10.0  # a stopped worker gets this long to release its lock before SIGKILL
LAUNCHED = ("start", "resume", "restart")
Overrides = dict[str, Any] | Callable[[Run, Any], dict[str, Any]] | None


@dataclass
class RunDecision:
    """What ``ablate run`` will do with one run, and why."""

    run: Run
    state: RunState
    action: str  # start | resume | restart | done | queued | locked | conflict
    cfg: Any = field(repr=False, default=None)
    key: str = ""  # the run key of the config resolved now
    note: str = ""  # resume point, lock holder, job state, changed keys
    changed: list[str] = field(default_factory=list)
    discard: bool = False  # whether the folder is emptied before the launch
    sets: dict[str, Any] = field(default_factory=dict)  # `--set` overrides in cfg, recorded in run.json


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


def plan_runs(study: Study, runs: Sequence[Run], data_root: Path, restart: bool = False,
              overrides: Overrides = None, sets: dict[str, Any] | None = None,
              steal_locks: bool = False, processes: int = 1) -> list[RunDecision]:
    """Resolve each run's config and decide what to do with it (the rules in the module doc).

    Args:
        study: the study.
        runs: runs of one profile (``study.runs(...)``).
        data_root: dataset root for every dataloader.
        restart: whether runs whose config changed are trained again (else they are conflicts).
        overrides: extra dotted config keys for every run, or ``f(run, cfg)`` returning them per run
            (``--wandb``: :func:`ablate.tracking.overrides_for` adds a vis backend).
        sets: ``--set`` overrides (:func:`ablate.configs.parse_sets`): part of the config and its run key.
        steal_locks: whether runs whose lock looks held are launched all the same.
        processes: processes per run (the launcher's ``processes_per_run``); each trains on its
            share of the total batch (:func:`ablate.configs.resolve`).
    """
    decisions = []
    for run in runs:
        cfg = configs.resolve(study, run, data_root=data_root, sets=sets, processes=processes)
        if overrides:
            cfg.merge_from_dict(dict(overrides(run, cfg) if callable(overrides) else overrides))
        decisions.append(dataclasses.replace(decide(run, cfg, restart, steal_locks), sets=dict(sets or {})))
    return decisions


def decide(run: Run, cfg, restart: bool, steal_lock: bool = False) -> RunDecision:
    """What to do with ``run`` given the config resolved for it now (the module doc's rules)."""
    key = configs.run_key(cfg)
    state = read_state(run, expected_key=lambda *_: key, job_state=job_state)
    if settle(state):  # a detached job that ended unseen: its failure recorded, its lock released
        state = read_state(run, expected_key=lambda *_: key, job_state=job_state)
    decision = RunDecision(run, state, "start", cfg, key)
    if state.result is not None or state.checkpoint is not None:
        if state.recorded_key != key:
            changed = _changed_keys(run.work_dir, cfg)
            if changed:
                decision.action = "restart" if restart else "conflict"
                decision.changed, decision.discard = changed, True
                decision.note = "config changed: " + ", ".join(changed)
                return decision
    elif state.info is not None and state.recorded_key not in (None, key):
        decision.discard, decision.note = True, "config changed; nothing to resume, starting afresh"
        return decision
    if state.result is not None:
        decision.action, decision.note = "done", _result_note(state.result)
    elif state.job is not None and state.job.active:
        decision.action, decision.note = "queued", f"job {state.job.job_id} is {state.job.state.lower()}"
    elif state.holder is not None and not steal_lock:
        doing = "queued" if state.holder.role == LAUNCHER else "running"
        decision.action, decision.note = "locked", f"{doing}: lock held by {state.holder}"
    elif state.checkpoint is not None:
        decision.action, decision.note = "resume", f"from iteration {state.checkpoint[1]}"
    return decision


def _changed_keys(work_dir: Path, cfg) -> list[str]:
    """Keys whose values differ between the config the folder's training was made with and ``cfg``.

    That config is mmengine's dump of what the last attempt ran (``runtime_config.py``), else the
    ``config.py`` it was launched with. With neither readable, the answer is one line saying so:
    a run whose config is unknown is never resumed silently.
    """
    from mmengine.config import Config

    for name, ignore in ((folder.RUNTIME_CONFIG, configs.RUNTIME_KEYS), (folder.CONFIG, ())):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                old = Config.fromfile(str(work_dir / name), import_custom_modules=False)
        except Exception:  # noqa: BLE001 - missing or unreadable: try the next, else say so below
            continue
        return [key for key, _, _ in configs.diff(old, cfg, ignore=configs.NEUTRAL_KEYS + ignore)]
    return ["(unknown: no readable record of the config it trained with)"]


def _result_note(result: Result) -> str:
    return f"mIoU best {result.miou_best:.2f}, last {result.miou_last:.2f}"


def conflict_message(decisions: Sequence[RunDecision]) -> str:
    """The error for runs whose config changed since they started (one line per run)."""
    lines = [f"{d.run.key}: config changed since this run started ({', '.join(d.changed)}); "
             f"refusing to resume it" for d in decisions]
    lines.append("--restart discards these runs and trains them again with the new config")
    return "\n".join(lines)


def run_study(
    study: Study,
    runs: Sequence[Run],
    launcher: Launcher,
    data_root: Path,
    restart: bool = False,
    detach: bool = False,
    overrides: Overrides = None,
    console=None,
    steal_locks: bool = False,
    sets: dict[str, Any] | None = None,
    preflight: Callable[[list[RunDecision]], None] | None = None,
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
        console: a rich console for progress, or None for none.
        sets: ``--set`` overrides for every run (see :func:`plan_runs`), recorded in each run.json.
        steal_locks: take over the runs' locks even from holders that look alive (a lock of a
            process on another host whose heartbeat is not yet 10 minutes old, say).
        preflight: called with the runs about to launch before any is locked or written; raises
            to stop them all (``ablate run``: their pretrained checkpoints, :func:`ablate.weights.require`).

    A run whose folder cannot be written (read-only, disk full) becomes a failed outcome and the
    others go on. Any exception, Ctrl-C and the CLI's SIGTERM/SIGHUP included, stops the runs
    still going (:func:`stop`), which stay resumable, releases their locks, and is re-raised.

    Raises:
        LaunchError: changed configs without ``restart``, ``detach`` on a launcher that cannot,
            or a launch the backend refuses.
    """
    if detach and not launcher.can_detach:
        raise LaunchError(f"--detach needs a launcher whose jobs outlive `ablate run` (slurm), not `{launcher.name}`")
    decisions = plan_runs(study, runs, data_root, restart, overrides, sets, steal_locks,
                          processes=launcher.processes_per_run)
    conflicts = [d for d in decisions if d.action == "conflict"]
    if conflicts:
        raise LaunchError(conflict_message(conflicts))
    if preflight is not None:
        preflight([d for d in decisions if d.action in LAUNCHED])
    outcomes: dict[Run, RunOutcome] = {}
    attached: list[RunHandle] = []
    for d in decisions:
        if d.action == "done":
            outcomes[d.run] = RunOutcome(d.run, "skipped", note=f"done earlier ({d.note})", result=d.state.result)
        elif d.action == "locked":
            outcomes[d.run] = RunOutcome(d.run, "skipped", note=d.note)
        elif d.action == "queued":
            handle = None if detach else launcher.attach(d.run, d.state.info)
            if handle is None:
                outcomes[d.run] = RunOutcome(d.run, "skipped", note=d.note)
            else:
                attached.append(handle)
    launched = [d for d in decisions if d.action in LAUNCHED]
    locks = _prepare(launched, launcher, data_root, outcomes, console, steal_locks)
    handles: list[RunHandle] = []
    try:
        if locks:
            handles = launcher.submit([d.run for d in launched if d.run in locks])
        for handle in handles:
            if handle.job_id:
                _record_job(handle)
        if detach:
            for handle in handles:
                outcomes[handle.run] = RunOutcome(handle.run, "submitted", note=f"job {handle.job_id}")
            return [outcomes[r] for r in runs]
        outcomes.update(monitor(attached + handles, console))
    except BaseException:
        stop([h for h in attached + handles if h.outcome is None])
        raise
    finally:
        for lock in locks.values():
            lock.release()  # the worker's lock, too: it carries the same token
    return [outcomes[r] for r in runs]


def _record_job(handle: RunHandle) -> None:
    """Add the job id the launcher gave a run to its run.json (a detached run is found by it)."""
    try:
        info = RunInfo.read(handle.run.work_dir) or RunInfo()
        dataclasses.replace(info, job_id=handle.job_id).write(handle.run.work_dir)
    except (OSError, RecordError):
        pass  # run.json was written moments ago; if it cannot be now, the worker's failure will say why


def _prepare(decisions: Sequence[RunDecision], launcher: Launcher, data_root: Path, outcomes: dict,
             console, steal: bool) -> dict[Run, RunLock]:
    """Lock each run, empty it when it is discarded, write config.py and run.json.

    A run whose folder cannot be written gets a ``failed`` outcome here (and a failed.json where
    even that can be written); it is not launched, and the others are.
    """
    locks = {}
    for d in decisions:
        lock = RunLock(d.run.work_dir, new_token(), role=LAUNCHER)
        try:
            stale = lock.acquire(force=steal)
            if d.discard:
                folder.discard(d.run.work_dir)
            (d.run.work_dir / Failure.FILE).unlink(missing_ok=True)
            digest = configs.dump(d.cfg, d.run.work_dir / folder.CONFIG)
            RunInfo(config_hash=digest, run_key=d.key, started_at=folder.now(), launcher=launcher.name,
                    host=socket.gethostname(), world_size=launcher.processes_per_run, lock_token=lock.token,
                    data_root=str(data_root), sets=d.sets or None, total_batch=d.cfg.ablate.total_batch,
                    **launcher.run_info()).write(d.run.work_dir)
        except LockHeld as exc:
            outcomes[d.run] = RunOutcome(d.run, "skipped", note=f"running: {exc}")
            continue
        except OSError as exc:
            lock.release()
            outcomes[d.run] = _unwritable(d.run, exc)
            if console is not None:
                console.print(describe(outcomes[d.run]))
            continue
        if stale is not None and console is not None:
            console.print(f"[yellow]warning:[/] {d.run.key}: took over the {'' if steal else 'stale '}lock of "
                          f"{stale}{'' if steal else ' (not running)'}")
        locks[d.run] = lock
    return locks


def _unwritable(run: Run, exc: OSError) -> RunOutcome:
    """The outcome of a run whose folder cannot be written; failed.json too, if that still works."""
    error = f"cannot write its folder {run.work_dir}: {exc.strerror or exc}"
    try:
        folder.record_failure(run.work_dir, error, "", None)
    except OSError:
        pass  # read-only or full: the outcome line is all there is
    return RunOutcome(run, "failed", error=error)


def monitor(handles: Sequence[RunHandle], console=None) -> dict[Run, RunOutcome]:
    """Poll ``handles`` until each has ended, and show their progress on ``console``.

    On a terminal, one live line per active run (iteration, loss, ETA, or "evaluating"); elsewhere
    (a log file, nohup, Slurm, a pipe) plain lines: when a run starts, starts and ends an
    evaluation, saves a checkpoint, and at least every :data:`PROGRESS_EVERY_S` seconds. Each
    outcome is printed as it comes.
    """
    since = time.time()
    pending, outcomes = list(handles), {}
    progress = _Progress(console, since)
    with progress.live:
        while pending:
            for handle in list(pending):
                outcome = handle.poll()
                if outcome is not None:
                    pending.remove(handle)
                    outcomes[handle.run] = outcome
                    if console is not None:
                        console.print(describe(outcome))
            if pending:
                progress.show(pending)
                time.sleep(POLL_S)
    return outcomes


def stop(handles: Sequence[RunHandle], grace_s: float = CANCEL_GRACE_S) -> None:
    """Ask every run to stop, give them ``grace_s`` together to do so, then kill the rest.

    SIGINT, SIGTERM and SIGHUP wait until this is done: a second Ctrl-C must not leave workers behind.
    """
    signals = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        for handle in handles:
            handle.cancel()
        deadline = time.time() + grace_s
        while any(h.poll() is None for h in handles) and time.time() < deadline:
            time.sleep(0.1)
        for handle in handles:
            if handle.poll() is None:
                handle.kill()
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)


class _Progress:
    """Progress of the active runs on a console: live lines on a terminal, plain lines elsewhere."""

    def __init__(self, console, since: float):
        self.console, self.since = console, since
        self.plain = console is not None and not console.is_terminal
        self.live = _NoLive() if console is None or self.plain else _live(console)
        self.seen: dict[Run, dict] = {}  # per run: what was printed last (plain lines)

    def show(self, pending: Sequence[RunHandle]) -> None:
        if self.plain:
            for handle in pending:
                self._plain(handle)
        elif self.console is not None:
            self.live.update(_progress_lines(pending, self.since))

    def _plain(self, handle: RunHandle) -> None:
        """Print what changed for one run since the last line about it (at most one line a minute otherwise)."""
        run, now = handle.run, time.time()
        seen = self.seen.setdefault(run, {"started": False, "at": now, "phase": None, "evals": 0, "checkpoint": None})
        lines = []
        if not seen["started"] and not handle.waiting:
            seen["started"] = True
            lines.append(f"started   {run.key}")
        progress = _fresh_progress(run, self.since)
        if progress is not None:
            if progress.phase == "eval" and seen["phase"] != "eval":
                lines.append(f"eval      {run.key}  evaluating at iteration {progress.iteration}")
            for e in progress.evaluations[seen["evals"]:]:
                lines.append(f"eval      {run.key}  iteration {e.iteration}: mIoU {e.mIoU:.2f}")
            seen["phase"], seen["evals"] = progress.phase, len(progress.evaluations)
        checkpoint = folder.latest_checkpoint(run.work_dir)
        if checkpoint is not None and checkpoint[1] != seen["checkpoint"]:
            if seen["checkpoint"] is not None or progress is not None:  # not an old one found at start
                lines.append(f"saved     {run.key}  checkpoint at iteration {checkpoint[1]}")
            seen["checkpoint"] = checkpoint[1]
        if not lines and seen["started"] and now - seen["at"] >= PROGRESS_EVERY_S:
            lines.append(f"progress  {run.key}  " + (_progress_text(progress) if progress else "starting"))
        for line in lines:
            self.console.print(line, markup=False, highlight=False)
        if lines:
            self.console.file.flush()
            seen["at"] = now


def _live(console):
    from rich.live import Live

    return Live(console=console, refresh_per_second=2, transient=True)


class _NoLive:
    """Stands in for rich's Live where nothing is shown live (no console, or not a terminal)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, renderable) -> None:
        pass


def _progress_text(progress: Progress) -> str:
    """``12/40  loss 1.234  ETA 0:35``, or ``12/40  evaluating``."""
    done = f"{progress.iteration:>6}/{progress.max_iters or '?':<6}"
    if progress.phase == "eval":
        return f"{done} evaluating"
    loss = f"loss {progress.loss:.3f}" if progress.loss is not None else "loss -    "
    return f"{done} {loss}  ETA {duration(progress.eta_s)}"


def _progress_lines(pending: Sequence[RunHandle], since: float):
    """One line per active run (variant/seed, iteration/total, loss, ETA) and a count of waiting ones."""
    from rich.console import Group
    from rich.text import Text

    lines, waiting = [], 0
    for handle in pending:
        progress = _fresh_progress(handle.run, since)
        if progress is None:  # this attempt has not written yet
            waiting += 1
            continue
        lines.append(Text(f"{handle.run.key:<24} {_progress_text(progress)}"))
    if waiting:
        lines.append(Text(f"{waiting} run{'s' * (waiting > 1)} starting or queued", style="dim"))
    return Group(*lines)


def _fresh_progress(run: Run, since: float) -> Progress | None:
    """The run's progress.json if this attempt wrote it (after ``since``), else None."""
    try:
        if (run.work_dir / Progress.FILE).stat().st_mtime < since:
            return None
        return Progress.read(run.work_dir)
    except (OSError, RecordError):
        return None


def describe(outcome: RunOutcome) -> str:
    """One rich-markup line for an outcome."""
    from rich.markup import escape

    key = escape(outcome.run.key)
    if outcome.status == "done" and outcome.result:
        r = outcome.result
        return (f"[green]done[/]      {key}  mIoU best {r.miou_best:.2f} (iteration {r.best_iter}), "
                f"last {r.miou_last:.2f}  [dim]{duration(r.wall_time_s)}[/]")
    if outcome.status == "failed":
        return f"[red]failed[/]    {key}: {escape(outcome.error or '')}  [dim]{outcome.work_dir}/failed.json[/]"
    return f"[yellow]{outcome.status:<9}[/] {key}: {escape(outcome.note)}"
