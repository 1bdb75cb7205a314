"""Report: :class:`~ablate.results.Results` -> markdown, CSV, LaTeX and JSON tables and a plot.

Reads nothing from disk; writes ``<out>/<study>/<profile>.{md,csv,tex,json,png}`` when asked
(:func:`write_reports`, each file atomically). Every format renders from the Results' frames:

- Markdown and LaTeX show :func:`cells`, a frame of display strings: mIoU in percent with 2
  decimals (``mean ± std (n=k)`` with two or more seeds), Params in M with 2 decimals (deltas 3),
  FLOPs in G MACs with 2 decimals. Both open with the profile label and state the conventions,
  above all how FLOPs are counted, because the paper's counter and ours differ.
- CSV is :func:`csv_frame` through ``DataFrame.to_csv``: one header row (``variant`` and the
  columns of ``Results.variants``), one row per variant, numbers rounded as the tables show them
  (p-values to 3 significant digits), so that ``pandas.read_csv`` and spreadsheets read it as is.
  It carries no prose: the profile label and the conventions are in the Markdown and the JSON.
- JSON is :meth:`Results.to_dict`: every number unrounded, with label, conventions, notes, problems,
  variants, effects, claims and runs.

A study with factors or claims also gets, in the markdown and LaTeX, an effects table (each term:
its contrast, estimate, 95 % interval over seeds, n, the paper's implied value) and a claims table
(each claim: the difference it tests with its interval, the paper's, the verdict); the plot gets a
second panel with those estimates and intervals, the paper's values marked. Columns and legend
entries about the paper appear only when the study has paper numbers for them.

Checkpoints evaluated by ``ablate eval`` (``Results.released``) are a table of their own, "Released
weights", below the variants' in markdown and LaTeX (:func:`released_cells`), ``released_weights``
in the JSON, and ``<profile>.released.csv`` beside the CSV (one row per checkpoint, so not in the
one-row-per-variant CSV). Without evaluations none of these is there.
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import pandas as pd

from ablate.errors import ReportError, one_of
from ablate.io import atomic_write
from ablate.results import ALPHA, FLOPS, MARKER, MIOU, PARAMS, MiouColumns, Results

FORMATS = {"md": ".md", "csv": ".csv", "latex": ".tex", "json": ".json", "png": ".png"}
# The tables; the plot on request (`png`, `all`): matplotlib's import alone takes longer than the rest.
DEFAULT_FORMATS = ["md", "csv", "latex", "json"]
DASH = "\u2014"  # a cell with no number
# Decimals of the CSV's numbers: those the tables print (the paper's deltas as the paper prints them).
CSV_DECIMALS = {
    **{column: 2 for cols in MIOU.values() for column in (cols.mean, cols.std, cols.delta)},
    "paper_miou": 2, "miou_vs_paper": 2,
    PARAMS.ours: 2, PARAMS.delta: 3, PARAMS.paper: 2, PARAMS.paper_delta: 2, PARAMS.vs_paper: 3,
    FLOPS.ours: 2, FLOPS.delta: 2, FLOPS.paper: 2, FLOPS.paper_delta: 2, FLOPS.vs_paper: 2,
}
P_DIGITS = 3  # significant digits of a p-value in the CSV (the tables show only the marker)


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
        if name == "csv":
            written.extend(_write_released_csv(results, path.with_name(f"{results.profile}.released.csv")))
    return written


def _write_released_csv(results: Results, path: Path) -> list[Path]:
    """The released-weights CSV, or no file (and none left from an earlier report) without evaluations."""
    if not len(results.released):
        path.unlink(missing_ok=True)
        return []
    with atomic_write(path) as tmp:
        tmp.write_text(render_released_csv(results))
    return [path]


# --------------------------------------------------------------------------- cells


def headers(results: Results) -> list[str]:
    """Column titles of the human-readable table (markdown and LaTeX)."""
    return ["variant", f"mIoU ({results.compare_miou})", "\u0394 base", "paper", "\u0394 paper",
            f"mIoU ({'last' if results.compare_miou == 'best' else 'best'})",
            "Params (M)", "\u0394 base", "paper", "FLOPs (G)", "\u0394 base", "paper", "status"]


def cells(results: Results) -> pd.DataFrame:
    """The human-readable table: display strings (unescaped unicode), one row per variant.

    Its columns are :func:`headers`, some of which repeat ("paper"): read it by position.
    """
    v, first, base = results.variants, results.compared, results.variants["is_baseline"]
    delta = _signed(v[first.delta], 2).mask(base, DASH)
    delta = delta.mask(v[first.p].lt(ALPHA), delta + MARKER)
    vs_paper = _signed(v["miou_vs_paper"], 2)
    vs_paper = vs_paper.mask(v["verdict"].eq("within noise"), vs_paper + " (within noise)")
    columns = [
        v["label"], _mean(v, first), delta, _num(v["paper_miou"], 2), vs_paper, _mean(v, results.other),
        # the paper prints Params and FLOPs of non-baseline rows as deltas to its baseline
        _num(v[PARAMS.ours], 2), _signed(v[PARAMS.delta], 3).mask(base, DASH),
        _num(v[PARAMS.paper], 2).where(base, _signed(v[PARAMS.paper_delta], 2)),
        _num(v[FLOPS.ours], 2), _signed(v[FLOPS.delta], 2).mask(base, DASH),
        _num(v[FLOPS.paper], 2).where(base, _signed(v[FLOPS.paper_delta], 2)),
        v["status"],
    ]
    table = pd.concat(columns, axis=1).set_axis(headers(results), axis=1)
    # a study without paper numbers of a kind gets no columns for them (a dsconv row without them: dashes)
    unused = {3: "paper_miou", 4: "miou_vs_paper", 8: PARAMS.paper, 11: FLOPS.paper}
    keep = [i for i in range(table.shape[1]) if i not in unused or v[unused[i]].notna().any()]
    return table.iloc[:, keep]


def effect_cells(results: Results) -> pd.DataFrame:
    """The effects table as display strings: term, contrast, estimate, 95 % CI, n (and paper, when given)."""
    e = results.effects
    table = pd.DataFrame({
        "term": e.index.astype(str), "contrast": e["contrast"], "estimate": _signed(e["estimate"], 2),
        "95 % CI": [_interval(lo, hi, n) for lo, hi, n in e[["ci_low", "ci_high", "n"]].itertuples(index=False)],
        "n": e["n"].astype(int).astype(str), "paper": _signed(e["paper"], 2)}, index=e.index)
    return table if e["paper"].notna().any() else table.drop(columns="paper")


def claim_cells(results: Results) -> pd.DataFrame:
    """The claims table as display strings: one row per claim, its comparisons' differences joined by ``;``."""
    rows = []
    for record in results.claim_records():
        parts = record["parts"]
        several = len(parts) > 1
        rows.append({
            "claim": record["claim"], "test": record["test"],
            "difference [95 % CI]": "; ".join(
                f"{p['contrast']}: " + (f"{DASH} (n={p['n']})" if p["estimate"] is None else
                                        f"{_signed_one(p['estimate'])} {_interval(p['ci_low'], p['ci_high'], p['n'])}")
                + (f" ({p['verdict']})" if several else "") for p in parts),
            "paper": "; ".join(_signed_one(p["paper"]) for p in parts),
            "verdict": (f"{record['verdict']} at n={record['n']}" if record["n"] >= 2
                        else f"{record['verdict']} (n={record['n']}: no interval)"),
        })
    table = pd.DataFrame(rows, columns=["claim", "test", "difference [95 % CI]", "paper", "verdict"])
    has_paper = results.claims["paper"].notna().any()
    return table if has_paper else table.drop(columns="paper")


