"""The ``ablate`` command line: thin wrappers that parse, call one stage, and print with rich.

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
)
data_app = typer.Typer(help="Datasets: make the synthetic smoke set, check a real ADE20K tree.", no_args_is_help=True)
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
    """Write one resolved config.py per run (variant x seed) of a profile."""
    from ablate import configs as cfgs

    spec, profile = _study_and_profile(study, profile)
    console = _console()
    runs = spec.runs(profile)
    resolved = [cfgs.resolve(spec, run, data_root=data_root) for run in runs]  # every error before any write
    for run, cfg in zip(runs, resolved):
        target = (out / run.variant / f"seed{run.seed}" / "config.py") if out else run.work_dir / "config.py"
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


def main() -> None:  # pragma: no cover - `python -m ablate`
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
