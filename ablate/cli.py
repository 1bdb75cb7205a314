"""The ``ablate`` command line: thin wrappers that parse, call one stage, and print the outcome.

Each command imports its stage inside its body (lazy: keeps ``ablate --help`` fast; torch, mmseg,
submitit and wandb are never imported at start-up). User errors (:class:`~ablate.errors.AblateError`)
print as one line and exit with code 2; ``ABLATE_FULL_ERROR=1`` re-raises them with a traceback.
"""
from __future__ import annotations

import functools
import os
import sys
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
    """Print a study's variants, profiles, runs and the paper's numbers."""
    from rich.table import Table

    from ablate.study import METRICS, load_study

    spec = load_study(study)
    console = _console()
    console.print(f"[bold]{spec.title}[/]  ({spec.path})")
    console.print(f"base config: {spec.base}   baseline: {spec.baseline}   compare mIoU: {spec.compare_miou}"
                  f"   seeds: {list(spec.seeds)}   input: {'x'.join(map(str, spec.input_shape))}")
    table = Table("variant", "label", "overrides", *(f"paper {m}" for m in METRICS), title="variants")
    table.columns[0].no_wrap = True
    for v in spec.variants.values():
        overrides = "\n".join(f"{k} = {val!r}" for k, val in v.overrides.items()) or "(base config)"
        table.add_row(v.name, v.label, overrides, *(_fmt(v.paper.get(m)) for m in METRICS))
    console.print(table)
    table = Table("profile", "data", "seeds", "runs", "overridden keys", "description", title="profiles")
    table.columns[0].no_wrap = True
    for p in spec.profiles.values():
        table.add_row(p.name, p.data, str(list(p.seeds or spec.seeds)), str(len(spec.runs(p.name))),
                      str(len(p.overrides)), p.description)
    console.print(table)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:g}"