def evidence_title(results: Results, kind: str) -> str:
    """``Effects on the best mIoU, 95 % intervals over seeds``."""
    return f"{kind} on the {results.compare_miou} mIoU, 95 % intervals over seeds"


def _interval(low, high, n) -> str:
    if low is None or high is None or pd.isna(low) or pd.isna(high):
        return f"unknown (n={int(n)})"
    return f"[{_signed_one(low)}, {_signed_one(high)}]"


def _signed_one(x) -> str:
    return _signed(pd.Series([math.nan if x is None else x], dtype=float), 2).iloc[0]


def lead(results: Results) -> list[str]:
    """The lines the markdown and LaTeX print above their table: profile label first, then the baseline."""
    base_label = results.variants.at[results.baseline, "label"]
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


RELEASED_TITLE = "Released weights"


def released_headers(results: Results) -> list[str]:
    """Column titles of the released-weights table (markdown and LaTeX)."""
    return ["variant", "checkpoint", "format", "mIoU", f"\u0394 ours ({results.compare_miou})", "paper",
            "\u0394 paper", "aAcc", "mAcc", "sha256"]


def released_cells(results: Results) -> pd.DataFrame:
    """The released-weights table: display strings, one row per evaluated checkpoint (read by position)."""
    r = results.released
    columns = [r["label"], r["checkpoint"], r["format"], _num(r["miou"], 2), _signed(r["miou_vs_trained"], 2),
               _num(r["paper_miou"], 2), _signed(r["miou_vs_paper"], 2), _num(r["aacc"], 2), _num(r["macc"], 2),
               r["sha256"].str[:12]]
    return pd.concat(columns, axis=1).set_axis(released_headers(results), axis=1)


