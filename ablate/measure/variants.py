"""A study's variants measured once each, and the table that ``ablate measure`` prints.

Reads a loaded :class:`~ablate.study.Study` and resolves one config per variant
(``ablate.configs``); the seed does not change the model, so the first seed stands for all.
Writes each measurement to the cache (``ablate.measure.cache``) and, when asked, prints the
Params / GMACs table, with deltas against the baseline and the paper's numbers, and per-variant
audits of what was and was not counted to a rich console.
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Callable

from ablate.measure.cache import default_cache_dir, measure_cached, model_hash
from ablate.measure.model import measure_config, measure_latency


def parse_shape(text: str) -> tuple[int, int, int]:
    """``"3,512,512"`` (or ``3x512x512``) -> ``(3, 512, 512)``; ValueError otherwise."""
    parts = [p for p in re.split(r"[,x\s]+", text.strip()) if p]
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"`{text}` is not C,H,W (three positive integers, e.g. 3,512,512)")
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


def measure_study(study, profile: str, input_shape=None, variants: list[str] | None = None,
                  cache_dir: str | os.PathLike | None = None, use_cache: bool = True,
                  latency: dict | None = None, progress: Callable[[str, dict, float], None] | None = None
                  ) -> dict[str, dict]:
    """Measure each variant of a study once (the seed does not change the model).

    Args:
        study: a loaded :class:`~ablate.study.Study`.
        profile: the profile whose configs are resolved.
        input_shape: (C, H, W); default the study's ``input_shape``.
        variants: a subset of variant names, or None for all.
        cache_dir: see :func:`measure_cached`; ``use_cache=False`` measures again and refreshes it.
        latency: keyword arguments of :func:`measure_latency` (``device``, ``warmup``, ``repeats``),
            or None not to time.
        progress: called as ``progress(variant, None, 0.0)`` before and
            ``progress(variant, measurement, seconds)`` after each variant.

    Returns:
        ``{variant: measurement}`` in the study's order.
    """
    from ablate import configs

    shape = tuple(input_shape or study.input_shape)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    results: dict[str, dict] = {}
    for run in study.runs(profile, variants=variants, seeds=[study.seeds[0]]):
        if progress is not None:
            progress(run.variant, None, 0.0)
        start = time.perf_counter()
        cfg = configs.resolve(study, run)
        if use_cache:
            result = measure_cached(cfg, shape, cache)
        else:
            from ablate.io import write_json

            result = {**measure_config(cfg, shape), "model_hash": model_hash(cfg, shape)}
            write_json(cache / f"{result['model_hash']}.json", result)
            result["cached"] = False
        if latency is not None:
            result.update(measure_latency(cfg, shape, **latency))
        results[run.variant] = result
        if progress is not None:
            progress(run.variant, result, time.perf_counter() - start)
    return results


def render_measurements(console, study, results: dict[str, dict], audit: bool = False) -> None:
    """Print the Params / GMACs table (with deltas and the paper's numbers) and, with ``audit``,
    each variant's GMACs by kind and operator and every operator not counted."""
    from rich.table import Table

    if audit:
        for name, result in results.items():
            _render_audit(console, name, result)
    base = results.get(study.baseline)
    timed = any("latency_ms" in r for r in results.values())
    shape = "x".join(map(str, next(iter(results.values()))["input_shape"])) if results else "?"
    table = Table(title=f"{study.name}: Params and GMACs for one {shape} image, inference")
    table.add_column("variant", no_wrap=True)
    for column in ("Params (M)", "Δ", "GMACs", "Δ", "paper Params", "paper FLOPs") + (
            ("latency (ms)",) if timed else ()):
        table.add_column(column, justify="right")
    for name, result in results.items():
        paper = study.variant(name).paper
        is_base = name == study.baseline
        row = [name, f"{result['params_m']:.3f}", _delta(result, base, "params_m", is_base, 3),
               f"{result['gmacs']:.2f}", _delta(result, base, "gmacs", is_base, 2),
               _paper(paper, study, "Params", is_base), _paper(paper, study, "FLOPs", is_base)]
        if timed:
            row.append(f"{result['latency_ms']:.1f}" if "latency_ms" in result else "-")
        table.add_row(*row)
    console.print(table)
    console.print("GMACs: multiply-accumulates (G) of mmseg's get_flops forward, which mmseg/mmengine "
                  "tables print as GFLOPs; every matrix product counts, SDPA and CARAFE included.")
    devices = sorted({r["device"] for r in results.values() if "device" in r})
    if devices:
        console.print(f"latency: median of timed forward passes after warm-up, batch 1, on {', '.join(devices)}")
    for name, result in results.items():
        note = uncounted_note(result)
        if note:
            console.print(f"[yellow]{name}: {note}[/]")


def uncounted_note(measurement: dict) -> str | None:
    """A report note when the counter met operators of unknown cost, else None."""
    uncounted = measurement.get("uncounted") or {}
    if not uncounted:
        return None
    ops = ", ".join(f"{op} x{n}" for op, n in uncounted.items())
    return f"FLOPs may be too low: operators not counted ({ops}); see `ablate measure --audit`"


def _delta(result, base, key, is_base, digits) -> str:
    if is_base or base is None:
        return "-"
    return f"{result[key] - base[key]:+.{digits}f}"


def _paper(paper: dict, study, metric: str, is_base: bool) -> str:
    value = paper.get(metric)
    if value is None:
        return "-"
    base = study.variant(study.baseline).paper.get(metric)
    if is_base or base is None:
        return f"{value:g}"
    return f"{value - base:+.2f}"


def _render_audit(console, name: str, result: dict) -> None:
    from rich.table import Table

    total = result["gmacs"] or 1.0
    table = Table(box=None, title_justify="left",
                  title=f"{name}: {result['gmacs']:.3f} GMACs, {result['params_m']:.3f} M params")
    table.add_column("operator")
    table.add_column("kind")
    for column in ("calls", "GMACs", "share"):
        table.add_column(column, justify="right")
    for kind, gmacs in result["gmacs_by_kind"].items():
        table.add_row(f"[bold]{kind}[/]", "", "", f"[bold]{gmacs:.4f}[/]", f"{gmacs / total:.1%}")
    for op, (calls, gmacs) in result.get("ops", {}).items():
        label, _, kind = op.partition(" [")
        table.add_row(f"  {label}", kind.rstrip("]"), str(calls), f"{gmacs:.4f}", f"{gmacs / total:.1%}")
    console.print(table)
    uncounted = result.get("uncounted") or {}
    console.print("  not counted, cost unknown: " + (", ".join(f"{op} x{n}" for op, n in uncounted.items())
                                                    if uncounted else "none"),
                  style="yellow" if uncounted else None)
    ignored = result.get("ignored") or {}
    console.print("  not counted, no MACs by convention: " + (", ".join(f"{op} x{n}" for op, n in ignored.items())
                                                              or "none"))
    console.print()
