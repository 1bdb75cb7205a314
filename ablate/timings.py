"""Timings: seconds per training iteration and per evaluated image of each variant, on this device.

Reads each variant's resolved config (:func:`ablate.configs.resolve` with the run's process count,
so each process's share of the batch) and the dataset under the data root. Builds mmengine's
Runner from it in a temporary work_dir (model, optimiser wrapper, dataloaders, evaluator; no
training loop, no pretrained weights, nothing written to the run folders), then times a few
``train_step`` calls after a warm-up (data loading included, as in training), and the loading,
``val_step`` and metric of a validation batch after another.

Writes :meth:`ablate.runs.WorkRoot.timings_file` (``<work root>/<study>/<profile>/timings.json``),
which :mod:`ablate.plan` reads with :func:`read_timings` (JSON only, no torch)::

    {"schema": 1, "study": "table2", "profile": "smoke", "device": "cpu: ... (2 threads)",
     "measured_at": "2025-...", "processes": 1, "per_process_batch": 8, "val_images": 16,
     "variants": {"baseline": {"sec_per_iter": 0.41, "eval_sec_per_image": 0.03,
                               "iterations_timed": 3, "config_key": "3f2a..."}, ...}}

A timing is one process's: K processes of a run each take about that long for their total/K
images (communication not counted). ``config_key`` is the run key of the config it timed, the
seed and data root left out (they change no cost); a plan ignores the timing of a variant whose
config has changed since.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ablate import configs
from ablate.io import read_json, write_json
from ablate.measure import device_name
from ablate.runs import Run, WorkRoot, folder
from ablate.study import Study

SCHEMA = 1
WARMUP_ITERS = 1  # the first iteration allocates and tunes kernels: not timed
TIMED_ITERS = 3
# Keys that change no cost: the seed, and where the same images are read from.
COST_NEUTRAL = ("randomness", "train_dataloader.dataset.data_root", "val_dataloader.dataset.data_root",
                "test_dataloader.dataset.data_root")


@dataclass(frozen=True)
class Timing:
    """One variant's measured pace on the device of its timings file."""

    sec_per_iter: float  # median over the timed iterations, data loading included
    eval_sec_per_image: float | None  # model and metric over one validation batch, per image
    iterations_timed: int
    config_key: str  # :func:`cost_key` of the config timed


@dataclass(frozen=True)
class Timings:
    """A profile's timings file."""

    device: str
    measured_at: str
    processes: int
    per_process_batch: int
    val_images: int | None  # images in the validation split of the dataset timed
    variants: dict[str, Timing]


def cost_key(cfg) -> str:
    """The run key of ``cfg`` without what changes no cost (seed, data root)."""
    return configs.run_key(cfg, ignore=COST_NEUTRAL)


def read_timings(study: Study, profile: str, work_root: str | os.PathLike | None = None) -> Timings | None:
    """The profile's timings file, or None when there is none or it cannot be read."""
    path = WorkRoot.of(work_root).timings_file(study.name, profile)
    try:
        data = read_json(path)
        return Timings(data["device"], data["measured_at"], int(data["processes"]), int(data["per_process_batch"]),
                       data.get("val_images"),
                       {name: Timing(**value) for name, value in data["variants"].items()})
    except (OSError, ValueError, KeyError, TypeError):  # missing or damaged: the plan goes without
        return None


def measure_study(study: Study, profile: str, data_root: Path, processes: int = 1,
                  work_root: str | os.PathLike | None = None,
                  progress: Callable[[str, Timing | None], None] | None = None) -> Timings:
    """Time every variant of ``profile`` on this device and write the profile's timings file.

    Args:
        study: the study.
        profile: its profile; its shapes, batch and pipelines are what is timed.
        data_root: the dataset to load batches from (:func:`ablate.launch.orchestrate.data_root_for`).
        processes: processes per run K; each process's batch (total/K) is timed.
        work_root: the work root of the timings file; default ``$ABLATE_WORK_DIR``.
        progress: called with ``(variant, None)`` before and ``(variant, timing)`` after each one.
    """
    # As ablate.launch.pool starts workers: idle OpenMP threads sleep instead of spinning (ten
    # times slower on a shared machine). Read once, when torch loads: `ablate plan` loads it here.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from ablate import compat

    compat.apply()  # before mmseg: mmcv-lite stand-ins, torch.load
    import torch

    device, per_process, val_images, measured = "", 0, None, {}
    threads = torch.get_num_threads()
    # A CPU run gets the cores of this machine split over its K processes (ablate.launch.pool);
    # more threads than that would time a pace no run gets.
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // processes))
    try:
        for name in study.variants:
            run = study.runs(profile, variants=[name], work_root=work_root)[0]
            cfg = configs.resolve(study, run, data_root=data_root, processes=processes)
            if progress:
                progress(name, None)
            timing, val_images, device = _time_variant(cfg, run, cost_key(cfg), torch)
            per_process = int(cfg.train_dataloader.batch_size)
            measured[name] = timing
            if progress:
                progress(name, timing)
    finally:
        torch.set_num_threads(threads)
    timings = Timings(device, folder.now(), processes, per_process, val_images, measured)
    write_json(WorkRoot.of(work_root).timings_file(study.name, profile), _to_json(study, profile, timings))
    return timings


