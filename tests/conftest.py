"""Shared test set-up: ablate's third-party patches go in before anything imports mmseg."""
import ablate.compat

ablate.compat.apply()


# --- fixtures for launching runs (tests/launch, test_train, test_run_cli) -------------------------
import json as _json  # noqa: E402
import os as _os  # noqa: E402
from pathlib import Path as _Path  # noqa: E402

import pytest  # noqa: E402

REPO = _Path(__file__).resolve().parents[1]
# A study as small as training gets: SegNeXt-T with mmseg's own LightHamHead (freqfusion is not
# needed), 32x32 crops, 4 iterations, a checkpoint every 2, one evaluation, on a tiny synthetic set.
TINY_BASE = """_base_ = 'mmseg::segnext/segnext_mscan-t_1xb16-adamw-160k_ade20k-512x512.py'
train_cfg = dict(val_interval=8000)
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=8000, max_keep_ckpts=2, save_best='mIoU'))
"""
TINY_PIPELINES = {
    "train_dataloader.dataset.pipeline": [
        {"type": "LoadImageFromFile"}, {"type": "LoadAnnotations", "reduce_zero_label": True},
        {"type": "RandomResize", "scale": [48, 32], "ratio_range": [0.75, 1.25], "keep_ratio": True},
        {"type": "RandomCrop", "crop_size": [32, 32], "cat_max_ratio": 0.75},
        {"type": "PackSegInputs"}],
    "val_dataloader.dataset.pipeline": [
        {"type": "LoadImageFromFile"}, {"type": "Resize", "scale": [48, 32], "keep_ratio": True},
        {"type": "LoadAnnotations", "reduce_zero_label": True}, {"type": "PackSegInputs"}],
}


def _tiny_study_text(max_iters: int = 4, checkpoint_every: int = 2) -> str:
    overrides = {
        "model.backbone.init_cfg": None, "model.data_preprocessor.size": [32, 32],
        "train_dataloader.batch_size": 2, "train_dataloader.num_workers": 0,
        "train_dataloader.persistent_workers": False, "val_dataloader.num_workers": 0,
        "val_dataloader.persistent_workers": False, "test_dataloader.num_workers": 0,
        "test_dataloader.persistent_workers": False, **TINY_PIPELINES,
        "optim_wrapper.optimizer.lr": 0.001, "param_scheduler": [{"type": "ConstantLR", "factor": 1.0,
                                                                 "by_epoch": False, "begin": 0}],
        "train_cfg.max_iters": max_iters, "train_cfg.val_interval": max_iters,
        "default_hooks.checkpoint.interval": checkpoint_every, "default_hooks.logger.interval": 1,
    }
    study = {
        "name": "tiny", "base": "_base_/tiny.py", "baseline": "a", "seeds": [0],
        "variants": {"a": {"label": "A", "overrides": {}},
                     "b": {"label": "B", "overrides": {"model.decode_head.dropout_ratio": 0.0}},
                     "c": {"label": "C", "overrides": {"model.decode_head.dropout_ratio": 0.2}}},
        "profiles": {"smoke": {"data": "synthetic", "overrides": overrides},
                     "paper": {"data": "required"}},
        "resources": {"gpus_per_run": 1, "cpus_per_run": 2, "timeout_min": 30},
        "slurm": {"scheduler": "local"},
    }
    return _json.dumps(study, indent=1)  # JSON is YAML


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """``$ABLATE_DATA`` with a tiny synthetic dataset (8 + 2 images of 32x48) at its default place."""
    from ablate.data.synthetic import make_synthetic

    root = tmp_path_factory.mktemp("data")
    make_synthetic(root / "synthetic_ade20k", num_train=8, num_val=2, size=(32, 48))
    return root


@pytest.fixture
def tiny_study(tmp_path, monkeypatch, tiny_data):
    """The study ``tiny`` in a fresh folder: ``$ABLATE_STUDIES``, ``$ABLATE_WORK_DIR`` and ``$ABLATE_DATA`` set."""
    studies = tmp_path / "experiments"
    (studies / "_base_").mkdir(parents=True)
    (studies / "_base_" / "tiny.py").write_text(TINY_BASE)
    (studies / "tiny.yaml").write_text(_tiny_study_text())
    monkeypatch.setenv("ABLATE_STUDIES", str(studies))
    monkeypatch.setenv("ABLATE_WORK_DIR", str(tmp_path / "work_dirs"))
    monkeypatch.setenv("ABLATE_DATA", str(tiny_data))
    return studies / "tiny.yaml"


class FakeWorker:
    """What the ``fake_worker`` fixture returns: set its behaviour per run folder, read its calls."""

    @staticmethod
    def set(work_dir, **behaviour) -> None:
        """Tell the fake worker what to do in ``work_dir``: ``sleep``, ``outcome``, ``code``."""
        _Path(work_dir).mkdir(parents=True, exist_ok=True)
        (_Path(work_dir) / "fake.json").write_text(_json.dumps(behaviour))

    @staticmethod
    def calls(work_dir) -> list[dict]:
        """The lines it appended in ``work_dir``: one when a process starts, one when it ends."""
        path = _Path(work_dir) / "fake_calls.jsonl"
        return [_json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def fake_worker(monkeypatch) -> FakeWorker:
    """Launchers start ``tests/launch/fake_worker.py`` instead of ``ablate.train``."""
    import ablate.launch.base

    monkeypatch.setattr(ablate.launch.base, "WORKER", "fake_worker")
    path = str(REPO / "tests" / "launch")
    monkeypatch.setenv("PYTHONPATH", path + _os.pathsep + _os.environ.get("PYTHONPATH", ""))
    return FakeWorker()


@pytest.fixture
def tiny_study_text():
    """``tiny_study_text(max_iters=4, checkpoint_every=2)``: the tiny study file's text."""
    return _tiny_study_text
