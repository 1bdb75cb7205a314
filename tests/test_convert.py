"""ablate.convert against upstream's own mmseg 0.x model: same logits after conversion, strict loading, safe reading.

The 0.x model comes from upstream's SegNeXt files, run by ``tests/upstream_0x/shim.py``, so none of
our naming goes into it. A checkpoint saved from it the way mmcv 1.x saves one must convert, load
strictly into our mmseg 1.x model built from the base config, and give the same logits. Nothing of
upstream is in this repository: those tests read upstream's files from a local checkout named by
``ABLATE_UPSTREAM_SOURCES`` (the study's DWT/attention and DSConv FreqFusion files from
``ABLATE_STUDY_SOURCES``) and skip without it; see tests/upstream_0x/README.md. The other tests
(the converter's mechanics, strict-load errors, refused pickles, URLs, the CLI) always run, on a
0.x checkpoint made from our own model by renaming its keys.
"""
import copy
import hashlib
import http.server
import os
import pickle
import re
import shlex
import socket
import threading
from collections import OrderedDict
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmseg.models.utils import resize
from mmseg.registry import MODELS
from torch import nn
from typer.testing import CliRunner

from ablate import convert
from ablate.cli import app
from ablate.errors import CheckpointError
from upstream_0x import shim

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "experiments" / "_base_" / "segnext_t_freqfusion_ade20k.py"
IMAGE = (64, 96)  # not square, so that a swap of H and W shows
TOLERANCE = 1e-4  # max |ours - upstream's| / max |upstream's| over the logits
RENAMED = 2 * (3 + 3 + 5 + 2)  # weight and bias of each MSCAN-T block's mlp.dwconv
# The upstream version the tests were written against; a checkout whose files differ is not used.
UPSTREAM = "https://github.com/Linwei-Chen/FreqFusion"
UPSTREAM_COMMIT = "3fb0c70637a3c194fb74294d3ce4681958b26241"
UPSTREAM_SHA256 = {
    shim.FILES["mscan"]: "d19fc96b0a1dd1271c4583060ae8a0fe47b7a24cec73b24f0f601696ca001c3d",
    shim.FILES["decode_head"]: "fef583789735ac6a74bd0c70defae4b5965b830c12c49eacd3203720938f10ce",
    shim.FILES["ham_head"]: "9fc2c90c0c92c4206a2f2bdf9dfd89dd2daa0d6d000c0d0cc390603676354c6c",
    shim.FILES["FreqFusion"]: "c579eb7f2bbc8a358c589c3a5d3eb7ec091a704f94bad2a1db1a32642a226dfe",
}
STUDY = "https://github.com/It-is-really-easy/cv-finalword"
STUDY_COMMIT = "018641f449bb23d18c339ea85597f186f6e3df94"
# The study's model (cv-finalword SegNeXt/local_configs/_base_/models/mscan.py and
# segnext/tiny/segnext.tiny.freqfusion.512x512.ade.160k.py), as mmseg 0.x builds it.
BACKBONE_0X = dict(embed_dims=[32, 64, 160, 256], mlp_ratios=[8, 8, 4, 4], drop_rate=0.0, drop_path_rate=0.1,
                   depths=[3, 3, 5, 2], norm_cfg=dict(type="SyncBN", requires_grad=True))
HEAD_0X = dict(compress_ratio=4, feature_resample_group=4, feature_resample=True, comp_feat_upsample=True,
               hamming_window=False, semi_conv=True, use_high_pass=True, use_low_pass=True, lowpass_kernel=5,
               highpass_kernel=3, in_channels=[64, 160, 256], in_index=[1, 2, 3], channels=256, ham_channels=256,
               ham_kwargs=dict(MD_R=16), dropout_ratio=0.1, num_classes=150,
               norm_cfg=dict(type="GN", num_groups=32, requires_grad=True), align_corners=False)
