"""Report: :class:`~ablate.results.Results` -> markdown, CSV, LaTeX and JSON tables and a plot.

Reads nothing from disk; writes ``<out>/<study>/<profile>.{md,csv,tex,json,png}`` when asked
(:func:`write_reports`, each file atomically). Markdown and LaTeX show rounded numbers: mIoU in
percent with 2 decimals (``mean ± std (n=k)`` with two or more seeds), Params in M with 2 decimals
(deltas 3), FLOPs in G MACs with 2 decimals. CSV and JSON keep every number unrounded, for
machines. Every format opens with the profile label and states the conventions, above all how
FLOPs are counted, because the paper's counter and ours differ.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path

from ablate.errors import ReportError, one_of
from ablate.io import atomic_write
from ablate.results import ALPHA, MARKER, Results

FORMATS = {"md": ".md", "csv": ".csv", "latex": ".tex", "json": ".json", "png": ".png"}
# The tables; the plot on request (`png`, `all`): matplotlib's import alone takes longer than the rest.
DEFAULT_FORMATS = ["md", "csv", "latex", "json"]
DASH = "\u2014"  # a cell with no number


def parse_formats(names: list[str]) -> list[str]:
    """Validate ``--format`` values (repeatable, comma-separated or ``all``) into :data:`FORMATS` keys;
    none given: :data:`DEFAULT_FORMATS`."""
    wanted = []
    for name in (part.strip().lower() for item in names for part in item.split(",")):
        name = {"tex": "latex", "markdown": "md"}.get(name, name)
        if name == "all":
            wanted.extend(FORMATS)
        elif name in FORMATS:
            wanted.append(name)
        elif name:
            raise ReportError(one_of(name, "report format", [*FORMATS, "all"]))
    return list(dict.fromkeys(wanted)) or list(DEFAULT_FORMATS)


def write_reports(results: Results, out_dir: str | os.PathLike, formats: list[str]) -> list[Path]:
    """Write the chosen formats to ``out_dir/<study>/<profile>.<ext>``; returns the paths written."""
    renderers = {"md": render_markdown, "csv": render_csv, "latex": render_latex, "json": render_json}
    written = []
    for name in formats:
        path = Path(out_dir) / results.study / f"{results.profile}{FORMATS[name]}"
        with atomic_write(path) as tmp:
            if name == "png":
                plot(results, tmp)
            else:
                tmp.write_text(renderers[name](results))
        written.append(path)
    return written


# --------------------------------------------------------------------------- cells


def headers(results: Results) -> list[str]:
    """Column titles of the human-readable table (markdown and LaTeX)."""
    first, other = (results.compare_miou, "last" if results.compare_miou == "best" else "best")
    return ["variant", f"mIoU ({first})", "\u0394 base", "paper", "\u0394 paper", f"mIoU ({other})",
            "Params (M)", "\u0394 base", "paper", "FLOPs (G)", "\u0394 base", "paper", "status"]


def cells(results: Results) -> list[list[str]]:
    """One row of display strings per variant, in the order of :func:`headers` (unescaped unicode)."""
    first = f"miou_{results.compare_miou}"
    other = "miou_last" if results.compare_miou == "best" else "miou_best"
    out = []
    for rec in results.records():
        base = rec["is_baseline"]
        delta = DASH if base else _signed(rec[f"{first}_delta"], 2)
        p = rec[f"{first}_p"]
        if p is not None and p < ALPHA:
            delta += MARKER
        vs_paper = _signed(rec["miou_vs_paper"], 2)
        if rec["verdict"] == "within noise":
            vs_paper += " (within noise)"
        out.append([
            rec["label"],
            _mean(rec, first), delta, _num(rec["paper_miou"], 2), vs_paper,
            _mean(rec, other),
            _num(rec["params_m"], 2), DASH if base else _signed(rec["params_m_delta"], 3),
            _num(rec["paper_params_m"], 2) if base else _signed(rec["paper_params_m_delta"], 2),
            _num(rec["gmacs"], 2), DASH if base else _signed(rec["gmacs_delta"], 2),
            _num(rec["paper_gmacs"], 2) if base else _signed(rec["paper_gmacs_delta"], 2),
            rec["status"],
        ])
    return out


def lead(results: Results) -> list[str]:
    """The lines every format prints above its table: profile label first, then the baseline."""
    base_label = next(rec["label"] for rec in results.variants if rec["variant"] == results.baseline)
    return [
        results.profile_label,
        f"Baseline: {base_label} (`{results.baseline}`). Compared mIoU: the {results.compare_miou} "
        f"evaluation of each run; the other is shown too.",
    ]


def footer(results: Results) -> list[tuple[str, list[str]]]:
    """Sections below the table: conventions, notes, problems (runs left out)."""
    sections = [("Conventions", [f"{k}: {v}" for k, v in results.conventions.items()])]
    if results.notes:
        sections.append(("Notes", list(results.notes)))
    if results.problems:
        sections.append(("Left out (unreadable results)", list(results.problems)))
    return sections


def _mean(rec: dict, prefix: str) -> str:
    mean, std, n = rec[f"{prefix}_mean"], rec[f"{prefix}_std"], rec[f"{prefix}_n"]
    if mean is None:
        return DASH
    if n >= 2 and std is not None:
        return f"{mean:.2f} \u00b1 {std:.2f} (n={n})"
    return f"{mean:.2f}"


def _num(value, decimals: int) -> str:
    return DASH if value is None else f"{value:.{decimals}f}"


def _signed(value, decimals: int) -> str:
    if value is None:
        return DASH
    text = f"{value:+.{decimals}f}"
    return "+" + text[1:] if float(text) == 0 else text  # no "-0.00"


# --------------------------------------------------------------------------- formats


def render_markdown(results: Results) -> str:
    """A GitHub-flavoured markdown report: label, table, conventions, notes."""
    label, baseline = lead(results)
    lines = [f"# {_md(results.title)}", "", f"> **{_md(label)}**", "", _md(baseline), ""]
    head = headers(results)
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join([":---"] + ["---:"] * (len(head) - 2) + [":---"]) + "|")
    lines.extend("| " + " | ".join(_md(c) for c in row) + " |" for row in cells(results))
    for title, items in footer(results):
        lines += ["", f"**{title}**", ""] + [f"- {_md(item)}" for item in items]
    return "\n".join(lines) + "\n"


def render_csv(results: Results) -> str:
    """One row per variant with every number unrounded; ``#`` lines on top carry label and conventions.

    Read it back with ``pandas.read_csv(path, comment="#")`` or by skipping lines starting with ``#``.
    """
    buffer = io.StringIO()
    for line in lead(results) + [f"{k}: {v}" for k, v in results.conventions.items()]:
        buffer.write(f"# {line}\n")
    columns, rows = results.table()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if v is None else ";".join(map(str, v)) if isinstance(v, list) else repr(v)
                         if isinstance(v, float) else v for v in row])
    return buffer.getvalue()


def render_json(results: Results) -> str:
    """The machine-readable report (:meth:`Results.to_dict`), numbers unrounded, no NaN."""
    return json.dumps(results.to_dict(), indent=2, allow_nan=False, default=str) + "\n"


def render_latex(results: Results) -> str:
    """A booktabs ``table`` (needs ``\\usepackage{booktabs}``), every text cell escaped."""
    label, baseline = lead(results)
    head = headers(results)
    spec = "l" + "r" * (len(head) - 2) + "l"
    lines = [
        f"% {results.title} ({results.profile} profile), written by `ablate report`; needs booktabs",
        "\\begin{table}[t]",
        "\\centering",
        "\\small",
        f"\\caption{{{latex_escape(results.title)}. {latex_escape(label)}.}}",
        f"\\label{{tab:{_label_key(results.study)}-{_label_key(results.profile)}}}",
        f"\\begin{{tabular}}{{{spec}}}",
        "\\toprule",
        " & ".join(latex_escape(h) for h in head) + " \\\\",
        "\\midrule",
    ]
    lines.extend(" & ".join(latex_escape(c) for c in row) + " \\\\" for row in cells(results))
    lines += ["\\bottomrule", "\\end{tabular}", "", "\\smallskip", "{\\footnotesize", latex_escape(baseline)]
    for title, items in footer(results):
        lines.append(f"\\par\\textbf{{{latex_escape(title)}.}}")
        lines.extend(f"\\par {latex_escape(item)}" for item in items)
    lines += ["\\par}", "\\end{table}"]
    return "\n".join(lines) + "\n"


_LATEX = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
    "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}", ">": r"\textgreater{}",
    "|": r"\textbar{}",
    "\u0394": r"$\Delta$", "\u00b1": r"$\pm$", MARKER: r"$^\dagger$", DASH: "---", "\u2212": "$-$",
    "\u2264": r"$\leq$", "\u00d7": r"$\times$",
}


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters in one pass; `code` spans become ``\\texttt``."""
    escaped = "".join(_LATEX.get(ch, ch) for ch in str(text))
    return re.sub(r"`([^`]*)`", r"\\texttt{\1}", escaped)


