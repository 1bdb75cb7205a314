"""The ``ablate`` command line: thin wrappers that parse, call one stage, and print the outcome.

Each command imports its stage inside its body (lazy: keeps ``ablate --help`` fast; torch, mmseg,
submitit and wandb are never imported at start-up). User errors (:class:`~ablate.errors.AblateError`)
print as one line and exit with code 2; ``ABLATE_FULL_ERROR=1`` re-raises them with a traceback.
"""
from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from ablate.errors import AblateError

app = typer.Typer(
    name="ablate",
    help="Ablation studies for semantic segmentation on MMSegmentation: run every variant, report the table.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's plain help: typer's rich help costs 0.15 s of imports per call
)
data_app = typer.Typer(help="Datasets: make the synthetic smoke set, check a real ADE20K tree.", no_args_is_help=True,
                       rich_markup_mode=None)
app.add_typer(data_app, name="data")

ProfileOpt = typer.Option(None, "--profile", "-p", help="Profile of the study (default: `paper` if it has one).")
SetOpt = typer.Option(None, "--set", help="KEY=VALUE: set a config key for this invocation, after the profile's and "
                                          "the variant's (the value is YAML); repeatable. Part of each run's config "
                                          "and run key; `ablate run` records it in run.json.")
ProcessesOpt = typer.Option(None, "--gpus-per-run", min=1, help="Processes (GPUs) per run, K: each trains on total "
                                                                "batch / K images, with SyncBN when K > 1 (default: "
                                                                "the study's resources.gpus_per_run, else 1).")


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def user_errors(command):
    """Print an AblateError as ``error: ...`` on stderr and exit with its code, without a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except AblateError as exc:
            if os.environ.get("ABLATE_FULL_ERROR"):
                raise
            from rich.markup import escape

            _console(stderr=True).print(f"[bold red]error:[/] {escape(str(exc))}")
            raise typer.Exit(exc.exit_code) from None

    return wrapper


def _study_and_profile(study: str, profile: Optional[str]):
    from ablate.study import load_study

    spec = load_study(study)
    name = profile or spec.default_profile()
    spec.profile(name)  # validates
    return spec, name


def _processes(spec, given: Optional[int]) -> int:
    """``--gpus-per-run``, else the study's ``resources.gpus_per_run`` (what torchrun and Slurm default to)."""
    return given or int(spec.resources.get("gpus_per_run") or 1)


@app.command()
@user_errors
def studies() -> None:
    """List the study files in ./experiments (or $ABLATE_STUDIES)."""
    from rich.table import Table

    from ablate.study import list_studies, load_study, studies_dir

    paths = list_studies()
    if not paths:
        _console().print(f"no study files in {studies_dir()}/")
        return
    table = Table("study", "title", "variants", "profiles", box=None)
    for path in paths:
        try:
            spec = load_study(str(path))
            table.add_row(path.stem, spec.title, ", ".join(spec.variants), ", ".join(spec.profiles))
        except AblateError as exc:
            table.add_row(path.stem, f"[red]invalid: {str(exc).splitlines()[0]}[/]", "", "")
    _console().print(table)


@app.command()
@user_errors
def show(study: str = typer.Argument(..., help="Study name (experiments/NAME.yaml) or path.")) -> None:
    """Print a study's variants, profiles (with their total batch), runs and the paper's numbers."""
    from rich.table import Table

    from ablate import configs as cfgs
    from ablate.study import METRICS, load_study

    spec = load_study(study)
    console = _console()
    console.print(f"[bold]{spec.title}[/]  ({spec.path})")
    console.print(f"base config: {spec.base}   baseline: {spec.baseline}   compare mIoU: {spec.compare_miou}"
                  f"   seeds: {list(spec.seeds)}   input: {'x'.join(map(str, spec.input_shape))}")
    if spec.factors:
        cells = " x ".join(str(len(f.levels)) for f in spec.factors.values())
        table = Table("factor", "level", "overrides", title=f"factors: {cells} = {len(spec.cells())} variants")
        for f in spec.factors.values():
            for level, overrides in f.levels.items():
                shown = "\n".join(f"{k} = {val!r}" for k, val in overrides.items()) or "(base config)"
                table.add_row(f.name, level + (" (reference)" if level == f.reference else ""), shown)
        console.print(table)
    levels = ("levels",) if spec.factors else ()
    table = Table("variant", "label", *levels, "overrides", *(f"paper {m}" for m in METRICS), title="variants")
    table.columns[0].no_wrap = True
    for v in spec.variants.values():
        overrides = "\n".join(f"{k} = {val!r}" for k, val in v.overrides.items()) or "(base config)"
        cell = (", ".join(f"{f}={lv}" for f, lv in v.levels.items()) if v.levels else "-",) if spec.factors else ()
        table.add_row(v.name, v.label, *cell, overrides, *(_fmt(v.paper.get(m)) for m in METRICS))
    console.print(table)
    processes = _processes(spec, None)
    table = Table("profile", "data", "seeds", "runs", "total batch", "overridden keys", "extends", "description",
                  title=f"profiles ({processes} process(es) per run: resources.gpus_per_run)")
    table.columns[0].no_wrap = True
    for p in spec.profiles.values():
        cfg = cfgs.resolve(spec, spec.runs(p.name, variants=[spec.baseline])[0], processes=processes)
        batch = f"{cfg.ablate.total_batch} ({processes} x {cfg.train_dataloader.batch_size})"
        table.add_row(p.name, p.data, str(list(p.seeds or spec.seeds)), str(len(spec.runs(p.name))), batch,
                      str(len(p.overrides)), p.extends or "-", p.description)
    console.print(table)
    for claim in spec.claims:
        console.print(f"claim: {claim.text}  [dim]({claim.test})[/]")


