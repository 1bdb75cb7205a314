"""Pretrained checkpoints that a study's runs download, and the cache where mmengine finds them.

Reads resolved configs: every http(s) URL under a key named ``checkpoint``, ``pretrained`` or
``load_from`` (the backbone's ``init_cfg=dict(type='Pretrained', checkpoint=URL)`` of mmseg's
SegNeXt config, a segmentor's ``pretrained``, a top-level ``load_from``). Writes, on request, the
missing files into the cache; a download goes to a temporary file that is renamed into place
only when complete (:func:`ablate.io.atomic_write`).

Where mmengine looks: ``CheckpointLoader`` loads an http(s) URL with ``load_from_http``, which
calls torch.hub's ``load_state_dict_from_url`` without a ``model_dir``. That keeps the file as
``<hub dir>/checkpoints/<last part of the URL's path>`` and uses a file already there without any
network access. The hub dir is ``$TORCH_HOME/hub``, ``$TORCH_HOME`` defaulting to
``$XDG_CACHE_HOME/torch`` and that to ``~/.cache/torch`` (``torch.hub.get_dir``).
:func:`cache_path` computes the same path without importing torch (a test holds it to torch.hub's).
So a file copied to that path from a machine with internet makes a compute node without one train.
"""
from __future__ import annotations

import http.client
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from ablate.errors import CheckpointError, LaunchError
from ablate.io import atomic_write

LOADING_KEYS = ("checkpoint", "pretrained", "load_from")  # config keys whose URL a run downloads
PROBE_TIMEOUT_S = 5.0  # `ablate run` asks each URL this long at most before it launches
DOWNLOAD_TIMEOUT_S = 60.0  # per read of a download
CHUNK = 1 << 20


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint URL of a config, and where mmengine keeps its download."""

    key: str  # the dotted config key that names it, e.g. model.backbone.init_cfg.checkpoint
    url: str

    @property
    def path(self) -> Path:
        return cache_path(self.url)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def cached(self) -> bool:
        return self.path.is_file() and self.path.stat().st_size > 0


def checkpoints(cfgs: Iterable) -> list[Checkpoint]:
    """Each checkpoint URL that the configs load, once, in the order first met."""
    from ablate.configs import flatten

    found: dict[str, Checkpoint] = {}
    for cfg in cfgs:
        for key, value in flatten(cfg.to_dict()).items():
            if (key.rsplit(".", 1)[-1] in LOADING_KEYS and isinstance(value, str)
                    and value.startswith(("http://", "https://")) and value not in found):
                found[value] = Checkpoint(key, value)
    return list(found.values())


def hub_dir() -> Path:
    """torch.hub's folder, as ``torch.hub.get_dir()`` gives it when nothing called ``set_dir``."""
    cache = os.getenv("XDG_CACHE_HOME", "~/.cache")
    return Path(os.path.expanduser(os.getenv("TORCH_HOME", os.path.join(cache, "torch")))) / "hub"


def cache_path(url: str) -> Path:
    """Where mmengine's ``load_from_http`` keeps (and looks for) the download of ``url``."""
    return hub_dir() / "checkpoints" / os.path.basename(urllib.parse.urlparse(url).path)


def probe(url: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when ``url`` answers with a file, else why not, in a few words.

    Asks with HEAD, then with a GET of one byte where a server refuses HEAD.
    """
    headers = {"User-Agent": "ablate"}
    for method, extra in (("HEAD", {}), ("GET", {"Range": "bytes=0-0"})):
        try:
            request = urllib.request.Request(url, method=method, headers={**headers, **extra})
            with urllib.request.urlopen(request, timeout=timeout):
                return None
        except urllib.error.HTTPError as exc:
            if method == "HEAD" and exc.code in (403, 405, 501):
                continue
            return f"HTTP {exc.code} {exc.reason}"
        except urllib.error.URLError as exc:
            return str(exc.reason)
        except (OSError, ValueError) as exc:  # timeouts, malformed URLs
            return str(exc) or type(exc).__name__
    return "the server refuses HEAD and GET"


def download(checkpoint: Checkpoint, progress: Callable[[int, int | None], None] | None = None) -> Path:
    """Download ``checkpoint`` to its cache path, atomically; returns the path.

    Args:
        checkpoint: what to fetch.
        progress: called with (bytes so far, total bytes or None) after every chunk.

    Raises:
        CheckpointError: the server or the network failed, or the file came back short.
    """
    return download_url(checkpoint.url, checkpoint.path, progress)


def download_url(url: str, target: Path, progress: Callable[[int, int | None], None] | None = None) -> Path:
    """Download ``url`` to ``target``, atomically (a partial download never sits at ``target``).

    Raises:
        CheckpointError: the server or the network failed, or the file came back short.
    """
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "ablate"})
        with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response, atomic_write(target) as tmp:
            total = int(response.headers.get("Content-Length") or 0) or None
            done = 0
            with open(tmp, "wb") as f:
                for chunk in iter(lambda: response.read(CHUNK), b""):
                    f.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)
            if total is not None and done != total:
                raise CheckpointError(f"cannot download {url}: got {done} of {total} bytes")
    except urllib.error.HTTPError as exc:
        raise CheckpointError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise CheckpointError(f"cannot download {url}: {exc.reason}") from None
    except (OSError, ValueError, http.client.HTTPException) as exc:  # timeouts, a dropped connection, an
        # unwritable cache, a malformed URL
        raise CheckpointError(f"cannot download {url} to {target}: {exc or type(exc).__name__}") from None
    return target


def require(cfgs: Iterable, command: str) -> list[Checkpoint]:
    """Check that every checkpoint the configs load is cached or reachable, before a launch.

    Args:
        cfgs: the configs of the runs about to start.
        command: the ``ablate weights ...`` command that downloads them, for the error.

    Returns:
        The checkpoints that are not cached but reachable: each run will download them.

    Raises:
        LaunchError: one line per checkpoint that is neither, naming its URL and the file to
            put in its place.
    """
    problems, to_download = [], []
    for checkpoint in checkpoints(cfgs):
        if checkpoint.cached:
            continue
        reason = probe(checkpoint.url)
        if reason is None:
            to_download.append(checkpoint)
            continue
        problems.append(f"`{checkpoint.key}`: {checkpoint.name} is not in the checkpoint cache and {checkpoint.url} "
                        f"cannot be reached from here ({reason}); download it where there is internet "
                        f"(`{command} --download`) and put it at {checkpoint.path}")
    if problems:
        raise LaunchError("\n".join(problems))
    return to_download