CLASSES = tuple(f"class{i}" for i in range(150))
PALETTE = [[i, 255 - i, i // 2] for i in range(150)]
# Table 2's code: the FreqFusion file the 0.x head imports, and our head's switches for it.
VARIANTS = {
    "baseline": ("FreqFusion.py", {}),
    "dwt_attention": ("FreqFusion_DWT-FF.py", dict(use_dwt=True, use_attention=True)),
    "dsconv": ("FreqFusion_DSConv.py", dict(dsconv=True)),
}
runner = CliRunner()


def upstream_sources() -> Path:
    """The checkout named by ABLATE_UPSTREAM_SOURCES, if it holds upstream's files at UPSTREAM_COMMIT; else skip."""
    folder = os.environ.get("ABLATE_UPSTREAM_SOURCES")
    wanted = f"{UPSTREAM} at commit {UPSTREAM_COMMIT}"
    if not folder:
        pytest.skip(f"needs upstream's mmseg 0.x code, not in this repository: set ABLATE_UPSTREAM_SOURCES to a "
                    f"checkout of {wanted} (tests/upstream_0x/README.md)")
    for name, digest in UPSTREAM_SHA256.items():
        path = Path(folder) / name
        if not path.is_file():
            pytest.skip(f"ABLATE_UPSTREAM_SOURCES={folder} has no {name}: it should be a checkout of {wanted}")
        if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            pytest.skip(f"ABLATE_UPSTREAM_SOURCES={folder}: {name} differs from upstream's at the commit these "
                        f"tests were written against (sha256); check out {wanted}")
    return Path(folder)


def freqfusion_file(variant: str) -> Path | None:
    """Upstream's FreqFusion (None: the checkout's own) or the study's replacement (fetched copy, else skip)."""
    name = VARIANTS[variant][0]
    upstream_sources()  # the study's files replace one of upstream's: without upstream's, nothing to run
    if variant == "baseline":
        return None
    folder = os.environ.get("ABLATE_STUDY_SOURCES")
    if not folder or not (Path(folder) / name).is_file():
        pytest.skip(f"needs the study's {name}, not redistributed because cv-finalword has no license: set "
                    f"ABLATE_STUDY_SOURCES to a checkout of {STUDY} at commit {STUDY_COMMIT} "
                    "(tests/upstream_0x/README.md)")
    if "DWT" in name:
        pytest.importorskip("pytorch_wavelets", reason="the study's DWT-FF imports pytorch_wavelets")
    return Path(folder) / name


class Upstream0x(nn.Module):
    """mmseg 0.x's EncoderDecoder as far as inference goes: its attribute names and ``encode_decode``.

    (Its own file is not used: the fork's copy imports tkinter, tensorboard and distutils.)
    """

    def __init__(self, freqfusion: Path | None = None) -> None:
        super().__init__()
        upstream = shim.load(upstream_sources(), freqfusion)
        self.backbone = upstream.MSCAN(**copy.deepcopy(BACKBONE_0X))
        self.decode_head = upstream.LightHamHeadFreqAware(**copy.deepcopy(HEAD_0X))

    def encode_decode(self, img):
        out = self.decode_head.forward_test(self.backbone(img), None, None)
        return resize(out, size=img.shape[2:], mode="bilinear", align_corners=self.decode_head.align_corners)


def randomize_(model: nn.Module, seed: int) -> None:
    """Random weights of a trained model's scale in every parameter and BN statistic; constants stay."""
    gen = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            elif name.endswith("running_mean"):
                t.copy_(torch.randn(t.shape, generator=gen) * 0.1)
            elif name not in params:
                continue  # num_batches_tracked, init_pos, Hamming windows, Haar filters
            elif t.dim() > 1:
                t.copy_(torch.randn(t.shape, generator=gen) / t[0].numel() ** 0.5)
            elif name.endswith("weight") or "layer_scale" in name:
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=gen) * 0.1)