def _fmt(value) -> str:
    return "-" if value is None else f"{value:g}"


@app.command()
@user_errors
def configs(
    study: str = typer.Argument(..., help="Study name or path."),
    profile: Optional[str] = ProfileOpt,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write here instead of each run's work_dir."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Dataset root for every dataloader."),
    sets: Optional[list[str]] = SetOpt,
    gpus_per_run: Optional[int] = ProcessesOpt,
) -> None:
    """Write one resolved config.py per run (variant x seed) of a profile: what `ablate run` trains.

    The data root is the one `ablate run` would use (--data-root, or the synthetic set of a smoke
    profile); a real-data profile without --data-root keeps the base config's. With --gpus-per-run K
    it is what each of K processes trains. A run folder that `ablate run` has launched keeps its
    config.py (the config it trains with); `--out` writes elsewhere.
    """
    from ablate import configs as cfgs
    from ablate.launch.orchestrate import data_root_for
    from ablate.runs import RunInfo, folder

    spec, profile = _study_and_profile(study, profile)
    console = _console()
    runs = spec.runs(profile)
    if data_root is not None or spec.profile(profile).data == "synthetic":
        data_root = data_root_for(spec, profile, data_root, create=False)
    overrides = cfgs.parse_sets(sets)
    processes = _processes(spec, gpus_per_run)
    # every error before any write
    resolved = [cfgs.resolve(spec, run, data_root=data_root, sets=overrides, processes=processes) for run in runs]
    for run, cfg in zip(runs, resolved):
        target = (out / run.variant / f"seed{run.seed}" / folder.CONFIG) if out else run.work_dir / folder.CONFIG
        launched = (run.work_dir / RunInfo.FILE).exists() or folder.holds_training(run.work_dir)
        if out is None and launched:
            console.print(f"{run.key:<28} {target}  [yellow]kept: a launched run's config[/] (--out writes elsewhere)")
            continue
        digest = cfgs.dump(cfg, target)
        console.print(f"{run.key:<28} {target}  [dim]{digest}[/]")


@app.command()
@user_errors
def diff(
    study: str = typer.Argument(..., help="Study name or path."),
    a: str = typer.Argument(..., help="First variant, or first profile."),
    b: str = typer.Argument(..., help="Second variant, or second profile."),
    profile: Optional[str] = ProfileOpt,
    variant: Optional[str] = typer.Option(None, "--variant", "-v", help="When A and B are profiles: the variant "
                                                                        "compared under both (default: the baseline)."),
) -> None:
    """Print the config keys that differ between two variants (under --profile) or two profiles (of --variant)."""
    from rich.table import Table

    from ablate import configs as cfgs
    from ablate.errors import StudyError

    spec, profile = _study_and_profile(study, profile)
    kinds = ["variant" if n in spec.variants else "profile" if n in spec.profiles else "?" for n in (a, b)]
    if kinds == ["profile", "profile"]:
        name = spec.variant(variant or spec.baseline).name
        run_a, run_b = (spec.runs(p, variants=[name])[0] for p in (a, b))
        where = f"for variant `{name}`"
    elif set(kinds) == {"variant", "profile"}:
        raise StudyError(f"`{a}` is a {kinds[0]} and `{b}` a {kinds[1]}: compare two variants or two profiles")
    else:  # an unknown name is a StudyError naming the variants
        run_a, run_b = (spec.runs(profile, variants=[v])[0] for v in (a, b))
        where = f"under profile `{profile}`"
    rows = cfgs.diff(cfgs.resolve(spec, run_a), cfgs.resolve(spec, run_b), ignore=("work_dir", "ablate"))
    if not rows:
        _console().print(f"`{a}` and `{b}` resolve to the same config {where}")
        return
    table = Table("key", a, b, box=None)
    for key, va, vb in rows:
        table.add_row(key, repr(va), repr(vb))
    _console().print(table)