def released_lead(results: Results) -> str:
    """The sentence above the released-weights table."""
    return (f"Checkpoints evaluated by `ablate eval` with each variant's model on this profile's validation split; "
            f"\u0394 ours: against our trained runs' {results.compare_miou} mIoU; sha256: the file's, first 12 digits.")


def _released_markdown(results: Results) -> list[str]:
    """The lines of the released-weights section (none without evaluations)."""
    if not len(results.released):
        return []
    released = released_cells(results)
    lines = ["", f"**{RELEASED_TITLE}**", "", _md(released_lead(results)), "",
             "| " + " | ".join(released.columns) + " |", "|:---|:---|:---|" + "---:|" * 6 + ":---|"]
    rows = released.itertuples(index=False, name=None)
    return lines + ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]


def _released_latex(results: Results) -> list[str]:
    """The released-weights tabular, below the variants' in the same table (nothing without evaluations)."""
    if not len(results.released):
        return []
    released = released_cells(results)
    lines = ["", "\\medskip", f"\\textbf{{{RELEASED_TITLE}.}} {latex_escape(released_lead(results))}\\par",
             "\\smallskip", "\\begin{tabular}{lll" + "r" * 6 + "l}", "\\toprule",
             " & ".join(latex_escape(h) for h in released.columns) + " \\\\", "\\midrule"]
    lines += [" & ".join(latex_escape(c) for c in row) + " \\\\" for row in released.itertuples(index=False, name=None)]
    return lines + ["\\bottomrule", "\\end{tabular}"]


def _mean(v: pd.DataFrame, cols: MiouColumns) -> pd.Series:
    """``mean ± std (n=k)`` with two or more seeds, the mean alone with one, a dash with none."""
    def text(mean, std, n):
        if pd.isna(mean):
            return DASH
        return f"{mean:.2f} \u00b1 {std:.2f} (n={n})" if n >= 2 and not pd.isna(std) else f"{mean:.2f}"

    return pd.Series([text(*row) for row in v[[cols.mean, cols.std, cols.n]].itertuples(index=False)],
                     index=v.index, dtype=object)


def _num(values: pd.Series, decimals: int) -> pd.Series:
    return values.map(lambda x: DASH if pd.isna(x) else f"{x:.{decimals}f}").astype(object)


def _signed(values: pd.Series, decimals: int) -> pd.Series:
    def text(x):
        if pd.isna(x):
            return DASH
        signed = f"{x:+.{decimals}f}"
        return "+" + signed[1:] if float(signed) == 0 else signed  # no "-0.00"

    return values.map(text).astype(object)


# --------------------------------------------------------------------------- formats