@app.command()
@user_errors
def configs(
    study: str = typer.Argument(..., help="Study name or path."),
    profile: Optional[str] = ProfileOpt,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write here instead of each run's work_dir."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Dataset root for every dataloader."),
) -> None:
    """Write one resolved config.py per run (variant x seed) of a profile: what `ablate run` trains.

    The data root is the one `ablate run` would use (--data-root, or the synthetic set of a smoke
    profile); a real-data profile without --data-root keeps the base config's. A run folder that
    `ablate run` has launched keeps its config.py (the config it trains with); `--out` writes elsewhere.
    """
    from ablate import configs as cfgs
    from ablate.launch.orchestrate import data_root_for
    from ablate.runs import RunInfo, folder

    spec, profile = _study_and_profile(study, profile)
    console = _console()
    runs = spec.runs(profile)
    if data_root is not None or spec.profile(profile).data == "synthetic":
        data_root = data_root_for(spec, profile, data_root, create=False)
    resolved = [cfgs.resolve(spec, run, data_root=data_root) for run in runs]  # every error before any write
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
    a: str = typer.Argument(..., help="First variant."),
    b: str = typer.Argument(..., help="Second variant."),
    profile: Optional[str] = ProfileOpt,
) -> None:
    """Print the config keys that differ between two variants of a study."""
    from rich.table import Table

    from ablate import configs as cfgs

    spec, profile = _study_and_profile(study, profile)
    run_a, run_b = (spec.runs(profile, variants=[v])[0] for v in (a, b))
    rows = cfgs.diff(cfgs.resolve(spec, run_a), cfgs.resolve(spec, run_b), ignore=("work_dir", "ablate"))
    if not rows:
        _console().print(f"`{a}` and `{b}` resolve to the same config under profile `{profile}`")
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
        None, "--sec-per-iter", help="Seconds per training iteration (default: measured, else the profile's)."),
) -> None:
    """Print the runs of a profile, their iterations and the estimated compute cost."""
    from ablate.plan import plan_study, render_plan

    spec, profile = _study_and_profile(study, profile)
    render_plan(_console(), plan_study(spec, profile, sec_per_iter))


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
) -> None:
    """Collect a profile's runs and write its table (markdown, CSV, LaTeX, JSON; `-f all`: also a plot).

    Exits 1 when a result.json cannot be read: that run is named and left out, the rest is reported.
    """
    # lazy: matplotlib loads only for the PNG, scipy only for a paired t-test (2+ seeds), torch and
    # mmseg only when measuring, wandb only to log. The output is plain text: typer.echo, not rich.
    from ablate import tracking
    from ablate.collect import collect, measure_variants, with_measurements
    from ablate.errors import ReportError
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
    problems = collection.problems
    if not problems and all(s.status.value in ("pending", "queued") for s in collection.states):
        where = WorkRoot.of(None).profile_dir(spec.name, profile)
        resumable = sum(s.checkpoint is not None for s in collection.states)
        state = (f"{resumable} of {len(collection.states)} can resume from a checkpoint" if resumable
                 else "none has started")
        raise ReportError(f"no finished, running or failed runs of `{spec.name}` (profile `{profile}`) in "
                          f"{where}/ ({state}); run them with `ablate run {study} --profile {profile}`")
    if measure:
        collection = with_measurements(collection, measure_variants(spec, profile))
    results = summarize(spec, profile, collection.runs, collection.measurements, problems)
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
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Seeds, comma-separated (default: the profile's)."),
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
    partition: Optional[str] = typer.Option(None, "--partition", help="Slurm partition (default: the study's)."),
    account: Optional[str] = typer.Option(None, "--account", help="Slurm account (default: the study's)."),
    timeout_min: Optional[int] = typer.Option(None, "--time", help="Slurm time limit per job, minutes; a job "
                                                                   "that hits it requeues and resumes."),
    cpus_per_run: Optional[int] = typer.Option(None, "--cpus-per-run", help="Slurm CPU cores per run."),
    use_wandb: Optional[bool] = typer.Option(None, "--wandb/--no-wandb", help="Log every run to Weights & Biases, "
                                             "grouped as STUDY/PROFILE (default: the study's `wandb.enabled`); "
                                             "WANDB_MODE=offline logs locally for `wandb sync`."),
) -> None:
    """Train and evaluate every run of a profile that is not done; finished runs are skipped, others resume.

    Exits 1 when a run failed (the others still ran; `ablate status` shows why), 2 on bad input.
    """
    # lazy: keeps `--help` fast; torch loads only for --gpus, submitit only for slurm
    from ablate import tracking  # light: wandb is imported only by what logs (the workers)
    from ablate.errors import LaunchError
    from ablate.launch import make_launcher
    from ablate.launch.orchestrate import data_root_for, describe, plan_runs, run_study

    spec, profile = _study_and_profile(study, profile)
    runs = spec.runs(profile, variants=_csv(variants, "--variants"), seeds=_csv(seeds, "--seeds", int))
    backend = make_launcher(launcher, spec, gpus=gpus, gpus_per_run=gpus_per_run, partition=partition,
                            account=account, timeout_min=timeout_min, cpus_per_run=cpus_per_run)
    root = data_root_for(spec, profile, data_root, create=not dry_run)
    overrides = None
    if tracking.enabled(spec, use_wandb):
        tracking.require(LaunchError)
        overrides = tracking.overrides_for(spec)  # a W&B backend in each config.py; workers log
    console = _console()
    if dry_run:
        _print_plan(console, plan_runs(spec, runs, root, restart, overrides), backend, root)
        return
    outcomes = run_study(spec, runs, backend, root, restart=restart, detach=detach, overrides=overrides,
                         console=console)
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


def _print_plan(console, planned, backend, root) -> None:
    from rich.table import Table

    table = Table("run", "action", "detail", "run key", box=None, title="dry run: nothing is launched")
    for p in planned:
        table.add_row(p.run.key, p.action, p.note, p.key)
    console.print(table)
    console.print(f"launcher {backend.name}, {backend.processes_per_run} process(es) per run; data {root}")


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


def main() -> None:  # pragma: no cover - `python -m ablate`
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