@app.command()
@user_errors
def plan(
    study: str = typer.Argument(..., help="Study name or path."),
    profile: Optional[str] = ProfileOpt,
    sec_per_iter: Optional[float] = typer.Option(
        None, "--sec-per-iter", help="Seconds per training iteration of every variant (default: timed by "
                                     "--measure, else measured by finished runs, else the profile's)."),
    gpus_per_run: Optional[int] = ProcessesOpt,
    measure: bool = typer.Option(False, "--measure", help="First time a few training iterations and a validation "
                                                          "batch of each variant on this device (CPU or CUDA); "
                                                          "kept in the profile's timings.json."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Dataset to time on (--measure); "
                                                                       "smoke: the synthetic set by default."),
    sets: Optional[list[str]] = SetOpt,
    power: bool = typer.Option(False, "--power", help="Also print the seeds each effect and claim needs to find the "
                                                      "paper's difference (95 % interval, power 0.8), and their cost."),
    seed_std: Optional[float] = typer.Option(None, "--seed-std", min=1e-6, help="--power: the mIoU std over seeds "
                                             "(default: measured from runs with 2+ seeds, else the study file's)."),
    detect: Optional[float] = typer.Option(None, "--detect", help="--power: find this mIoU difference everywhere "
                                                                  "instead of the paper's."),
) -> None:
    """Print the runs of a profile, each variant's pace and the estimated device time, evaluation included;
    with --power, the seeds each effect and claim needs."""
    from ablate.configs import parse_sets
    from ablate.plan import plan_study, power_plan, render_plan, render_power

    spec, profile = _study_and_profile(study, profile)
    processes = _processes(spec, gpus_per_run)
    overrides = parse_sets(sets)
    console = _console()
    if measure:
        _measure_timings(console, spec, profile, processes, data_root)
    planned = plan_study(spec, profile, sec_per_iter, processes, sets=overrides)
    render_plan(console, planned)
    if power:
        render_power(console, power_plan(planned, seed_std, detect))


def _measure_timings(console, spec, profile: str, processes: int, data_root: Optional[Path]) -> None:
    """``plan --measure``: time each variant, one line each, into the profile's timings.json."""
    import time

    # lazy: torch, mmengine and mmseg load only to measure
    from ablate.launch.orchestrate import data_root_for
    from ablate.timings import measure_study

    root = data_root_for(spec, profile, data_root)
    started = {}

    def progress(variant: str, timing) -> None:
        if timing is None:
            started[variant] = time.time()
            return
        evaluation = (f", eval {timing.eval_sec_per_image:.3g} s/image" if timing.eval_sec_per_image is not None
                      else "")
        console.print(f"timed {variant:<16} {timing.sec_per_iter:.3g} s/iter{evaluation}  "
                      f"[dim]({time.time() - started[variant]:.0f} s)[/]")

    timings = measure_study(spec, profile, root, processes, progress=progress)
    console.print(f"[dim]on {timings.device}; {timings.per_process_batch} images per process[/]")