def render_markdown(results: Results) -> str:
    """A GitHub-flavoured markdown report: label, table, conventions, notes."""
    label, baseline = lead(results)
    lines = [f"# {_md(results.title)}", "", f"> **{_md(label)}**", "", _md(baseline), ""]
    table = cells(results)
    lines.append("| " + " | ".join(table.columns) + " |")
    lines.append("|" + "|".join([":---"] + ["---:"] * (table.shape[1] - 2) + [":---"]) + "|")
    lines.extend("| " + " | ".join(_md(c) for c in row) + " |" for row in table.itertuples(index=False, name=None))
    for kind, extra in (("Effects", effect_cells), ("Claims", claim_cells)):
        frame = getattr(results, kind.lower())
        if frame.empty:
            continue
        cells_ = extra(results)
        lines += ["", f"**{evidence_title(results, kind)}**", "",
                  "| " + " | ".join(cells_.columns) + " |",
                  "|" + "|".join(":---" if c in _TEXT_COLUMNS else "---:" for c in cells_.columns) + "|"]
        lines.extend("| " + " | ".join(_md(c) for c in row) + " |" for row in cells_.itertuples(index=False, name=None))
    lines += _released_markdown(results)
    for title, items in footer(results):
        lines += ["", f"**{title}**", ""] + [f"- {_md(item)}" for item in items]
    return "\n".join(lines) + "\n"


_TEXT_COLUMNS = ("term", "contrast", "claim", "test", "difference [95 % CI]", "verdict")
# LaTeX: the claims' prose wraps within the page instead of running off it
_WRAPPED = {"claim": "p{0.2\\linewidth}", "test": "p{0.18\\linewidth}", "difference [95 % CI]": "p{0.3\\linewidth}"}


def csv_frame(results: Results) -> pd.DataFrame:
    """``Results.variants`` as the CSV holds it: numbers rounded as the tables print them, seeds as ``0;1``."""
    out = results.variants.copy()
    for column, decimals in CSV_DECIMALS.items():
        out[column] = _rounded(out[column], decimals)
    for cols in MIOU.values():  # a p-value's size matters, not its decimals: 0.0303, 1.2e-05
        out[cols.p] = out[cols.p].map(lambda p: float(f"{p:.{P_DIGITS}g}"))
    out["seeds_done"] = out["seeds_done"].map(lambda seeds: ";".join(map(str, seeds)))
    return out


def _rounded(values: pd.Series, decimals: int) -> pd.Series:
    # through the same formatting as the tables: DataFrame.round scales and rounds in binary, and can
    # differ from the printed number (1.115 -> 1.12 there, "1.11" printed); + 0.0 turns -0.0 into 0.0
    return values.map(lambda x: float(f"{x:.{decimals}f}") + 0.0)


def render_csv(results: Results) -> str:
    """One header row and one row per variant (:func:`csv_frame`); ``pandas.read_csv`` reads it back."""
    return csv_frame(results).to_csv(lineterminator="\n")


def render_released_csv(results: Results) -> str:
    """``Results.released`` with its numbers rounded as the tables print them; one row per checkpoint."""
    out = results.released.copy()
    for column in ("miou", "aacc", "macc", "trained_miou", "miou_vs_trained", "paper_miou", "miou_vs_paper"):
        out[column] = _rounded(out[column], 2)
    return out.to_csv(index=False, lineterminator="\n")


def render_json(results: Results) -> str:
    """The machine-readable report (:meth:`Results.to_dict`), numbers unrounded, no NaN."""
    return json.dumps(results.to_dict(), indent=2, allow_nan=False, default=str) + "\n"