def save_0x_checkpoint(model: nn.Module, path: Path) -> None:
    """As mmcv 1.x's save_checkpoint writes a best checkpoint of mmseg 0.x's tools/train.py."""
    meta = dict(env_info="sys.platform: linux", seed=0, exp_name="segnext.tiny.freqfusion.512x512.ade.160k.py",
                mmseg_version="0.24.1+5106d9a", config="norm_cfg = dict(type='SyncBN', requires_grad=True)\n",
                CLASSES=CLASSES, PALETTE=PALETTE, mmcv_version="1.7.1", time="Mon Dec 16 03:33:11 2024",
                epoch=1, iter=160000,
                hook_msgs=dict(last_ckpt="work_dirs/iter_160000.pth", best_score=np.float64(0.4352),
                               best_ckpt="work_dirs/best_mIoU_iter_160000.pth"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01)
    torch.save({"meta": meta, "state_dict": model.state_dict(), "optimizer": optimizer.state_dict()}, path)


@pytest.fixture(scope="module")
def base_cfg():
    cfg = Config.fromfile(str(BASE))
    cfg.model.backbone.init_cfg = None  # nothing to download
    return cfg


def build_ours(base_cfg, **switches) -> nn.Module:
    cfg = copy.deepcopy(base_cfg.model)
    cfg.decode_head.update(switches)
    with DefaultScope.overwrite_default_scope("mmseg"):
        return MODELS.build(cfg).eval()


def seeded(forward, x):
    torch.manual_seed(0)  # the Hamburger's NMF draws random bases in every forward, in both models
    with torch.no_grad():
        return forward(x)


def ours_logits(model, x):
    return seeded(lambda img: model.encode_decode(img, [dict(img_shape=IMAGE, pad_shape=IMAGE)]), x)


def relative_error(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


def to_0x_names(state_dict: dict) -> OrderedDict:
    """Our state dict with MSCAN's keys as upstream's 0.x MSCAN names them (its Mlp wraps the conv in a DWConv)."""
    return OrderedDict((re.sub(r"^(backbone\.block\d+\.\d+\.mlp\.dwconv)\.", r"\1.dwconv.", k), v)
                       for k, v in state_dict.items())


class Ours0x(nn.Module):
    """Our model with the state dict that mmseg 0.x's would have: enough to save a 0.x checkpoint from it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def state_dict(self, *args, **kwargs):
        return to_0x_names(self.model.state_dict(*args, **kwargs))


@pytest.fixture(scope="module")
def ours_randomized(base_cfg):
    model = build_ours(base_cfg)
    randomize_(model, seed=1)
    return model


@pytest.fixture(scope="module")
def checkpoint_0x(ours_randomized, tmp_path_factory):
    """A baseline checkpoint as mmcv 1.x saves mmseg 0.x's, made from our own model by renaming keys."""
    path = tmp_path_factory.mktemp("ckpt") / "best_mIoU_iter_160000.pth"
    save_0x_checkpoint(Ours0x(ours_randomized), path)
    return path


@pytest.fixture(scope="module")
def ours(base_cfg):
    return build_ours(base_cfg)


# --- the converter's mechanics, on our own model ----------------------------------------------


def test_renamed_0x_checkpoint_gives_the_same_logits(ours_randomized, checkpoint_0x, base_cfg):
    """Renamed to 0.x, saved mmcv-1.x style, converted and loaded strictly: exactly the same model."""
    saved = convert.load_checkpoint_file(checkpoint_0x)
    assert set(saved) == {"meta", "state_dict", "optimizer"}
    assert "backbone.block1.0.mlp.dwconv.dwconv.weight" in saved["state_dict"]
    assert convert.checkpoint_format(saved["state_dict"]) == "0.x"
    model = build_ours(base_cfg)
    x = torch.randn(1, 3, *IMAGE, generator=torch.Generator().manual_seed(0))
    expected = ours_logits(ours_randomized, x)
    assert relative_error(ours_logits(model, x), expected) > 1e-1  # the comparison tells other weights apart

    info = convert.load_weights(model, checkpoint_0x)
    assert (info["format"], info["converted"], info["keys"]) == ("0.x", RENAMED, len(model.state_dict()))
    after = ours_logits(model, x)
    print(f"renamed to 0.x and back: max relative error of the logits {relative_error(after, expected):.2e}")
    assert torch.equal(after, expected)
    for name, tensor in ours_randomized.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name


def test_1x_state_dict_passes_unchanged(ours):
    state_dict = ours.state_dict()
    converted = convert.convert_state_dict(state_dict)
    assert convert.checkpoint_format(state_dict) == "1.x"
    assert list(converted) == list(state_dict)
    assert all(converted[k] is state_dict[k] for k in state_dict)


def test_mixed_names_are_refused(checkpoint_0x):
    state_dict = convert.load_checkpoint_file(checkpoint_0x)["state_dict"]
    state_dict["backbone.block1.0.mlp.dwconv.weight"] = state_dict["backbone.block1.0.mlp.dwconv.dwconv.weight"]
    with pytest.raises(CheckpointError, match="mix of mmseg 0.x and 1.x names"):
        convert.convert_state_dict(state_dict)


# --- conversion against upstream's model ------------------------------------------------------


def test_our_0x_names_are_upstreams(ours):
    """The always-running tests' 0.x checkpoints have exactly the keys and shapes of upstream's model (order aside)."""
    upstream = {k: tuple(v.shape) for k, v in Upstream0x().state_dict().items()}
    assert {k: tuple(v.shape) for k, v in Ours0x(ours).state_dict().items()} == upstream


@pytest.mark.parametrize("variant", VARIANTS)
def test_converted_checkpoint_gives_upstreams_logits(variant, base_cfg, tmp_path):
    upstream = Upstream0x(freqfusion_file(variant)).eval()
    randomize_(upstream, seed=2)
    path = tmp_path / "iter_160000.pth"
    save_0x_checkpoint(upstream, path)
    model = build_ours(base_cfg, **VARIANTS[variant][1])
    x = torch.randn(1, 3, *IMAGE, generator=torch.Generator().manual_seed(0))
    before = ours_logits(model, x)

    info = convert.load_weights(model, path)
    expected = seeded(upstream.encode_decode, x)
    err = relative_error(ours_logits(model, x), expected)
    print(f"{variant}: max relative error of the logits {err:.2e} "
          f"({info['keys']} tensors, {info['converted']} renamed)")
    assert err < TOLERANCE
    assert relative_error(before, expected) > 1e3 * TOLERANCE  # the comparison tells other weights apart
    assert info["format"] == "0.x" and info["converted"] == RENAMED and info["keys"] == len(model.state_dict())
    assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("variant, switches", [("baseline", dict(use_attention=True)),
                                               ("dwt_attention", dict(use_dwt=True))])
def test_rows_without_upstream_code_load_strictly(variant, switches, base_cfg, tmp_path):
    """"+ Attention" has the baseline's weights, "+ DWT" those of the study's DWT-and-attention code."""
    path = tmp_path / "ckpt.pth"
    save_0x_checkpoint(Upstream0x(freqfusion_file(variant)), path)
    assert convert.load_weights(build_ours(base_cfg, **switches), path)["converted"] == RENAMED


# --- strict loading ---------------------------------------------------------------------------


def test_unconverted_0x_keys_are_listed_and_named(ours, checkpoint_0x):
    state_dict = convert.load_checkpoint_file(checkpoint_0x)["state_dict"]
    with pytest.raises(CheckpointError) as err:
        convert.load_into(ours, state_dict, source="ckpt.pth")
    message = str(err.value)
    print(message)
    assert "\n" not in message
    assert message.startswith("ckpt.pth does not fit the model: 26 missing (backbone.block1.0.mlp.dwconv.weight, ")
    assert "and 21 more); 26 unexpected (backbone.block1.0.mlp.dwconv.dwconv.weight, " in message
    assert ("The checkpoint looks like mmseg 0.x MSCAN (SegNeXt-T: dims 32/64/160/256, depths 3/3/5/2) + "
            "FreqFusion Ham head (2 FreqFusion blocks, sampler 'sim', 150 classes;") in message
    assert "the model like mmseg 1.x MSCAN (SegNeXt-T" in message


def test_dwt_weights_do_not_load_into_the_baseline(ours, base_cfg):
    state_dict = build_ours(base_cfg, use_dwt=True).state_dict()
    with pytest.raises(CheckpointError) as err:
        convert.load_into(ours, state_dict)
    message = str(err.value)
    assert "12 unexpected (decode_head.freqfusions.0.dwt.h0_col, " in message and "content_encoder3" in message
    assert "missing" not in message
    checkpoint_part, model_part = message.split("; the model like ")
    assert "DWT" in checkpoint_part.split("looks like")[1] and "DWT" not in model_part


def test_shape_mismatch_is_listed(ours):
    state_dict = dict(ours.state_dict())
    state_dict["decode_head.conv_seg.weight"] = torch.zeros(19, 256, 1, 1)
    state_dict["decode_head.conv_seg.bias"] = torch.zeros(19)
    with pytest.raises(CheckpointError, match=r"2 with another shape \(decode_head\.conv_seg\.weight: checkpoint "
                                              r"\(19, 256, 1, 1\), model \(150, 256, 1, 1\), "):
        convert.load_into(ours, state_dict)


# --- reading files safely ---------------------------------------------------------------------


class RunsCode:
    """Unpickling this runs a shell command."""

    def __init__(self, marker: Path) -> None:
        self.command = f"touch {shlex.quote(str(marker))}"

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.parametrize("container", ["torch.save", "pickle protocol 2"])
def test_a_pickle_that_runs_code_is_refused_unrun(container, tmp_path):
    marker = tmp_path / "marker"
    payload = {"state_dict": {}, "meta": RunsCode(marker)}
    path = tmp_path / "evil.pth"
    if container == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(CheckpointError) as err:
        convert.load_checkpoint_file(path)
    print(err.value)
    assert str(err.value) == (f"{path}: refused: unpickling it would call `posix.system`; checkpoints that ablate "
                              "did not write are read with torch.load(weights_only=True), which never runs code "
                              "from the file")
    assert not marker.exists()
    pickle.loads(pickle.dumps(payload["meta"], protocol=2))  # the payload is real: unpickled plainly, it runs
    assert marker.exists()


@pytest.mark.parametrize("numpy_module", ["numpy.core", "numpy._core"])  # names of numpy 1.x and 2.x pickles
def test_numpy_scalars_of_mmcv_meta_come_back_as_numbers(numpy_module, tmp_path):
    path = tmp_path / "legacy.pth"
    torch.save({"state_dict": {"w": torch.ones(2)}, "meta": {"hook_msgs": {"best_score": np.float64(0.4352)},
                                                             "iter": np.int64(160000)}},
               path, _use_new_zipfile_serialization=False)  # one pickle stream: its GLOBALs can be renamed
    data = path.read_bytes().replace(b"numpy._core.multiarray\nscalar", f"{numpy_module}.multiarray\nscalar".encode())
    path.write_bytes(data)
    meta = convert.load_checkpoint_file(path)["meta"]
    assert meta == {"hook_msgs": {"best_score": 0.4352}, "iter": 160000}
    assert type(meta["hook_msgs"]["best_score"]) is float and type(meta["iter"]) is int


def test_other_objects_need_trust(tmp_path):
    path = tmp_path / "run.pth"
    torch.save({"state_dict": {"w": torch.ones(1)}, "message_hub": Fraction(1, 3)}, path)
    with pytest.raises(CheckpointError, match="refused: unpickling it would call `fractions.Fraction`"):
        convert.load_checkpoint_file(path)
    assert convert.load_checkpoint_file(path, trusted=True)["message_hub"] == Fraction(1, 3)


@pytest.mark.parametrize("content, message", [
    (b"not a checkpoint\n", "not a readable PyTorch checkpoint"),
    (None, "no such checkpoint file"),
])
def test_unreadable_files(content, message, tmp_path):
    path = tmp_path / "x.pth"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        convert.load_checkpoint_file(path)


def test_a_bare_state_dict_is_wrapped(tmp_path):
    path = tmp_path / "bare.pth"
    torch.save({"w": torch.ones(1)}, path)
    assert list(convert.load_checkpoint_file(path)) == ["state_dict"]
    torch.save([torch.ones(1)], path)
    with pytest.raises(CheckpointError, match="no `state_dict` in the checkpoint"):
        convert.load_checkpoint_file(path)


# --- URLs -------------------------------------------------------------------------------------


@pytest.fixture
def http_server(tmp_path):
    """Serves tmp_path/served on 127.0.0.1; yields (folder, base URL, requested paths)."""
    served = tmp_path / "served"
    served.mkdir()
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(served), **kwargs)

        def log_message(self, format, *args):  # one call per request
            requests.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}", requests
    server.shutdown()
    server.server_close()