@app.command()
@user_errors
def report(
    study: str = typer.Argument(..., help="Study name or path."),
    profile: Optional[str] = ProfileOpt,
    formats: Optional[list[str]] = typer.Option(
        None, "--format", "-f", help="md, csv, latex, json (default: these four), png (the mIoU-vs-GFLOPs "
                                     "plot) or all; repeatable. The terminal always shows the markdown table."),
    out: Path = typer.Option(Path("reports"), "--out", "-o", help="Writes OUT/STUDY/PROFILE.{md,csv,tex,json,png}."),
    measure: bool = typer.Option(True, "--measure/--no-measure",
                                 help="Measure Params and FLOPs of each variant (torch + mmseg; cached by model)."),
    use_wandb: Optional[bool] = typer.Option(None, "--wandb/--no-wandb", help="Also log a `report` job with the table "
                                             "and charts to the runs' W&B group (default: the study's "
                                             "`wandb.enabled`)."),
    include_stale: bool = typer.Option(False, "--include-stale", help="Count runs whose config changed since they "
                                                                      "ran (stale) as if they were done."),
) -> None:
    """Collect a profile's runs and write its table (markdown, CSV, LaTeX, JSON; `-f all`: also a plot).

    Stale runs (config changed since they ran) are marked and left out of the statistics unless
    --include-stale. Checkpoints evaluated by `ablate eval` are shown as a "released weights" table
    of their own. Exits 1 when a run file or an evaluation.json cannot be read: it is named, and the
    rest is reported.
    """
    # lazy: matplotlib loads only for the PNG, scipy only for a paired t-test (2+ seeds), torch and
    # mmseg only when measuring, wandb only to log. The output is plain text: typer.echo, not rich.
    from ablate import tracking
    from ablate.collect import collect, measure_variants, with_measurements
    from ablate.errors import ReportError
    from ablate.evaluate import read_evaluations
    from ablate.launch import job_state
    from ablate.report import parse_formats, render_markdown, write_reports
    from ablate.results import summarize
    from ablate.runs import WorkRoot

    spec, profile = _study_and_profile(study, profile)
    wanted = parse_formats(formats or [])
    log_to_wandb = tracking.enabled(spec, use_wandb)
    if log_to_wandb:
        tracking.require(ReportError)  # before collecting and measuring
    collection = collect(spec, profile, measure=False, job_state=job_state)
    released, unreadable = read_evaluations(spec, profile)  # checkpoints `ablate eval` evaluated
    problems = collection.problems + unreadable
    if not problems and not released and all(s.status.value in ("pending", "queued") for s in collection.states):
        where = WorkRoot.of(None).profile_dir(spec.name, profile)
        resumable = sum(s.checkpoint is not None for s in collection.states)
        state = (f"{resumable} of {len(collection.states)} can resume from a checkpoint" if resumable
                 else "none has started")
        raise ReportError(f"no finished, running or failed runs of `{spec.name}` (profile `{profile}`) in "
                          f"{where}/ ({state}); run them with `ablate run {study} --profile {profile}`")
    if measure:
        collection = with_measurements(collection, measure_variants(spec, profile))
    results = summarize(spec, profile, collection.runs, collection.measurements, problems,
                        include_stale=include_stale, released=released)
    typer.echo(render_markdown(results))
    for path in write_reports(results, out, wanted):
        typer.echo(f"wrote {path}")
    if log_to_wandb:  # after the files: a W&B failure leaves the local report written
        typer.echo(f"logged W&B report run: {tracking.log_report(spec, results)}")
    if problems:
        from rich.markup import escape

        err = _console(stderr=True)
        for line in problems:
            err.print(f"[bold red]error:[/] {escape(line)}")
        raise typer.Exit(1)


@app.command()
@user_errors
def measure(
    study: str = typer.Argument(..., help="Study name or path."),
    profile: Optional[str] = ProfileOpt,
    shape: Optional[str] = typer.Option(None, "--shape", help="C,H,W of the one image counted (default: the "
                                                              "study's input_shape, e.g. 3,512,512)."),
    variants: Optional[list[str]] = typer.Option(None, "--variant", "-v", help="Only this variant; repeatable."),
    audit: bool = typer.Option(False, "--audit", help="Also print, per variant, GMACs by operator kind and "
                                                      "every operator not counted, with how often it ran."),
    latency: bool = typer.Option(False, "--latency", help="Also time forward passes: median after warm-up."),
    device: Optional[str] = typer.Option(None, "--device", help="Device for --latency (default: cuda if present)."),
    repeats: int = typer.Option(50, "--repeats", min=1, help="Timed forward passes for --latency."),
    warmup: int = typer.Option(10, "--warmup", min=0, help="Untimed forward passes before timing."),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Reuse measurements cached in "
                                                                "work_dirs/.measure (by model config and code)."),
) -> None:
    """Params, FLOPs (GMACs, matrix products and attention included) and latency of each variant's model."""
    # lazy: torch and mmseg load only for this command, inside ablate.measure
    from ablate.measure import measure_study, parse_shape, render_measurements

    spec, profile = _study_and_profile(study, profile)
    try:
        input_shape = parse_shape(shape) if shape else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--shape") from None
    console = _console()
    spinner = []

    def progress(variant: str, result: Optional[dict], seconds: float) -> None:
        if result is None:  # starting: a spinner on a terminal, nothing in a log
            spinner.append(console.status(f"measuring {variant} ..."))
            spinner[-1].start()
            return
        spinner.pop().stop()
        source = ("counts cached, " if result.get("cached") else "") + f"{seconds:.1f} s"
        timed = f", {result['latency_ms']:.1f} ms" if "latency_ms" in result else ""
        console.print(f"{variant:<20} {result['params_m']:.3f} M params  {result['gmacs']:.2f} GMACs{timed}  "
                      f"[dim]({source})[/]")

    latency_opts = dict(device=device, warmup=warmup, repeats=repeats) if latency else None
    results = measure_study(spec, profile, input_shape, variants=variants, use_cache=cache,
                            latency=latency_opts, progress=progress)
    render_measurements(console, spec, results, audit=audit)


# --- training: `ablate run`, `ablate status` (stage: ablate.launch) -----------------------------


