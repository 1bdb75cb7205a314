"""mmcv-lite vs full mmcv: ablate.compat and freqfusion agree on whether ``mmcv._ext`` is usable, a
broken full mmcv (simulated by an import hook) falls back to the stand-ins, freqfusion imports
without ablate, and mmcv's CARAFE op is used only when it runs and agrees with ours."""
import importlib.abc
import importlib.util
import json
import logging
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from ablate import compat

# The module, not the function that freqfusion/__init__ binds to the same name.
ff_carafe = importlib.import_module("freqfusion.carafe")

REPO = Path(__file__).resolve().parents[1]
UNDEFINED = "mmcv/_ext.cpython-311-x86_64-linux-gnu.so: undefined symbol: _ZN3c1017RegisterOperatorsD1Ev"

# Prepended to the subprocess scripts: a full mmcv built for another torch (its mmcv._ext is found,
# so a file lookup says "full mmcv", but loading it fails), and an `ablate` that does not import.
HOOKS = f'''
import importlib.abc, importlib.util, sys

class BrokenExt(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name == "mmcv._ext" else None
    def create_module(self, spec):
        return None
    def exec_module(self, module):
        raise ImportError({UNDEFINED!r})

class NoAblate(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "ablate":
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)", name=name)
        return None
'''


class BrokenExt(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``mmcv._ext`` is found but fails to load, as a build for another torch does."""

    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name == "mmcv._ext" else None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        raise ImportError(UNDEFINED)


def _python(script: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", HOOKS + script], capture_output=True, text=True, cwd=REPO,
                          timeout=300)


@pytest.mark.parametrize("ext", ["missing", "broken", "working"])
def test_compat_and_freqfusion_agree_on_mmcv_ext(monkeypatch, ext):
    if ext == "broken":
        monkeypatch.setattr(sys, "meta_path", [BrokenExt(), *sys.meta_path])
        assert importlib.util.find_spec("mmcv._ext") is not None  # a file lookup would say "full mmcv"
    if ext == "working":
        monkeypatch.setitem(sys.modules, "mmcv._ext", types.ModuleType("mmcv._ext"))
    error = ff_carafe.mmcv_ext_error()
    assert compat.has_full_mmcv() is (error is None) is (ext == "working")
    if ext == "broken":
        assert "undefined symbol" in error


@pytest.mark.parametrize("ext", ["missing", "broken"])
def test_freqfusion_imports_without_ablate_and_registers_its_head(ext):
    script = f'''
sys.meta_path[:0] = [NoAblate()] + ([BrokenExt()] if {ext == "broken"} else [])
import freqfusion
from mmseg.registry import MODELS
print(MODELS.get("FreqFusionHamHead").__module__, "ablate" in sys.modules)
'''
    proc = _python(script)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["freqfusion.head", "False"]


def test_freqfusion_has_no_import_of_ablate():
    pattern = re.compile(r"^\s*(from|import)\s+ablate\b|import_module\(\s*['\"]ablate", re.M)
    found = [f"{p.name}: {m.group(0).strip()}" for p in sorted((REPO / "freqfusion").rglob("*.py"))
             for m in pattern.finditer(p.read_text())]
    assert found == []


def test_a_broken_full_mmcv_gets_the_stand_in_and_carafe_runs_in_pytorch():
    script = '''
sys.meta_path.insert(0, BrokenExt())
import json
from ablate import compat
compat.apply()
import mmseg.models  # imports mmcv.ops: without the stand-in this fails on the broken mmcv._ext
import mmcv, freqfusion
from freqfusion.carafe import has_full_mmcv, mmcv_carafe_status
try:
    mmcv.ops.sigmoid_focal_loss(None, None)
except compat.MissingMMCVOp as exc:
    message = str(exc)
statuses = [mmcv_carafe_status(), mmcv_carafe_status()]  # asked twice: found and told once
print(json.dumps({"full": [compat.has_full_mmcv(), has_full_mmcv()], "ops": mmcv.ops.__doc__,
                  "message": message, "status": statuses}))
'''
    proc = _python(script)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["full"] == [False, False]
    assert result["ops"].startswith("ablate's stand-in")
    assert "sigmoid_focal_loss" in result["message"] and "undefined symbol" in result["message"]
    (usable, why), again = result["status"]
    assert not usable and "undefined symbol" in why and again == [usable, why]
    notices = [line for line in proc.stderr.splitlines() if "freqfusion" in line]
    assert len(notices) == 1 and "full mmcv is installed but unusable" in notices[0], proc.stderr
    assert "CARAFE runs in pure PyTorch" in notices[0]


def _raises_like_a_wrong_arch(x, mask, k, group, up):
    raise RuntimeError("CUDA error: no kernel image is available for execution on the device\nmore")


@pytest.mark.parametrize("op,expected", [
    (ff_carafe._carafe_unfold, None),  # another strategy than the taps it is checked against
    (lambda x, mask, k, group, up: ff_carafe._carafe_unfold(x, mask.flip(1), k, group, up),  # taps mirrored
     r"disagrees with the pure-PyTorch one \(max abs err "),
    (_raises_like_a_wrong_arch, r"^its CARAFE op fails here \(RuntimeError: CUDA error: no kernel image is "
                                r"available for execution on the device\)$"),
])
def test_mmcvs_op_is_checked_forward_and_backward_before_use(op, expected):
    state = torch.random.get_rng_state()
    with torch.no_grad():  # the first CUDA call may come from inference: the check still runs backward
        error = ff_carafe._op_error(op, torch.device("cpu"))
    assert torch.equal(torch.random.get_rng_state(), state)  # seeded runs are not moved by the check
    if expected is None:
        assert error is None
    else:
        assert re.search(expected, error), error


def test_an_unusable_mmcv_op_is_reported_once_and_carafe_uses_pytorch(monkeypatch, caplog):
    monkeypatch.setattr(ff_carafe, "_mmcv_status", None)
    x = torch.randn(1, 2, 3, 3)
    mask = torch.full((1, 9, 6, 6), 1 / 9)
    ff_carafe.carafe(x, mask, 3, 1, 2)
    assert ff_carafe._mmcv_status is None  # CPU tensors never ask: the check waits for CUDA
    monkeypatch.setattr(ff_carafe, "mmcv_ext_error", lambda: None)  # full mmcv's extension loads...
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "mmcv.ops", types.SimpleNamespace(carafe=_raises_like_a_wrong_arch))
    calls = []
    monkeypatch.setattr(ff_carafe, "_op_error", lambda op, device: calls.append((op, device)) or
                        "its CARAFE op fails here (RuntimeError: CUDA error: no kernel image)")  # ...its op not
    with caplog.at_level(logging.WARNING, logger="freqfusion.carafe"):
        assert not ff_carafe.has_full_mmcv() and not ff_carafe.has_full_mmcv()
    assert calls == [(_raises_like_a_wrong_arch, torch.device("cuda"))]  # checked once per process
    assert [r.getMessage() for r in caplog.records] == [
        "freqfusion: full mmcv is installed but unusable: its CARAFE op fails here (RuntimeError: CUDA error: "
        "no kernel image); CARAFE runs in pure PyTorch"]