def render_latex(results: Results) -> str:
    """A booktabs ``table`` (needs ``\\usepackage{booktabs}``), every text cell escaped."""
    label, baseline = lead(results)
    table = cells(results)
    spec = "l" + "r" * (table.shape[1] - 2) + "l"
    lines = [
        f"% {results.title} ({results.profile} profile), written by `ablate report`; needs \\usepackage{{booktabs}}",
        "\\begin{table}[t]",
        "\\centering",
        "\\small",
        f"\\caption{{{latex_escape(results.title)}. {latex_escape(label)}.}}",
        f"\\label{{tab:{_label_key(results.study)}-{_label_key(results.profile)}}}",
        f"\\begin{{tabular}}{{{spec}}}",
        "\\toprule",
        " & ".join(latex_escape(h) for h in table.columns) + " \\\\",
        "\\midrule",
    ]
    lines.extend(" & ".join(latex_escape(c) for c in row) + " \\\\"
                 for row in table.itertuples(index=False, name=None))
    lines += ["\\bottomrule", "\\end{tabular}", *_released_latex(results)]
    lines += ["", "\\smallskip", "{\\footnotesize", latex_escape(baseline)]
    for title, items in footer(results):
        lines.append(f"\\par\\textbf{{{latex_escape(title)}.}}")
        lines.extend(f"\\par {latex_escape(item)}" for item in items)
    lines += ["\\par}", "\\end{table}"]
    for kind, extra in (("Effects", effect_cells), ("Claims", claim_cells)):
        if not getattr(results, kind.lower()).empty:
            lines += ["", *_latex_table(extra(results), f"{evidence_title(results, kind)}. {label}",
                                        f"tab:{_label_key(results.study)}-{_label_key(results.profile)}-{kind.lower()}")]
    return "\n".join(lines) + "\n"


def _latex_table(table: pd.DataFrame, caption: str, key: str) -> list[str]:
    """One more booktabs table (effects, claims) below the main one."""
    spec = "".join(_WRAPPED.get(c, "l" if c in _TEXT_COLUMNS else "r") for c in table.columns)
    lines = ["\\begin{table}[t]", "\\centering", "\\small", f"\\caption{{{latex_escape(caption)}.}}",
             f"\\label{{{key}}}", f"\\begin{{tabular}}{{{spec}}}", "\\toprule",
             " & ".join(latex_escape(h) for h in table.columns) + " \\\\", "\\midrule"]
    lines.extend(" & ".join(latex_escape(c) for c in row) + " \\\\" for row in table.itertuples(index=False, name=None))
    return lines + ["\\bottomrule", "\\end{tabular}", "\\end{table}"]


_LATEX = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
    "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}", ">": r"\textgreater{}",
    "|": r"\textbar{}",
    "\u0394": r"$\Delta$", "\u00b1": r"$\pm$", MARKER: r"$^\dagger$", DASH: "---", "\u2212": "$-$",
    "\u2264": r"$\leq$", "\u00d7": r"$\times$", "\u00b7": r"$\cdot$",
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
    """mIoU against GMACs (the paper's points hollow, ours filled with ± std bars over seeds, each
    labelled by variant) and, for a study with factors or claims, its effects beside it."""
    # lazy, and without pyplot: no global figure state, the Agg canvas renders without a display
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    evidence = not (results.effects.empty and results.claims.empty)
    fig = Figure(figsize=(14.0, 4.8) if evidence else (7.0, 4.8))
    FigureCanvasAgg(fig)
    # fixed margins: a layout engine would draw the figure twice, and plotting must stay fast
    if evidence:  # the effects' labels need the room between the panels
        grid = fig.add_gridspec(1, 2, width_ratios=(1.15, 1.0), left=0.05, right=0.98, bottom=0.11, top=0.88,
                                wspace=0.32)
        _plot_miou(results, fig.add_subplot(grid[0]))
        _plot_effects(results, fig.add_subplot(grid[1]))
    else:
        fig.subplots_adjust(left=0.09, right=0.97, bottom=0.11, top=0.88)
        _plot_miou(results, fig.add_subplot())
    fig.savefig(path, format="png", dpi=100)
    return Path(path)