def _md(text: str) -> str:
    return str(text).replace("|", "\\|")


def _label_key(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-") or "x"


# --------------------------------------------------------------------------- plot


def plot(results: Results, path: str | os.PathLike) -> Path:
    """mIoU against GMACs: the paper's points hollow, ours filled (± std), each labelled by variant."""
    # lazy, and without pyplot: no global figure state, the Agg canvas renders without a display
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(7.0, 4.8))
    FigureCanvasAgg(fig)
    # fixed margins: a layout engine would draw the figure twice, and plotting must stay fast
    fig.subplots_adjust(left=0.09, right=0.97, bottom=0.11, top=0.88)
    ax = fig.add_subplot()
    prefix = f"miou_{results.compare_miou}"
    paper, ours, labels = [], [], []  # (x, y, color), (x, y, std, color), (text, (x, y), color)
    for i, rec in enumerate(results.records()):
        color = f"C{i % 10}"
        label_at = None
        if rec["paper_gmacs"] is not None and rec["paper_miou"] is not None:
            label_at = (rec["paper_gmacs"], rec["paper_miou"])
            paper.append((*label_at, color))
        if rec["gmacs"] is not None and rec[f"{prefix}_mean"] is not None:
            label_at = (rec["gmacs"], rec[f"{prefix}_mean"])
            ours.append((*label_at, rec[f"{prefix}_std"] or 0.0, color))
        if label_at is not None:  # ours when measured, else the paper's point
            labels.append((rec["label"], label_at, color))
    if labels:  # right of the point, or left of it in the right part of the plot (not cut off)
        xs = [at[0] for _, at, _ in labels]
        split = min(xs) + 0.6 * (max(xs) - min(xs))
        for text, at, color in labels:
            left = at[0] > split  # never when all points share one x (then split is that x)
            ax.annotate(text, at, textcoords="offset points", xytext=(-7 if left else 7, 5), fontsize=8,
                        color=color, ha="right" if left else "left")
    # one call per kind of mark: each matplotlib artist costs milliseconds, reports must stay fast
    if paper:
        x, y, colors = zip(*paper)
        ax.scatter(x, y, s=80, facecolors="none", edgecolors=colors, linewidths=1.5)
    if ours:
        x, y, std, colors = zip(*ours)
        ax.vlines(x, [m - s for m, s in zip(y, std)], [m + s for m, s in zip(y, std)], colors=colors, linewidth=1.5)
        ax.scatter(x, y, s=60, c=colors, zorder=3)
    ax.legend(handles=[
        Line2D([], [], marker="o", linestyle="", markerfacecolor="none", markeredgecolor="0.3", label="paper"),
        Line2D([], [], marker="o", linestyle="", color="0.3", label=f"measured ({results.profile} profile)"),
    ], loc="best", fontsize=8)
    shape = "x".join(str(s) for s in results.input_shape)
    ax.set_xlabel(f"GMACs, one {shape} image, inference (paper: hook counter, no matrix products)")
    ax.set_ylabel(f"mIoU (%), {results.compare_miou} evaluation")
    ax.set_title(f"{results.title}\n{results.profile_label}", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.15, y=0.1)  # room for the labels beside the points
    if not paper and not ours:
        ax.text(0.5, 0.5, "no numbers to plot yet", transform=ax.transAxes, ha="center", va="center")
    fig.savefig(path, format="png", dpi=100)
    return Path(path)