def test_url_is_downloaded_once_then_cached(http_server, ours, checkpoint_0x, tmp_path):
    served, base, requests = http_server
    (served / "segnext_t.pth").write_bytes(checkpoint_0x.read_bytes())
    url, cache = f"{base}/segnext_t.pth", tmp_path / "cache"
    info = convert.load_weights(ours, url, cache_dir=cache)
    assert info["file"] == str(cache / "segnext_t.pth") and info["format"] == "0.x"
    assert info["sha256"] == hashlib.sha256(checkpoint_0x.read_bytes()).hexdigest()
    assert convert.load_weights(ours, url, cache_dir=cache)["sha256"] == info["sha256"]
    assert requests == ["/segnext_t.pth"]


def test_missing_url_is_one_line(http_server, ours, tmp_path):
    _, base, _ = http_server
    with pytest.raises(CheckpointError) as err:
        convert.load_weights(ours, f"{base}/nothing.pth", cache_dir=tmp_path / "cache")
    assert str(err.value) == f"cannot download {base}/nothing.pth: HTTP 404 File not found"
    assert not any((tmp_path / "cache").glob("*"))


def test_unreachable_url_is_one_line(ours, tmp_path):
    with socket.socket() as sock:  # a port that nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/ckpt.pth"
    with pytest.raises(CheckpointError, match=f"^cannot download {url}: .*refused"):
        convert.load_weights(ours, url, cache_dir=tmp_path / "cache")