def _plot_miou(results: Results, ax) -> None:
    from matplotlib.lines import Line2D

    compared = results.compared
    paper, ours, labels = [], [], []  # (x, y, color), (x, y, std, color), (text, (x, y), color)
    for i, rec in enumerate(results.records()):
        color = f"C{i % 10}"
        label_at = None
        if rec["paper_gmacs"] is not None and rec["paper_miou"] is not None:
            label_at = (rec["paper_gmacs"], rec["paper_miou"])
            paper.append((*label_at, color))
        if rec["gmacs"] is not None and rec[compared.mean] is not None:
            label_at = (rec["gmacs"], rec[compared.mean])
            ours.append((*label_at, rec[compared.std] or 0.0, color))
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
    handles = []
    if paper:
        x, y, colors = zip(*paper)
        ax.scatter(x, y, s=80, facecolors="none", edgecolors=colors, linewidths=1.5)
        handles.append(Line2D([], [], marker="o", linestyle="", markerfacecolor="none", markeredgecolor="0.3",
                              label="paper"))
    if ours:
        x, y, std, colors = zip(*ours)
        low, high = [m - s for m, s in zip(y, std)], [m + s for m, s in zip(y, std)]
        ax.vlines(x, low, high, colors=colors, linewidth=1.5)
        caps = [(xi, yi + sign * s, c) for xi, yi, s, c in ours if s for sign in (-1, 1)]
        if caps:  # the ends of the bars: they are error bars, not lines
            cx, cy, cc = zip(*caps)
            ax.scatter(cx, cy, marker="_", s=60, c=cc, linewidths=1.5)
        ax.scatter(x, y, s=60, c=colors, zorder=3)
        handles.append(Line2D([], [], marker="o", linestyle="", color="0.3",
                              label=f"measured ({results.profile} profile), \u00b1 std over seeds"))
    if handles:
        ax.legend(handles=handles, loc="best", fontsize=8)
    shape = "x".join(str(s) for s in results.input_shape)
    counter = " (paper: hook counter, no matrix products)" if paper else ""
    ax.set_xlabel(f"GMACs, one {shape} image, inference{counter}")
    ax.set_ylabel(f"mIoU (%), {results.compare_miou} evaluation")
    ax.set_title(f"{results.title}\n{results.profile_label}", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.15, y=0.1)  # room for the labels beside the points
    if not paper and not ours:
        ax.text(0.5, 0.5, "no numbers to plot yet", transform=ax.transAxes, ha="center", va="center")


def _plot_effects(results: Results, ax) -> None:
    """Effects and claims' differences, top to bottom: estimate with its 95 % interval, the paper's value."""
    from matplotlib.lines import Line2D

    rows, seen = [], set()  # one dict per row; a claim's difference equal to an effect is shown once
    for term, e in results.effects.iterrows():
        rows.append({"label": str(term), **e[["estimate", "ci_low", "ci_high", "paper", "n"]]})
        seen.add(e["contrast"])
    for _, c in results.claims.iterrows():
        if c["contrast"] not in seen:
            rows.append({"label": c["comparison"], **c[["estimate", "ci_low", "ci_high", "paper", "n"]]})
            seen.add(c["contrast"])
    ys = list(range(len(rows), 0, -1))  # the first row on top
    for row in rows:
        row["interval"] = not (pd.isna(row["ci_low"]) or pd.isna(row["ci_high"]))
    known = [(y, r["ci_low"], r["ci_high"]) for y, r in zip(ys, rows) if r["interval"]]
    if known:
        ax.hlines(*zip(*known), color="C0", linewidth=2)
    points = [(r["estimate"], y) for y, r in zip(ys, rows) if not pd.isna(r["estimate"])]
    if points:
        ax.scatter(*zip(*points), s=40, color="C0", zorder=3)
    papers = [(r["paper"], y) for y, r in zip(ys, rows) if not pd.isna(r["paper"])]
    if papers:
        ax.scatter(*zip(*papers), s=70, marker="D", facecolors="none", edgecolors="C3", linewidths=1.5, zorder=4)
    ax.axvline(0.0, color="0.4", linewidth=1)
    ax.set_yticks(ys, [r["label"] + ("" if r["interval"] else f" (n={int(r['n'])}: no interval)") for r in rows],
                  fontsize=8)
    ax.set_ylim(0.3, len(rows) + 0.7)
    ax.set_xlabel(f"difference in mIoU (%), {results.compare_miou} evaluation")
    ax.set_title("effects and claims: estimate and 95 % interval over seeds", fontsize=9)
    ax.grid(True, axis="x", alpha=0.3)
    handles = [Line2D([], [], marker="o", color="C0", label="measured, 95 % interval")]
    if papers:
        handles.append(Line2D([], [], marker="D", linestyle="", markerfacecolor="none", markeredgecolor="C3",
                              label="paper (implied)"))
    ax.legend(handles=handles, loc="best", fontsize=8)
