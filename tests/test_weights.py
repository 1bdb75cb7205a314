"""Pretrained checkpoints offline: the URLs a study's configs load, the exact file mmengine looks
for, downloads from a local HTTP server, and `ablate run` refusing to launch runs whose checkpoint
is neither cached nor reachable (a 127.0.0.1 port nobody listens on stands for "no network")."""
import functools
import http.server
import json
import re
import socket
import threading
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ablate import configs, weights
from ablate.cli import app
from ablate.errors import CheckpointError
from ablate.study import load_study

REPO = Path(__file__).resolve().parents[1]
MSCAN_T = "https://download.openmmlab.com/mmsegmentation/v0.5/pretrain/segnext/mscan_t_20230227-119e8c9f.pth"
NAME = "mscan_t_20230227-119e8c9f.pth"


def invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


class Handler(http.server.SimpleHTTPRequestHandler):
    refuse_head = False

    def do_HEAD(self):
        if self.refuse_head:
            self.send_error(405)
        else:
            super().do_HEAD()

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture
def server(tmp_path):
    """``(folder, base URL)``: a threaded HTTP server on 127.0.0.1 serving the folder."""
    folder = tmp_path / "served"
    folder.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def dead_url():
    """A URL on a 127.0.0.1 port that nobody listens on: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/mmsegmentation/pretrain/{NAME}"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty torch hub cache: ``$TORCH_HOME`` in a fresh folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("ABLATE_FULL_ERROR", raising=False)
    return tmp_path / "torch_home" / "hub" / "checkpoints"


def paper_checkpoint(tiny_study, url):
    """Point the tiny study's `paper` profile at ``url`` for the backbone's pretrained weights."""
    text = json.loads(tiny_study.read_text())
    text["profiles"]["paper"]["overrides"] = {"model.backbone.init_cfg.checkpoint": url}
    tiny_study.write_text(json.dumps(text, indent=1))


def test_the_paper_profile_loads_mscan_t_and_the_smoke_profile_nothing():
    study = load_study(str(REPO / "experiments" / "table2.yaml"))
    found = weights.checkpoints(configs.resolve(study, run) for run in study.runs("paper"))
    assert [(c.key, c.url, c.name) for c in found] == [("model.backbone.init_cfg.checkpoint", MSCAN_T, NAME)]
    assert weights.checkpoints(configs.resolve(study, run) for run in study.runs("smoke")) == []


@pytest.mark.parametrize("env", [{"TORCH_HOME": "th"}, {"XDG_CACHE_HOME": "xdg"}, {}])
def test_the_cache_path_is_torch_hubs(env, tmp_path, monkeypatch):
    monkeypatch.delenv("TORCH_HOME", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    for key, value in env.items():
        monkeypatch.setenv(key, str(tmp_path / value))
    assert weights.cache_path(MSCAN_T) == Path(torch.hub.get_dir()) / "checkpoints" / NAME


def test_mmengine_loads_a_url_from_the_cache_path_without_any_network(cache, dead_url):
    from mmengine.runner.checkpoint import CheckpointLoader

    weights.cache_path(dead_url).parent.mkdir(parents=True)
    torch.save({"state_dict": {"w": torch.arange(3.0)}}, weights.cache_path(dead_url))
    loaded = CheckpointLoader.load_checkpoint(dead_url, map_location="cpu")
    assert torch.equal(loaded["state_dict"]["w"], torch.arange(3.0))


def test_weights_lists_downloads_and_then_finds_it_cached(tiny_study, server, cache):
    folder, base = server
    payload = bytes(range(256)) * 4096 * 3  # 3 MiB
    (folder / "pretrain").mkdir()
    (folder / "pretrain" / NAME).write_bytes(payload)
    paper_checkpoint(tiny_study, f"{base}/pretrain/{NAME}")
    code, out = invoke("weights", "tiny", "-p", "paper")
    assert code == 0, out
    assert f"{base}/pretrain/{NAME}" in out and str(cache / NAME) in out and "missing, reachable" in out
    assert not cache.exists()
    code, out = invoke("weights", "tiny", "-p", "paper", "--download")
    assert code == 0 and "downloaded (3.1 MB)" in out, out
    assert (cache / NAME).read_bytes() == payload and [p.name for p in cache.iterdir()] == [NAME]
    code, out = invoke("weights", "tiny", "-p", "paper")
    assert code == 0 and "cached (3.1 MB)" in out


def test_download_reports_progress_chunk_by_chunk(server, cache):
    folder, base = server
    (folder / NAME).write_bytes(b"w" * (weights.CHUNK * 2 + 5))
    seen = []
    path = weights.download(weights.Checkpoint("load_from", f"{base}/{NAME}"), lambda *p: seen.append(p))
    total = weights.CHUNK * 2 + 5
    assert path == cache / NAME and path.stat().st_size == total
    assert seen[-1] == (total, total) and [done for done, _ in seen] == sorted(done for done, _ in seen)


def test_a_failed_download_leaves_nothing_under_the_final_name(tiny_study, server, cache):
    _, base = server
    checkpoint = weights.Checkpoint("model.backbone.init_cfg.checkpoint", f"{base}/pretrain/{NAME}")
    with pytest.raises(CheckpointError, match=rf"cannot download {re.escape(checkpoint.url)}: HTTP 404"):
        weights.download(checkpoint)
    assert not checkpoint.path.exists() and not list(checkpoint.path.parent.glob("*"))


def test_probe_falls_back_to_get_where_head_is_refused(server, monkeypatch):
    folder, base = server
    (folder / NAME).write_bytes(b"weights")
    monkeypatch.setattr(Handler, "refuse_head", True)
    assert weights.probe(f"{base}/{NAME}") is None
    assert weights.probe(f"{base}/other.pth") == "HTTP 404 File not found"


def test_run_refuses_before_launching_when_a_checkpoint_is_neither_cached_nor_reachable(
        tiny_study, tiny_data, fake_worker, cache, dead_url):
    paper_checkpoint(tiny_study, dead_url)
    runs = load_study("tiny").runs("paper")
    for run in runs:
        fake_worker.set(run.work_dir, outcome="done")
    data = tiny_data / "synthetic_ade20k"
    for args in ((), ("--dry-run",)):
        code, out = invoke("run", "tiny", "-p", "paper", "--data-root", data, *args)
        assert code == 2, out
        (line,) = out.strip().splitlines()
        assert line.startswith("error: `model.backbone.init_cfg.checkpoint`: ") and NAME in line
        assert dead_url in line and "Connection refused" in line and str(cache / NAME) in line
        assert "`ablate weights tiny --profile paper --download`" in line
    assert all(not (r.work_dir / "run.json").exists() and fake_worker.calls(r.work_dir) == [] for r in runs)
    # The file put where the message says: the check passes and the runs launch.
    cache.mkdir(parents=True)
    torch.save({"state_dict": {}}, cache / NAME)
    code, out = invoke("run", "tiny", "-p", "paper", "--data-root", data, "--dry-run")
    assert code == 0 and len(re.findall(r"seed0\s+start", out)) == 3, out
    code, out = invoke("run", "tiny", "-p", "paper", "--data-root", data)
    assert code == 0 and "3 done" in out, out


def test_run_notes_a_reachable_checkpoint_that_each_run_will_download(tiny_study, tiny_data, fake_worker, server,
                                                                        cache):
    folder, base = server
    (folder / NAME).write_bytes(b"weights")
    paper_checkpoint(tiny_study, f"{base}/{NAME}")
    run = load_study("tiny").runs("paper", variants=["a"])[0]
    fake_worker.set(run.work_dir, outcome="done")
    code, out = invoke("run", "tiny", "-p", "paper", "--variants", "a", "--data-root", tiny_data / "synthetic_ade20k")
    assert code == 0 and "1 done" in out, out
    assert f"note: {NAME} is not cached: each run downloads it from {base}/{NAME}" in out