# --- CLI --------------------------------------------------------------------------------------


def test_cli_convert_writes_a_plain_1x_checkpoint(checkpoint_0x, ours, tmp_path):
    out = tmp_path / "converted.pth"
    result = runner.invoke(app, ["convert", str(checkpoint_0x), str(out)])
    assert result.exit_code == 0, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert f"wrote {out}: {len(ours.state_dict())} tensors, {RENAMED} renamed from mmseg 0.x" in result.output
    written = torch.load(out, map_location="cpu", weights_only=True)  # plain values only
    assert written["meta"]["dataset_meta"] == {"classes": CLASSES, "palette": PALETTE}
    assert written["meta"]["ablate_convert"]["format"] == "0.x"
    info = convert.load_weights(ours, out)  # loads strictly, nothing left to rename
    assert (info["format"], info["converted"], info["keys"]) == ("1.x", 0, len(ours.state_dict()))


def test_cli_convert_refuses_in_one_line(tmp_path):
    marker = tmp_path / "marker"
    torch.save({"state_dict": {}, "meta": RunsCode(marker)}, tmp_path / "evil.pth")
    result = runner.invoke(app, ["convert", str(tmp_path / "evil.pth"), str(tmp_path / "out.pth")])
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and "refused" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "out.pth").exists()
