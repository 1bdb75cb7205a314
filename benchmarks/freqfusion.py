"""Speed and peak memory of FreqFusion's pure-PyTorch path against a deliberately simple reference.

Usage: ``python benchmarks/freqfusion.py [--threads N] [--repeats N] [--only op,block,head]``.

What is compared, at the shapes of a 512x512 input to SegNeXt-T (batch ``--batch``, default 1):

* ``op``: one CARAFE call, the largest of each kind in the head: the 5x5 ``up=2`` upsampling of
  FreqFusion #2's lr input (416 ch, 32x32 -> 64x64) and its 3x3 ``up=1`` high-pass filter of the
  hr input (64 ch, 64x64); and the spatial self-attention of the "+ Attention" variants on
  block #2's two outputs (416 and 64 ch at 64x64, dropout 0.1).
* ``block``: FreqFusion #2 of the head (hr 64 ch at 64x64, lr 416 ch at 32x32, Cc 120; the larger
  of the two blocks), for each switch (baseline, dwt, attention, dwt+attention, dsconv, and
  hamming: the Hamming-windowed kernels, off in the published config), published settings
  otherwise.
* ``head``: the whole ``FreqFusionHamHead`` of ``experiments/_base_`` (two FreqFusion blocks,
  squeeze, Hamburger, align, cls_seg) on MSCAN-T features at 1/4..1/32 (32/64/160/256 ch).

Implementations (columns):

* ``ours``: ``freqfusion`` as shipped, CARAFE forced to its pure-PyTorch path (``carafe_impl``).
* ``ref``: the same modules with the usual pure-PyTorch CARAFE swapped in (defined below:
  ``F.unfold`` the input, nearest-upsample the unfolded tensor ``up`` times, multiply by the
  kernels, sum over the taps; the approach of upstream FreqFusion's fallback) and the textbook
  kernel normaliser (softmax, then times the Hamming window and divided by its sum), and the
  attention as the study's code writes it (``bmm``, softmax, ``bmm``, dropout on the output,
  residual; ``ours`` makes one ``scaled_dot_product_attention`` call instead). The swap patches
  the three names that ``freqfusion`` looks up (``freqfusion.fusion.carafe``,
  ``freqfusion.fusion.normalize_kernel``, ``SpatialSelfAttention.forward``) for the duration of
  one call; nothing else changes.
* ``mmcv`` (CUDA with full mmcv only): ``carafe_impl='mmcv'``, mmcv's compiled op.

Measurements:

* ``fwd``: inference forward, ``eval()`` and ``torch.no_grad()``.
* ``fwd+bwd``: training step without the optimiser: ``train()``, forward, then backward of fixed
  random output gradients into the parameters and the input features (which require grad, as
  they do behind a backbone). Parameter and input gradients are reset to ``None`` before each
  call, so every call allocates them anew (and frees the previous ones before it starts).
* Time: median over ``--repeats`` rounds after ``--warmup`` untimed calls. Within a case the
  implementations alternate in every round (A B, then B A), so that load from other processes on
  a shared machine hits them alike; the ratio column is the median of the per-round ratios.
* Peak memory: the largest amount of tensor memory allocated during one call beyond what was
  allocated before it (inputs, parameters and fixed gradients not counted; outputs, saved
  activations, gradients and temporaries counted). On CPU it is read from ``torch.profiler``
  with ``profile_memory=True``: every allocation and free of PyTorch's CPU allocator is an event
  with a signed byte count, and the peak is the maximum of their running sum in time order. This
  is exact for tensor memory (unlike RSS, which glibc's caching and page granularity blur) and
  deterministic, so it is taken once per case. On CUDA it is ``torch.cuda.max_memory_allocated``
  minus the memory allocated before the call.

Ratios are ``ours / ref`` (and ``ours / mmcv``): below 1 is faster or smaller. Targets (issue
#8): fwd+bwd time <= 0.5 and fwd+bwd peak memory <= 0.7 of the reference, on CPU.

Threads: the script sets ``OMP_WAIT_POLICY=PASSIVE`` unless the environment sets it, as
``ablate run`` does for its workers: idle OpenMP threads then sleep instead of spinning. With
spinning threads on a machine whose cores are busy with other work, every parallel op waits at
its barrier for a descheduled thread, and the timings measure the scheduler (several times
slower, and favouring whichever side issues fewer ops). ``--threads 1`` avoids the question.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

# Before torch starts its OpenMP runtime (see "Threads" above).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
warnings.filterwarnings("ignore", message=".*pkg_resources.*")  # mmengine's, on import
warnings.filterwarnings("ignore", category=UserWarning, module="mmseg")  # deprecation notes on building the head
# This file is named like the package it measures: drop its own folder from the path (Python
# puts it first when the file runs as a script) and put the checkout first instead.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benchmarks"]

import freqfusion  # noqa: E402  (registers FreqFusionHamHead; applies ablate.compat)
import freqfusion.fusion  # noqa: E402
from freqfusion import FreqFusion  # noqa: E402
from freqfusion.attention import SpatialSelfAttention  # noqa: E402
from ablate.measure import cpu_model  # noqa: E402
from freqfusion.carafe import carafe, has_full_mmcv  # noqa: E402

BASE_CONFIG = ROOT / "experiments" / "_base_" / "segnext_t_freqfusion_ade20k.py"
VARIANTS = {
    "baseline": {},
    "dwt": {"use_dwt": True},
    "attention": {"use_attention": True},
    "dwt+attention": {"use_dwt": True, "use_attention": True},
    "dsconv": {"dsconv": True},
    "hamming": {"hamming_window": True},  # not in Table 2; exercises the kernel normaliser's window
}
# FreqFusion #2 of SegNeXt-T's head with the published settings (experiments/_base_).
BLOCK = dict(hr_channels=64, lr_channels=416, compressed_channels=120, lowpass_kernel=5, highpass_kernel=3,
             feature_resample=True, feature_resample_group=4, hamming_window=False, direction_feat="sim")
HW = 64  # 1/8 of 512: the resolution of the head's finest stage and of block #2's output


# --- the reference ----------------------------------------------------------------------------


def reference_carafe(x: Tensor, mask: Tensor, kernel_size: int, group: int = 1, up: int = 1,
                     impl: str | None = None) -> Tensor:
    """The usual pure-PyTorch CARAFE: unfold, nearest-upsample the unfolded tensor, weight, sum.

    Materialises ``C * k * k`` values per output pixel (``up**2`` times the unfolded input), and
    autograd keeps that tensor and the product for backward. The nearest upsampling by the
    integer factor ``up`` is written as expand + reshape: the same values as
    ``F.interpolate(..., scale_factor=up, mode="nearest")`` and the same memory, but several times
    faster on CPU at these shapes (PyTorch's upsample kernel is slow for ~10k channels of 32x32),
    so that the reference is not handicapped by a kernel quirk. ``impl`` is accepted and ignored
    so that it can stand in for ``freqfusion.carafe.carafe``.
    """
    b, c, h, w = x.shape
    kk = kernel_size * kernel_size
    cols = F.unfold(x, kernel_size, padding=kernel_size // 2).view(b, c * kk, h, 1, w, 1)
    cols = cols.expand(b, c * kk, h, up, w, up).reshape(b, group, c // group, kk, h * up, w * up)
    weights = mask.view(b, group, 1, kk, h * up, w * up)
    return (cols * weights).sum(dim=3).view(b, c, h * up, w * up)


def reference_normalize_kernel(logits: Tensor, kernel_size: int, window: Tensor | None = None) -> Tensor:
    """Textbook kernel normaliser: softmax over the taps, then times the window, divided by the sum."""
    b, c, h, w = logits.shape
    kk = kernel_size * kernel_size
    kernels = F.softmax(logits.view(b, c // kk, kk, h, w), dim=2)
    if window is not None:
        kernels = kernels * window.reshape(1, 1, kk, 1, 1)
        kernels = kernels / kernels.sum(dim=2, keepdim=True)
    return kernels.view(b, c, h, w)


def reference_attention_forward(self: SpatialSelfAttention, x: Tensor) -> Tensor:
    """``SpatialSelfAttention.forward`` as the study's code writes it: two ``bmm`` around a softmax.

    The ``(H*W)**2`` weights are materialised, and autograd keeps them for backward.
    """
    b, c, h, w = x.shape
    tokens = x.flatten(2).transpose(1, 2)
    weights = torch.softmax(torch.bmm(tokens, tokens.transpose(1, 2)) / math.sqrt(c), dim=-1)
    return x + self.dropout(torch.bmm(weights, tokens).transpose(1, 2).reshape(b, c, h, w))


@contextlib.contextmanager
def reference_swapped_in():
    """Make freqfusion use the reference CARAFE, normaliser and attention while inside."""
    swaps = [(freqfusion.fusion, "carafe", reference_carafe),
             (freqfusion.fusion, "normalize_kernel", reference_normalize_kernel),
             (SpatialSelfAttention, "forward", reference_attention_forward)]
    saved = [(module, name, getattr(module, name)) for module, name, _ in swaps]
    for module, name, reference in swaps:
        setattr(module, name, reference)
    try:
        yield
    finally:
        for module, name, original in saved:
            setattr(module, name, original)


# --- cases -------------------------------------------------------------------------------------


@dataclass
class Case:
    """One thing to time: ``call(impl, train)`` runs fwd (train=False) or fwd+bwd (train=True);
    ``reset()`` drops the gradients of the last call (``call`` does so itself first)."""

    group: str
    name: str
    call: Callable[[str, bool], None]
    reset: Callable[[], None]
    impls: list[str] = field(default_factory=list)


def _set_carafe_impl(model: torch.nn.Module, impl: str) -> None:
    for m in model.modules():
        if isinstance(m, FreqFusion):
            m.carafe_impl = "mmcv" if impl == "mmcv" else "torch"


def _module_case(group: str, name: str, model: torch.nn.Module, inputs: list[Tensor],
                 forward: Callable, impls: list[str]) -> Case:
    """Wrap a module: fixed inputs (grad required) and fixed random output gradients."""
    gen = torch.Generator(device="cpu").manual_seed(1)
    device = inputs[0].device
    with torch.no_grad():
        outs = _outputs(forward(model, inputs))
    grads = [torch.randn(o.shape, generator=gen).to(device) for o in outs]

    def reset() -> None:
        for t in (*model.parameters(), *inputs):
            t.grad = None

    def call(impl: str, train: bool) -> None:
        _set_carafe_impl(model, impl)
        swap = reference_swapped_in() if impl == "ref" else contextlib.nullcontext()
        with swap:
            if not train:
                model.eval()
                with torch.no_grad():
                    forward(model, inputs)
                return
            model.train()
            reset()
            torch.autograd.backward(_outputs(forward(model, inputs)), grads)

    return Case(group, name, call, reset, impls)


def _outputs(out) -> list[Tensor]:
    """The outputs that get a gradient: FreqFusion's ``(hr_out, lr_up)``, the head's logits."""
    if isinstance(out, tuple):
        return [out[1], out[2]]  # mask_lr is not used downstream in the head
    return [out]


def _randn(*shape, device, seed=0, grad=True) -> Tensor:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(*shape, generator=gen).to(device).requires_grad_(grad)


def build_cases(groups: list[str], variants: list[str], batch: int, device: torch.device,
                impls: list[str]) -> list[Case]:
    cases = []
    if "op" in groups:
        for c, k, up, size in ((416, 5, 2, HW // 2), (64, 3, 1, HW)):
            x = _randn(batch, c, size, size, device=device)
            logits = _randn(batch, k * k, size * up, size * up, device=device, seed=1, grad=False)
            mask = logits.softmax(1).requires_grad_()
            name = f"carafe {c}ch {size}->{size * up} k{k}"
            cases.append(_op_case(name, x, mask, k, up, impls))
        for c in (416, 64):  # the attention on block #2's outputs (lr_up, hr_out)
            attention = SpatialSelfAttention(dropout=0.1)
            x = _randn(batch, c, HW, HW, device=device, seed=5)
            cases.append(_module_case("op", f"attention {c}ch {HW}x{HW}", attention, [x],
                                      lambda m, xs: m(xs[0]), [i for i in impls if i != "mmcv"]))
    for variant in variants:
        switches = VARIANTS[variant]
        if "block" in groups:
            torch.manual_seed(0)
            block = FreqFusion(**{**BLOCK, **switches}).to(device)
            inputs = [_randn(batch, 64, HW, HW, device=device, seed=2),
                      _randn(batch, 416, HW // 2, HW // 2, device=device, seed=3)]
            cases.append(_module_case("block", variant, block, inputs,
                                      lambda m, xs: m(xs[0], xs[1]), impls))
        if "head" in groups:
            torch.manual_seed(0)
            head = build_head(switches).to(device)
            inputs = [_randn(batch, c, 512 // s, 512 // s, device=device, seed=4 + i)
                      for i, (c, s) in enumerate(((32, 4), (64, 8), (160, 16), (256, 32)))]
            inputs[0].requires_grad_(False)  # in_index [1, 2, 3]: stage 1 is not used
            cases.append(_module_case("head", variant, head, inputs, lambda m, xs: m(xs), impls))
    return cases


def _op_case(name: str, x: Tensor, mask: Tensor, k: int, up: int, impls: list[str]) -> Case:
    gen = torch.Generator(device="cpu").manual_seed(1)
    grad = torch.randn(x.shape[0], x.shape[1], x.shape[2] * up, x.shape[3] * up, generator=gen).to(x.device)

    def reset() -> None:
        x.grad = mask.grad = None

    def call(impl: str, train: bool) -> None:
        fn = reference_carafe if impl == "ref" else carafe
        kwargs = {} if impl == "ref" else {"impl": "mmcv" if impl == "mmcv" else "torch"}
        if not train:
            with torch.no_grad():
                fn(x, mask, k, 1, up, **kwargs)
            return
        reset()
        fn(x, mask, k, 1, up, **kwargs).backward(grad)

    return Case("op", name, call, reset, impls)


def build_head(switches: dict) -> torch.nn.Module:
    """``FreqFusionHamHead`` exactly as the study's base config builds it, with the switches set."""
    from mmengine.config import Config
    from mmseg.registry import MODELS

    cfg = Config.fromfile(str(BASE_CONFIG)).model.decode_head
    for key, value in switches.items():  # the head's own switches, else a FreqFusion argument
        if key in ("use_dwt", "use_attention", "dsconv"):
            cfg[key] = value
        else:
            cfg.freqfusion_cfg[key] = value
    return MODELS.build(cfg)


# --- measuring ---------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_case(case: Case, train: bool, repeats: int, warmup: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds per call for each implementation, alternating A B / B A round by round."""
    times: dict[str, list[float]] = {impl: [] for impl in case.impls}
    for impl in case.impls:
        for _ in range(warmup):
            case.call(impl, train)
    for r in range(repeats):
        order = case.impls if r % 2 == 0 else case.impls[::-1]
        for impl in order:
            _sync(device)
            start = time.perf_counter()
            case.call(impl, train)
            _sync(device)
            times[impl].append(time.perf_counter() - start)
    return times


def peak_memory(case: Case, impl: str, train: bool, device: torch.device) -> int:
    """Peak bytes of tensor memory allocated by one call beyond what was allocated before it."""
    case.call(impl, train)  # warm: lazily built state (e.g. cached windows) is not counted
    case.reset()  # the gradients of the warm call are freed before, not during, the measured one
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        case.call(impl, train)
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        case.call(impl, train)
    events = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    current = peak = 0
    for _, nbytes in sorted(events, key=lambda e: e[0]):  # stable: ties keep the recorded order
        current += nbytes
        peak = max(peak, current)
    return peak


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the profiler's start/stop lines, which its C++ side writes straight to fd 2."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


# --- report ------------------------------------------------------------------------------------


def _ratio(ours: float, other: float) -> str:
    return f"{ours / other:.2f}" if other else "-"


def run(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    impls = ["ours", "ref"]
    if device.type == "cuda" and has_full_mmcv():
        impls.append("mmcv")
    print(machine_line(device))
    print(f"batch {args.batch}, median of {args.repeats} rounds after {args.warmup} warm-up calls; "
          f"ratios ours/ref{' and ours/mmcv' if 'mmcv' in impls else ''} (< 1: ours faster / smaller)\n")
    cases = build_cases(args.only, args.variants, args.batch, device, impls)
    names = " / ".join(impls)
    ratios = " / ".join(f"ours/{o}" for o in impls[1:])
    head = ["case", f"fwd ms ({names})", ratios, f"fwd+bwd ms ({names})", ratios,
            f"peak MiB fwd+bwd ({names})", ratios, f"peak MiB fwd ({names})", ratios]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for case in cases:
        row = [f"{case.group}: {case.name}"]
        for train in (False, True):
            times = time_case(case, train, args.repeats, args.warmup, device)
            row.append(" / ".join(f"{statistics.median(times[i]) * 1e3:.1f}" for i in impls))
            row.append(" / ".join(f"{statistics.median(a / b for a, b in zip(times['ours'], times[o])):.2f}"
                                  for o in impls[1:]))
        for train in (True, False):
            peaks = {i: peak_memory(case, i, train, device) for i in impls}
            row.append(" / ".join(f"{peaks[i] / 2**20:.1f}" for i in impls))
            row.append(" / ".join(_ratio(peaks["ours"], peaks[o]) for o in impls[1:]))
        print("| " + " | ".join(row) + " |", flush=True)


def machine_line(device: torch.device) -> str:
    if device.type == "cuda":
        what = torch.cuda.get_device_name(device)
    else:
        what = cpu_model()
    return (f"device: {what}; torch {torch.__version__}; CPU threads: {torch.get_num_threads()} "
            f"(of {os.cpu_count()} cores, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}); "
            f"Python {platform.python_version()}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per case (median)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--only", type=lambda s: s.split(","), default=["op", "block", "head"],
                        help="comma-separated groups among op,block,head")
    parser.add_argument("--variants", type=lambda s: s.split(","), default=list(VARIANTS),
                        help=f"comma-separated, among {','.join(VARIANTS)}")
    args = parser.parse_args(argv)
    unknown = [v for v in args.variants if v not in VARIANTS] + [g for g in args.only if g not in ("op", "block", "head")]
    if unknown:
        parser.error(f"unknown variant or group: {', '.join(unknown)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    run(args)


if __name__ == "__main__":
    main()