def _time_variant(cfg, run: Run, key: str, torch) -> tuple[Timing, int | None, str]:
    """Build the Runner of ``cfg`` in a temporary folder and time its steps; (timing, val images, device)."""
    import warnings

    from mmengine.config import Config
    from mmengine.runner import Runner
    from mmengine.utils import import_modules_from_strings
    from mmseg.utils import register_all_modules

    class Unformatted(Config):
        """A config the Runner does not format: it runs yapf over it three times (its log, its
        dump, the visualizer's dump; a second each on a CPU) for text nobody reads here."""

        pretty_text = property(lambda self: repr(self.to_dict()))

    register_all_modules(init_default_scope=False)
    if cfg.get("custom_imports"):  # what Config.fromfile does for the worker: registers freqfusion
        import_modules_from_strings(**cfg.custom_imports)
    with tempfile.TemporaryDirectory(prefix="ablate-timing-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mmengine/mmseg build-time chatter
        cfg.work_dir = tmp
        # mmengine keeps loggers and visualizers by name: a fresh one per Runner, writing to `tmp`
        cfg.experiment_name = f"timing-{run.variant}-{os.getpid()}-{time.time_ns()}"
        if cfg.get("visualizer"):
            cfg.visualizer.name = cfg.experiment_name
        cfg.log_level = "ERROR"  # the Runner's config dump, hooks and parameter groups are noise here
        runner = Runner.from_cfg(Unformatted(cfg.to_dict()))
        model = runner.model
        device = next(model.parameters()).device
        optim_wrapper = runner.build_optim_wrapper(cfg.optim_wrapper)
        train_loader = runner.build_dataloader(cfg.train_dataloader, seed=0)
        durations = []
        model.train()
        batches = _endless(train_loader)
        for _ in range(WARMUP_ITERS + TIMED_ITERS):
            with _stopwatch(durations, device, torch):
                model.train_step(next(batches), optim_wrapper=optim_wrapper)
        eval_per_image, val_images = None, None
        if cfg.get("val_dataloader") and cfg.get("val_evaluator"):
            val_loader = runner.build_dataloader(cfg.val_dataloader, seed=0)
            val_images = len(val_loader.dataset)
            evaluator = runner.build_evaluator(cfg.val_evaluator)
            evaluator.dataset_meta = val_loader.dataset.metainfo
            model.eval()
            seconds, images, batches = [], 0, iter(val_loader)
            with torch.no_grad():
                for _ in range(min(2, len(val_loader))):  # the first batch warms up, the last is timed
                    with _stopwatch(seconds, device, torch):
                        batch = next(batches)
                        evaluator.process(data_samples=model.val_step(batch), data_batch=batch)
                    images = len(batch["inputs"])
            eval_per_image = seconds[-1] / images if images else None
    timing = Timing(round(statistics.median(durations[WARMUP_ITERS:]), 5),
                    round(eval_per_image, 5) if eval_per_image is not None else None, TIMED_ITERS, key)
    return timing, val_images, device_name(str(device))


def _endless(loader):
    while True:
        yield from loader


@contextlib.contextmanager
def _stopwatch(durations: list[float], device, torch):
    """Append the seconds the block took; on CUDA, once the device has finished its work."""
    start = time.perf_counter()
    yield
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    durations.append(time.perf_counter() - start)


def _to_json(study: Study, profile: str, timings: Timings) -> dict:
    return {"schema": SCHEMA, "study": study.name, "profile": profile, "device": timings.device,
            "measured_at": timings.measured_at, "processes": timings.processes,
            "per_process_batch": timings.per_process_batch, "val_images": timings.val_images,
            "variants": {name: dataclasses.asdict(t) for name, t in timings.variants.items()}}