def _csv(value: Optional[str], flag: str, kind=str) -> Optional[list]:
    """``"a,b"`` -> ``["a", "b"]`` (None stays None); a bad item is a one-line LaunchError."""
    from ablate.errors import LaunchError

    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    try:
        return [kind(v) for v in items]
    except ValueError:
        raise LaunchError(f"{flag} {value}: expected a comma-separated list of {kind.__name__}s") from None


@app.command()
@user_errors
def run(
    study: str = typer.Argument(..., help="Study name or path."),
    profile: Optional[str] = ProfileOpt,
    variants: Optional[str] = typer.Option(None, "--variants", help="Only these variants, comma-separated."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Only these of the profile's seeds, comma-separated "
                                                              "(more seeds: add them to the study file)."),
    launcher: str = typer.Option("local", "--launcher", "-l", help="local, torchrun or slurm."),
    gpus: Optional[int] = typer.Option(None, "--gpus", help="Pool of N local GPUs; a run starts as soon as one frees "
                                                            "(default: one run at a time, on the CPU here)."),
    gpus_per_run: Optional[int] = typer.Option(None, "--gpus-per-run", help="GPUs (torchrun/slurm: processes) per "
                                                                            "run; on a CPU, torchrun processes."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Dataset root (ADEChallengeData2016); "
                                                                       "smoke: the synthetic set by default."),
    restart: bool = typer.Option(False, "--restart", help="Discard runs whose config changed and train them anew."),
    detach: bool = typer.Option(False, "--detach", help="Submit and return at once (slurm); `ablate status` follows."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would run; launch nothing."),
    sets: Optional[list[str]] = SetOpt,
    partition: Optional[str] = typer.Option(None, "--partition", help="Slurm partition (default: the study's)."),
    account: Optional[str] = typer.Option(None, "--account", help="Slurm account (default: the study's)."),
    timeout_min: Optional[int] = typer.Option(None, "--time", help="Slurm time limit per job, minutes; a job "
                                                                   "that hits it requeues and resumes."),
    cpus_per_run: Optional[int] = typer.Option(None, "--cpus-per-run", help="Slurm CPU cores per run."),
    use_wandb: Optional[bool] = typer.Option(None, "--wandb/--no-wandb", help="Log every run to Weights & Biases, "
                                             "grouped as STUDY/PROFILE (default: the study's `wandb.enabled`); "
                                             "WANDB_MODE=offline logs locally for `wandb sync`."),
    steal_locks: bool = typer.Option(False, "--steal-locks", help="Take over run locks that look alive (a process "
                                                                  "on another host, say); only when you know it is gone."),
) -> None:
    """Train and evaluate every run of a profile that is not done; finished runs are skipped, others resume.

    Exits 1 when a run failed (the others still ran; `ablate status` shows why), 2 on bad input. Ctrl-C,
    SIGTERM and SIGHUP stop the workers; the stopped runs resume from their last checkpoint next time.
    """
    # lazy: keeps `--help` fast; torch loads only for --gpus, submitit only for slurm
    from ablate import tracking  # light: wandb is imported only by what logs (the workers)
    from ablate.configs import parse_sets
    from ablate.data.check import quick_check
    from ablate.errors import LaunchError
    from ablate.launch import make_launcher
    from ablate.launch.orchestrate import LAUNCHED, data_root_for, describe, plan_runs, run_study

    spec, profile = _study_and_profile(study, profile)
    overridden = parse_sets(sets)
    runs = spec.runs(profile, variants=_csv(variants, "--variants"), seeds=_seeds(spec, profile, seeds))
    backend = make_launcher(launcher, spec, gpus=gpus, gpus_per_run=gpus_per_run, partition=partition,
                            account=account, timeout_min=timeout_min, cpus_per_run=cpus_per_run)
    root = data_root_for(spec, profile, data_root, create=not dry_run)
    if data_root is not None and not dry_run:
        quick_check(root)  # a broken dataset is named now, not at iteration N of every run
    overrides = None
    if tracking.enabled(spec, use_wandb):
        tracking.require(LaunchError)
        overrides = tracking.overrides_for(spec)  # a W&B backend in each config.py; workers log
    console = _console()
    weights_command = f"ablate weights {study} --profile {profile}"

    def preflight(decisions) -> None:
        """Before any launch: a device for mixed precision, and every pretrained checkpoint the runs
        load cached or reachable."""
        from ablate.weights import require

        if backend.on_this_machine:
            _check_amp_device([d.cfg for d in decisions], profile)

        for checkpoint in require([d.cfg for d in decisions], weights_command):
            console.print(f"[yellow]note:[/] {checkpoint.name} is not cached: each run downloads it from "
                          f"{checkpoint.url} (nodes without internet: `{weights_command} --download` first)")

    if dry_run:
        planned = plan_runs(spec, runs, root, restart, overrides, overridden, steal_locks,
                            processes=backend.processes_per_run)
        preflight([p for p in planned if p.action in LAUNCHED])
        _print_plan(console, planned, backend, root)
        return
    with _stopped_by_signals() as stopped:
        try:
            outcomes = run_study(spec, runs, backend, root, restart=restart, detach=detach, overrides=overrides,
                                 console=console, steal_locks=steal_locks, sets=overridden, preflight=preflight)
        except KeyboardInterrupt:
            _report_stop(stopped.signal or signal.SIGINT, runs, study, profile)
    for outcome in outcomes:
        if outcome.status in ("skipped", "submitted"):  # done and failed ones were printed as they ended
            console.print(describe(outcome))
    failed = [o for o in outcomes if o.status == "failed"]
    counts = {s: sum(o.status == s for o in outcomes) for s in ("done", "failed", "skipped", "submitted")}
    console.print(", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no runs")
    if failed:
        _console(stderr=True).print(f"[bold red]error:[/] {len(failed)} of {len(outcomes)} runs failed; "
                                    f"`ablate status {study} --profile {profile}` shows why")
        raise typer.Exit(1)


def _check_amp_device(cfgs, profile: str) -> None:
    """mmengine's AmpOptimWrapper (fp16/bf16 training) refuses a machine without CUDA: say so now,
    in one line, rather than in every run's failed.json."""
    from ablate.errors import LaunchError

    if not any((cfg.get("optim_wrapper") or {}).get("type") == "AmpOptimWrapper" for cfg in cfgs):
        return
    import torch  # lazy: only for mixed-precision profiles

    if not torch.cuda.is_available():
        raise LaunchError(f"profile `{profile}` trains in mixed precision (optim_wrapper AmpOptimWrapper), which "
                          "mmengine runs on CUDA devices only, and none is visible here; use a GPU machine "
                          "(or --launcher slurm), or a profile without it")


def _seeds(spec, profile: str, value: Optional[str]) -> Optional[list[int]]:
    """``--seeds``: a subset of the profile's seeds, so that status and report know every run."""
    from ablate.errors import StudyError

    chosen = _csv(value, "--seeds", int)
    known = list(spec.profile(profile).seeds or spec.seeds)
    unknown = [s for s in chosen or [] if s not in known]
    if unknown:
        raise StudyError(f"--seeds {value}: seed {', '.join(map(str, unknown))} is not one of profile `{profile}`'s "
                         f"seeds ({', '.join(map(str, known))}); add seeds to `seeds:` in {spec.path.name} (the "
                         "study's or the profile's), so that `ablate status` and `ablate report` know the runs")
    return chosen


class _SignalStop:
    """Which signal ended `ablate run` (None: Ctrl-C, or none)."""

    signal: Optional[int] = None


@contextlib.contextmanager
def _stopped_by_signals():
    """SIGTERM and SIGHUP (what `kill`, schedulers, systemd, `timeout` and a closed terminal send) end
    `ablate run` as Ctrl-C does: KeyboardInterrupt, so the workers are stopped and the locks released."""
    stopped = _SignalStop()

    def interrupt(signum, frame):
        stopped.signal = signum
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield stopped
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _report_stop(signum: int, runs, study: str, profile: str) -> None:
    """After a stop: which runs can resume, and how; exits 128 + the signal number."""
    from ablate.runs import RunStatus, read_state

    left = []
    for run in runs:
        state = read_state(run)
        if state.status is not RunStatus.DONE:
            where = f"from iteration {state.checkpoint[1]}" if state.checkpoint else "from the start"
            left.append(f"{run.key} ({where})")
    err = _console(stderr=True)
    name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
    err.print(f"stopped by {name}: the workers were stopped and their locks released")
    if left:
        err.print(f"{len(left)} runs not done resume with `ablate run {study} --profile {profile}`: {', '.join(left)}")
    raise typer.Exit(128 + signum)


def _print_plan(console, planned, backend, root) -> None:
    from rich.table import Table

    table = Table("run", "action", "detail", "run key", box=None, title="dry run: nothing is launched")
    for p in planned:
        table.add_row(p.run.key, p.action, p.note, p.key)
    console.print(table)
    total = planned[0].cfg.ablate.total_batch if planned else None
    batch = f", total batch {total} ({total // backend.processes_per_run} per process)" if total else ""
    console.print(f"launcher {backend.name}, {backend.processes_per_run} process(es) per run{batch}; data {root}")


@app.command()
@user_errors
def status(
    study: str = typer.Argument(..., help="Study name or path."),
    profile: Optional[str] = ProfileOpt,
) -> None:
    """One row per run: pending / queued / running / done / failed / stale, iteration, mIoU, wall time, why."""
    from rich.markup import escape
    from rich.table import Table

    from ablate.collect import describe, run_row, states
    from ablate.display import duration
    from ablate.launch import job_state, settle

    spec, profile = _study_and_profile(study, profile)
    styles = {"done": "green", "running": "cyan", "queued": "cyan", "failed": "red", "pending": "dim",
              "stale": "yellow"}
    table = Table("run", "status", "iteration", "last mIoU", "best mIoU", "wall time", "note", box=None)
    found = states(spec, profile, job_state=job_state)
    if any([settle(state) for state in found]):  # detached jobs that ended unseen: failed.json, lock released
        found = states(spec, profile, job_state=job_state)
    for state in found:
        row = run_row(state, {})
        iteration = f"{row['iterations']}/{row['max_iters'] or '?'}" if row["iterations"] is not None else "-"
        table.add_row(state.run.key, f"[{styles[row['status']]}]{row['status']}[/]", iteration,
                      _pct(row["miou_last"]), _pct(row["miou_best"]), duration(row["wall_time_s"]),
                      escape(describe(state)))
    console = _console()
    console.print(table)
    problems = [line for state in found for line in state.problems]
    for line in problems:
        _console(stderr=True).print(f"[bold red]unreadable:[/] {escape(line)}")


def _pct(value) -> str:
    return "-" if value is None else f"{value:.2f}"


@app.command()
@user_errors
def weights(
    study: str = typer.Argument(..., help="Study name or path."),
    profile: Optional[str] = ProfileOpt,
    download: bool = typer.Option(False, "--download", help="Download the checkpoints that are not cached yet."),
) -> None:
    """List the pretrained checkpoints a profile's runs load, where mmengine caches each, and whether it is there.

    Runs download them when they start; a compute node without internet needs them in the cache
    first: run this with --download where there is internet (the cache is torch.hub's,
    $TORCH_HOME/hub/checkpoints), or copy each file to the path shown.
    """
    from rich.markup import escape

    from ablate import configs as cfgs
    from ablate import weights as w

    spec, profile = _study_and_profile(study, profile)
    console = _console()
    found = w.checkpoints(cfgs.resolve(spec, run) for run in spec.runs(profile))
    if not found:
        console.print(f"the runs of `{spec.name}` (profile `{profile}`) load no pretrained checkpoint")
        return
    for checkpoint in found:
        if checkpoint.cached:
            state = f"[green]cached[/] ({checkpoint.path.stat().st_size / 1e6:.1f} MB)"
        elif download:
            _download(console, checkpoint)
            state = f"[green]downloaded[/] ({checkpoint.path.stat().st_size / 1e6:.1f} MB)"
        else:
            reason = w.probe(checkpoint.url)
            state = ("[yellow]missing[/], reachable: --download fetches it" if reason is None
                     else f"[red]missing[/], unreachable from here ({escape(reason)})")
        console.print(f"{checkpoint.key}\n  url   {checkpoint.url}\n  file  {checkpoint.path}\n  {state}")


def _download(console, checkpoint) -> None:
    """Download one checkpoint with a progress bar (on a terminal) that goes away when done."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    from ablate.weights import download

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task(f"downloading {checkpoint.name}", total=None)
        download(checkpoint, lambda done, total: bar.update(task, completed=done, total=total))


@data_app.command("synth")
@user_errors
def data_synth(
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Dataset root (default: "
                                                                 "$ABLATE_DATA/synthetic_ade20k, ABLATE_DATA=data)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the shapes; the same seed writes the same files."),
) -> None:
    """Write the small synthetic dataset in ADE20K's layout that the smoke profile trains on."""
    from ablate.data.synthetic import default_root, make_synthetic

    root = out or default_root()
    meta = make_synthetic(root, seed=seed)
    counts = meta["counts"]
    _console().print(f"wrote {counts['training']} training and {counts['validation']} validation images to {root} "
                     f"({len(meta['classes'])} classes present; chance mIoU {meta['chance_miou']:.2f})")


@data_app.command("check")
@user_errors
def data_check(
    data_root: Path = typer.Option(..., "--data-root", help="The ADEChallengeData2016 folder."),
    sample: Optional[int] = typer.Option(None, "--sample", min=1, help="Check the label values of only N "
                                                                       "annotations per split (default: all)."),
) -> None:
    """Check a real ADE20K tree: image counts, image/annotation pairing, label values 0..150; exit 2 if wrong."""
    from ablate.data.check import check_ade20k
    from ablate.errors import LaunchError

    report = check_ade20k(data_root, label_sample=sample)
    for split, (images, labels) in report.counts.items():
        _console().print(f"{split}: {images} images, {labels} annotations")
    if not report.ok:
        raise LaunchError("\n".join(f"{data_root}/{problem}" for problem in report.problems))
    _console().print(f"{data_root}: ADE20K looks complete ({report.labels_checked} label maps checked)")


@app.command()
@user_errors
def convert(
    source: str = typer.Argument(..., help="Checkpoint of the study's mmseg 0.x model: a file or an http(s) URL."),
    out: Path = typer.Argument(..., help="Where to write it with our mmseg 1.x model's key names."),
) -> None:
    """Rename an mmseg 0.x SegNeXt + FreqFusion checkpoint for our model; foreign pickles never run code."""
    from ablate.convert import convert_file  # lazy: torch

    info = convert_file(source, out)
    typer.echo(f"wrote {out}: {info['keys']} tensors, {info['converted']} renamed from mmseg {info['format']} "
               f"(sha256 {info['sha256'][:12]} of {source}); keys look like {info['architecture']}")


@app.command("eval")
@user_errors
def eval_(
    study: str = typer.Argument(..., help="Study name or path."),
    profile: Optional[str] = ProfileOpt,
    checkpoints: Optional[list[str]] = typer.Option(
        None, "--checkpoint", "-c", help="VARIANT=PATH or VARIANT=URL: weights to load into that variant's model; "
                                         "repeatable (default: the variants' `checkpoint:` in the study file)."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Dataset root (ADEChallengeData2016); "
                                                                       "smoke: the synthetic set by default."),
) -> None:
    """Evaluate checkpoints on a profile's validation split: released weights (mmseg 0.x ones converted) or a run's.

    Each result goes to work_dirs/STUDY/PROFILE/VARIANT/eval-NAME/evaluation.json, which `ablate report`
    shows as "released weights". A checkpoint that cannot be evaluated is one line on stderr; the
    others are still evaluated, and the exit code is 2.
    """
    from rich.markup import escape

    from ablate import evaluate  # light: torch and mmseg load when the first checkpoint is evaluated
    from ablate.launch.orchestrate import data_root_for

    spec, profile = _study_and_profile(study, profile)
    todo = evaluate.checkpoints_to_evaluate(spec, checkpoints or [])
    root = data_root_for(spec, profile, data_root)
    console, failed = _console(), 0
    for variant, source in todo:
        console.print(f"{variant}: evaluating {escape(source)} on the validation split of {root}")
        try:
            with _progress(console, variant) as report:
                record, where = evaluate.evaluate(spec, profile, variant, source, root, progress=report)
        except AblateError as exc:
            if os.environ.get("ABLATE_FULL_ERROR"):
                raise
            _console(stderr=True).print(f"[bold red]error:[/] {variant}: {escape(str(exc))}")
            failed += 1
            continue
        console.print(f"{variant}: {_eval_line(record)} [dim]-> {where / record.FILE}[/]")
        trained = evaluate.trained_evaluation(record)
        if trained is not None:
            run, evaluation = trained
            console.print(f"{variant}: run {run} evaluated iteration {evaluation.iteration} in training at "
                          f"mIoU {evaluation.mIoU:.2f}")
    if failed:
        raise typer.Exit(2)


def _eval_line(record) -> str:
    """``mIoU 41.20  aAcc 80.10  mAcc 52.30  (mmseg 0.x, 26 keys renamed, sha256 ..., 2000 images, 95.0 s)``."""
    scores = "  ".join(f"{name} {value:.2f}" for name, value in
                       (("mIoU", record.miou), ("aAcc", record.aacc), ("mAcc", record.macc)) if value is not None)
    kind = f"mmseg {record.format}" + (f", {record.converted} keys renamed" if record.converted else "")
    if record.trusted:
        kind = "ablate's own checkpoint"
    return (f"{scores}  ({kind}, sha256 {record.sha256[:12]}, {record.images} images, "
            f"{record.wall_time_s:.1f} s)")


@contextlib.contextmanager
def _progress(console, what: str):
    """Yields a callback ``(done, total)``: a spinner on a terminal, a line every 30 s in a log."""
    last = time.monotonic()
    status = console.status(f"{what}: starting ...") if console.is_terminal else None
    if status is not None:
        status.start()

    def report(done: int, total: int) -> None:
        nonlocal last
        if status is not None:
            status.update(f"{what}: {done}/{total} images")
        elif time.monotonic() - last >= 30 and done < total:
            last = time.monotonic()
            console.print(f"{what}: {done}/{total} images")

    try:
        yield report
    finally:
        if status is not None:
            status.stop()


def main() -> None:  # pragma: no cover - `python -m ablate`
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
