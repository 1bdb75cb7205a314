"""The Python half of ``scripts/gpu-check.sh``: FreqFusion under autocast, CARAFE against mmcv's op,
and the training speed of Table 2's variants, one table row per check.

Usage::

    python benchmarks/gpu.py --rows ROWS.tsv [--device cuda|cpu] [--tiny]
    python benchmarks/gpu.py --table ROWS.tsv --out RESULT.md

The first form appends one ``check<TAB>result<TAB>detail`` row per check to ``ROWS.tsv`` (the
shell script adds its own rows there: ``pytest -m cuda``, the smoke study); the second prints all
rows as one markdown table and writes it to ``RESULT.md``. A check that raises becomes a
``FAILED`` row with the error's first line, the others still run, and the exit status is 1.

The checks:

* ``environment``: device, torch and its CUDA, and whether CARAFE on CUDA uses mmcv's op
  (``freqfusion.carafe.mmcv_carafe_status``: ``mmcv._ext`` imports and the op agrees with ours).
* ``autocast``: FreqFusion #2 of the SegNeXt-T head (hr 64 channels at 1/8 of a 512x512 input,
  lr 416 at 1/16, published settings), baseline and with DWT + attention, in eval mode: its three
  outputs and the gradients of both inputs (for a fixed random output gradient) under
  ``torch.autocast`` with float16 and with bfloat16, against float32 with TF32 off. The error of
  a tensor is ``max|amp - fp32| / max|fp32|``; the result is the worst over the five tensors.
* ``carafe``: with a usable full mmcv, ``carafe(impl="torch")`` against ``impl="mmcv"`` at
  FreqFusion #2's two shapes (5x5 upsampling of 416 channels, 3x3 filtering of 64), output and
  both gradients, max abs error; otherwise one ``skipped`` row saying why.
* ``train``: seconds per training iteration of each Table 2 variant: the segmentor of the study's
  config (``paper`` profile, no pretrained weights) on random images and labels (batch 16,
  3x512x512, float32), loss, backward and the config's AdamW step through mmengine's
  ``OptimWrapper``; the median of the timed iterations after the warm-up ones, CUDA synchronised
  around each, with peak CUDA memory. cudnn's autotuner is set as the config's ``env_cfg`` sets it.

``--tiny`` runs the same code at CPU sizes (batch 2, 64x64 images, 16x16 blocks, one warm-up and
two timed iterations) for ``gpu-check.sh --dry-run``: it tests the code path, not the numbers.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import statistics
import sys
import time
import traceback
import warnings
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout, also when the venv's editable install points elsewhere
# Before torch starts OpenMP: idle threads sleep instead of spinning (the dry run shares a CPU;
# spinning threads slowed it ten-fold, as they did CPU training, see ablate.launch.local).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
warnings.filterwarnings("ignore", message=".*pkg_resources.*")  # mmengine's, on import

from ablate import compat  # noqa: E402

compat.apply()  # before mmseg: mmcv-lite stand-ins

import torch  # noqa: E402

# FreqFusion #2 of the SegNeXt-T head, as in benchmarks/freqfusion.py.
BLOCK = dict(hr_channels=64, lr_channels=416, compressed_channels=120, lowpass_kernel=5, highpass_kernel=3,
             feature_resample=True, feature_resample_group=4, hamming_window=False, direction_feat="sim")
SIZES = {  # full: what the GPU check measures; tiny: the dry run on a CPU
    "full": dict(batch=16, image=512, block_batch=4, block_hw=64, warmup=5, iters=20),
    "tiny": dict(batch=2, image=64, block_batch=1, block_hw=16, warmup=1, iters=2),
}


def environment(device: torch.device, sizes: dict) -> list[tuple[str, str, str]]:
    from ablate.measure import device_name
    from freqfusion.carafe import mmcv_carafe_status

    usable, why = mmcv_carafe_status()
    build = f"torch {torch.__version__}, CUDA {torch.version.cuda or '-'}"
    return [("environment", device_name(str(device)), build),
            ("CARAFE on CUDA", "mmcv's op" if usable else "pure PyTorch", why)]


def autocast(device: torch.device, sizes: dict) -> list[tuple[str, str, str]]:
    from freqfusion import FreqFusion

    b, hw = sizes["block_batch"], sizes["block_hw"]
    gen = torch.Generator().manual_seed(0)
    hr = torch.randn(b, BLOCK["hr_channels"], hw, hw, generator=gen).to(device)
    lr = torch.randn(b, BLOCK["lr_channels"], hw // 2, hw // 2, generator=gen).to(device)
    rows = []
    for name, switches in (("baseline", {}), ("dwt+attention", dict(use_dwt=True, use_attention=True))):
        torch.manual_seed(0)
        block = FreqFusion(**BLOCK, **switches).to(device).eval()
        with _no_tf32():
            ref = _outputs_and_grads(block, hr, lr, device, None)
        for dtype in (torch.float16, torch.bfloat16):
            amp = _outputs_and_grads(block, hr, lr, device, dtype)
            errs = [_rel_err(a, r) for a, r in zip(amp, ref)]
            detail = ", ".join(f"{n} {e:.1e}" for n, e in zip(("mask", "hr_out", "lr_up", "d hr", "d lr"), errs))
            rows.append((f"autocast {str(dtype)[6:]} vs fp32: FreqFusion #2 {name}",
                         f"max rel err {max(errs, key=_nan_largest):.1e}", f"{detail} (batch {b}, hr {hw}x{hw})"))
    return rows


def _outputs_and_grads(block, hr, lr, device, dtype) -> list[torch.Tensor]:
    hr, lr = hr.detach().requires_grad_(), lr.detach().requires_grad_()
    with torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext():
        outs = block(hr, lr)
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(o.shape, generator=gen).to(device) for o in outs]
    torch.autograd.backward([o.float() for o in outs], grads)
    return [o.detach().float() for o in outs] + [hr.grad, lr.grad]


def _rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a - ref).abs().max() / ref.abs().max()).item()


def _nan_largest(err: float) -> float:
    return float("inf") if err != err else err  # a nan is the worst error


@contextlib.contextmanager
def _no_tf32():
    """TF32 off for the float32 reference, so that it is float32 (cudnn allows TF32 by default)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def carafe_vs_mmcv(device: torch.device, sizes: dict) -> list[tuple[str, str, str]]:
    from freqfusion.carafe import carafe, mmcv_carafe_status

    usable, why = mmcv_carafe_status()
    if device.type != "cuda" or not usable:
        reason = why if device.type == "cuda" else f"{device.type} device; {why}"
        print(f"carafe torch vs mmcv: skipped ({reason})", flush=True)
        return [("carafe torch vs mmcv", "skipped", reason)]
    b, hw = sizes["block_batch"], sizes["block_hw"]
    rows = []
    for c, k, up, h in ((BLOCK["lr_channels"], 5, 2, hw // 2), (BLOCK["hr_channels"], 3, 1, hw)):
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(b, c, h, h, generator=gen).to(device)
        mask = torch.randn(b, k * k, h * up, h * up, generator=gen).softmax(1).to(device)
        results = []
        for impl in ("torch", "mmcv"):
            xs, ms = x.clone().requires_grad_(), mask.clone().requires_grad_()
            out = carafe(xs, ms, k, 1, up, impl=impl)
            results.append([out.detach(), *torch.autograd.grad(out.square().sum(), (xs, ms))])
        errs = [(a - m).abs().max().item() for a, m in zip(*results)]
        rows.append((f"carafe torch vs mmcv: {k}x{k} up {up}, {c} ch", f"max abs err {max(errs):.1e}",
                     f"out {errs[0]:.1e}, d x {errs[1]:.1e}, d mask {errs[2]:.1e} ({b}x{c}x{h}x{h})"))
    return rows


def train_speed(device: torch.device, sizes: dict) -> list[tuple[str, str, str]]:
    from mmengine.optim import build_optim_wrapper
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    from ablate import configs
    from ablate.measure import build_model
    from ablate.study import load_study

    study = load_study(str(ROOT / "experiments" / "table2.yaml"))
    b, size = sizes["batch"], sizes["image"]
    rows, seconds = [], {}
    for run in study.runs("paper", seeds=[study.seeds[0]]):
        cfg = configs.resolve(study, run)
        torch.backends.cudnn.benchmark = bool(cfg.get("env_cfg", {}).get("cudnn_benchmark", False))
        model = build_model(cfg).to(device).train()
        with _quiet_mmengine():  # it logs every parameter's lr and weight decay
            optim = build_optim_wrapper(model, cfg.optim_wrapper)
        gen = torch.Generator().manual_seed(0)
        images = torch.randn(b, 3, size, size, generator=gen).to(device)
        labels = torch.randint(0, model.decode_head.num_classes, (b, 1, size, size), generator=gen).to(device)
        samples = [SegDataSample(gt_sem_seg=PixelData(data=label)) for label in labels]
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        for step in range(sizes["warmup"] + sizes["iters"]):
            _sync(device)
            start = time.perf_counter()
            loss, _ = model.parse_losses(model.loss(images, samples))
            optim.update_params(loss)
            _sync(device)
            if step >= sizes["warmup"]:
                times.append(time.perf_counter() - start)
        sec = seconds[run.variant] = statistics.median(times)
        peak = f"peak {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB; " if device.type == "cuda" else ""
        rows.append([f"train s/iter: {run.variant}", f"{sec:.3f} s/iter",
                     f"{peak}batch {b}, {size}x{size}, fp32, AdamW; median of {sizes['iters']} after "
                     f"{sizes['warmup']} warm-up"])
        del model, optim
    for row, sec in zip(rows, seconds.values()):  # the baseline is not always the first variant
        row[2] = f"{sec / seconds[study.baseline]:.2f}x {study.baseline}; " + row[2]
    return [tuple(row) for row in rows]


@contextlib.contextmanager
def _quiet_mmengine():
    from mmengine.logging import MMLogger

    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CHECKS = {"environment": environment, "autocast": autocast, "carafe": carafe_vs_mmcv, "train": train_speed}


def run_checks(rows_file: Path, device: torch.device, sizes: dict) -> int:
    """Append every check's rows to ``rows_file``; a check that raises becomes a FAILED row."""
    status = 0
    for name, check in CHECKS.items():
        start = time.perf_counter()
        try:
            rows = check(device, sizes)
        except Exception as exc:  # noqa: BLE001  (one failing check must not hide the others)
            traceback.print_exc()
            rows, status = [(name, "FAILED", f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}")], 1
        with open(rows_file, "a") as f:
            for row in rows:
                f.write("\t".join(" ".join(str(cell).split()) for cell in row) + "\n")
        print(f"{name}: {len(rows)} row(s) in {time.perf_counter() - start:.0f} s", flush=True)
    return status


def render(rows_file: Path, out: Path) -> str:
    """The rows of ``rows_file`` as one markdown table, headed by the date; also written to ``out``."""
    lines = [f"# GPU check, {date.today().isoformat()}", "", "| check | result | detail |", "|---|---|---|"]
    for line in rows_file.read_text().splitlines():
        cells = (line.split("\t") + ["", ""])[:3]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    text = "\n".join(lines) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--rows", type=Path, help="append the checks' rows to this TSV file")
    what.add_argument("--table", type=Path, help="print the rows of this TSV file as one table")
    parser.add_argument("--out", type=Path, help="with --table: also write the table here")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--tiny", action="store_true", help="CPU sizes: tests the code path, not the numbers")
    args = parser.parse_args(argv)
    if args.table:
        if args.out is None:
            parser.error("--table needs --out")
        print(render(args.table, args.out), end="")
        return 0
    return run_checks(args.rows, torch.device(args.device), SIZES["tiny" if args.tiny else "full"])


if __name__ == "__main__":
    sys.exit(main())
