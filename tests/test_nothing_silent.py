"""Cases that once ended in a wrong result with exit 0, or in a traceback: each now ends in a correct result,
or in one line and exit 2 (130 / 143 for a signal), with nothing overwritten and no file left half-written.
(More of them are rows of tests/test_robustness.py's table, and in tests/test_crash_safety.py.)"""
from __future__ import annotations

import builtins
import errno
import hashlib
import io
import json
import os
import shutil
import signal
import struct
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import eval_cs
import model.weights as weights
import predict
from model import build_from_checkpoint, build_seg_model, pretrained, save_final
from model.pretrained import Source
from tests.conftest import interrupt
from utils.cli import run_cli
from utils.errors import CheckpointError


def one_line_error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0] and ": error: " in lines[0]
    return lines[0]


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- 1: a URL's cache entry is keyed by the whole URL ----------------------------------------------
def _state_bytes(seed: int) -> bytes:
    """A final.pth of a D-22 net initialised with `seed`, as bytes."""
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as folder:
        save_final(Path(folder) / "final.pth", build_seg_model("drn_d_22"))
        return (Path(folder) / "final.pth").read_bytes()


def test_two_urls_ending_in_the_same_file_name_are_two_cache_entries(monkeypatch, tmp_path):
    served = {"http://host/h1/final.pth": _state_bytes(1), "http://host/h2/final.pth": _state_bytes(2)}
    asked = []

    def serve(url, timeout):
        asked.append(url)
        return io.BytesIO(served[url])

    monkeypatch.setattr(pretrained, "_urlopen", serve)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    nets = [build_from_checkpoint(url) for url in served]  # what eval_cs.py --restore-from URL does
    expected = [torch.load(io.BytesIO(b), weights_only=True)["state_dict"] for b in served.values()]
    for net, state in zip(nets, expected):
        assert torch.equal(net.seg1.weight, state["seg1.weight"])
    assert not torch.equal(nets[0].seg1.weight, nets[1].seg1.weight)
    assert asked == list(served)
    cache = tmp_path / "hub" / "checkpoints"
    names = sorted(p.name for p in cache.iterdir())
    assert names == sorted(weights.url_cache_name(u) for u in served)
    key = hashlib.sha256(b"http://host/h1/final.pth").hexdigest()[:16]
    assert f"url-{key}-final.pth" in names  # the documented key


# --- 3: eval_cs.py --save-pred refuses a folder holding other files ----------------------------------
def _eval(checkpoint: Path, root: Path, pred: Path, *extra: str) -> list[str]:
    return ["--restore-from", str(checkpoint), "--data-dir", str(root / "cityscapes"), "--input-size", "32,16",
            "--num-workers", "0", "--device", "cpu", "--no-progress", "--save-pred", str(pred), *extra]


def test_save_pred_into_a_folder_of_earlier_predictions_is_refused_unless_overwrite(checkpoint, synthetic_root,
                                                                                     tmp_path, capsys):
    pred = tmp_path / "pred"
    assert run_cli(eval_cs.main, _eval(checkpoint, synthetic_root, pred, "--limit", "2")) == 0
    capsys.readouterr()
    before = files_under(pred)
    assert len(list((pred / "labelIds").rglob("*.png"))) == 2
    # another model (another limit) into the same folder: refused before anything is read or written
    assert run_cli(eval_cs.main, _eval(checkpoint, synthetic_root, pred, "--limit", "1")) == 2
    err = one_line_error(capsys)
    assert f"--save-pred {pred}" in err and "--overwrite-pred" in err and str(checkpoint) in err
    assert files_under(pred) == before
    # --overwrite-pred deletes the earlier predictions first: the folder holds this run's only
    json_path = pred / "eval.json"
    status = run_cli(eval_cs.main, _eval(checkpoint, synthetic_root, pred, "--limit", "1", "--overwrite-pred",
                                         "--json", str(json_path)))
    assert status == 0
    assert len(list((pred / "labelIds").rglob("*.png"))) == 1
    manifest = json.loads((pred / "manifest.json").read_text())
    assert len(manifest["items"]) == 1 and manifest["checkpoint"] == str(checkpoint)
    assert json.loads(json_path.read_text())["num_images"] == 1


def test_overwrite_pred_never_deletes_files_that_are_not_predictions(checkpoint, synthetic_root, tmp_path, capsys):
    pred = tmp_path / "pred"
    (pred / "labelIds").mkdir(parents=True)
    (pred / "labelIds" / "old.png").write_bytes(b"old")
    (pred / "notes.txt").write_text("mine")
    assert run_cli(eval_cs.main, _eval(checkpoint, synthetic_root, pred, "--overwrite-pred")) == 2
    err = one_line_error(capsys)
    assert "notes.txt" in err and "not predictions" in err
    assert files_under(pred) == {"labelIds/old.png": b"old", "notes.txt": b"mine"}


# --- 6: a zip's declared size is checked before it is read ------------------------------------------
def _zip_declaring(path: Path, declared: int) -> Path:
    """A zip holding one small .pth whose headers claim `declared` bytes uncompressed."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("drnd22-0758-02cb44bd.pth", b"\0" * 4096)
    data = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # local header, central directory
        at = data.find(signature)
        struct.pack_into("<I", data, at + offset, declared)
    path.write_bytes(bytes(data))
    return path


def test_a_zip_declaring_a_huge_pth_is_refused_before_it_is_read(tmp_path, monkeypatch):
    path = _zip_declaring(tmp_path / "big.pth.zip", 3_200_000_000)
    read = []
    real_open = zipfile.ZipFile.open
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, name, *a, **k: read.append(name) or real_open(
        self, name, *a, **k))
    with pytest.raises(CheckpointError, match=r"big\.pth\.zip is a zip whose drnd22-0758-02cb44bd\.pth declares "
                                              r"3\.2 GB uncompressed, more than the 1 GiB"):
        build_from_checkpoint(path)
    assert read == []  # refused from the directory alone


def test_a_downloaded_zip_declaring_a_huge_pth_is_a_failed_source(tmp_path):
    blob = _zip_declaring(tmp_path / "served.zip", 3_200_000_000).read_bytes()
    source = Source("a zoo", "http://zoo/x.pth.zip", "x.pth", "sha1", "0" * 40, zipped=True)
    with pytest.raises(ValueError, match="declares 3.2 GB"):
        pretrained.download(source, str(tmp_path / "cache"), lambda url, timeout: io.BytesIO(blob), progress=False)
    assert list((tmp_path / "cache").iterdir()) == []


# --- 7: a video without a decodable frame ----------------------------------------------------------
def test_a_video_without_a_decodable_frame_is_one_line_and_writes_nothing(checkpoint, tmp_path, capsys):
    av = pytest.importorskip("av", reason="PyAV is not installed (optional: pip install av)")
    good = tmp_path / "good.mp4"
    with av.open(str(good), "w", format="mp4", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        for i in range(3):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.full((32, 64, 3), 40 * i, np.uint8), "rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = good.read_bytes()
    video = tmp_path / "drive.mp4"
    video.write_bytes(data[: data.find(b"mdat") + 4])  # the header says 3 frames; their bytes are gone
    out = tmp_path / "out"
    status = run_cli(predict.main, ["--restore-from", str(checkpoint), "--input", str(video), "--out", str(out),
                                    "--input-size", "32,16", "--device", "cpu", "--no-progress"])
    err = one_line_error(capsys)
    assert status == 2 and str(video) in err and "no frame" in err
    assert not out.exists()


# --- 9: a full disk, Ctrl-C and SIGTERM ------------------------------------------------------------
class FullDisk:
    """Every file opened for writing below `root` is backed by /dev/full (ENOSPC at the first write), as on a
    full disk: a file opened in place is created (or truncated), a temporary file too."""

    def __init__(self, monkeypatch, root: Path):
        self.root = str(root)
        real_open, real_os_open = builtins.open, os.open

        def below(path) -> bool:
            return isinstance(path, (str, os.PathLike)) and os.path.abspath(path).startswith(self.root)

        def full_open(file, mode="r", *args, **kwargs):  # Python's open
            if below(file) and any(m in mode for m in "wax+"):
                real_open(file, mode.replace("r", "").replace("+", "") or "w").close()  # created / truncated
                return real_open("/dev/full", "wb" if "b" in mode else "w")
            return real_open(file, mode, *args, **kwargs)

        def full_os_open(file, flags, *args, **kwargs):  # the system call
            if below(file) and flags & (os.O_WRONLY | os.O_RDWR):
                os.close(real_os_open(file, flags, *args, **kwargs))  # created / truncated
                return real_os_open("/dev/full", os.O_WRONLY)
            return real_os_open(file, flags, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", full_open)
        monkeypatch.setattr(os, "open", full_os_open)


def test_a_full_disk_leaves_earlier_pngs_whole_and_is_one_line(checkpoint, synthetic_root, tmp_path, monkeypatch,
                                                               capsys):
    frames = tmp_path / "frames"
    frames.mkdir()
    for p in sorted((synthetic_root / "cityscapes" / "leftImg8bit" / "val").glob("*/*.png"))[:2]:
        shutil.copy(p, frames / p.name)
    out = tmp_path / "out"
    argv = ["--restore-from", str(checkpoint), "--input", str(frames), "--out", str(out), "--input-size", "32,16",
            "--device", "cpu", "--no-progress", "--label-ids"]
    assert run_cli(predict.main, argv) == 0
    before = files_under(out)
    capsys.readouterr()
    FullDisk(monkeypatch, out)
    status = run_cli(predict.main, argv)
    monkeypatch.undo()
    err = one_line_error(capsys)
    assert status == 2 and "cannot write" in err and str(out) in err and "No space left on device" in err
    assert files_under(out) == before  # no PNG emptied or cut, no temporary file left


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_predict_with_128_plus_its_number_and_removes_the_partial_video(checkpoint, tmp_path,
                                                                                        signum):
    av = pytest.importorskip("av", reason="PyAV is not installed (optional: pip install av)")
    video = tmp_path / "drive.mp4"
    rng = np.random.default_rng(0)
    with av.open(str(video), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        for _ in range(1000):  # long enough to be stopped midway
            for packet in stream.encode(av.VideoFrame.from_ndarray(rng.integers(0, 256, (32, 64, 3), np.uint8),
                                                                   "rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    out = tmp_path / "out"
    args = ["predict.py", "--restore-from", str(checkpoint), "--input", str(video), "--out", str(out),
            "--input-size", "32,16", "--device", "cpu", "--no-progress", "--label-ids"]
    status, _, stderr = interrupt(args, lambda: len(list((out / "labelIds" / "drive").glob("*.png"))) >= 2, signum)
    assert status == 128 + signum, stderr
    lines = stderr.strip().splitlines()
    assert lines == [f"predict.py: stopped by {signal.Signals(signum).name}"], stderr
    assert not [p.name for p in out.iterdir() if p.name.startswith(".") or p.suffix == ".mp4"]  # no partial video
    assert not (out / "manifest.json").exists()
    for png in (out / "labelIds" / "drive").iterdir():  # the frames written so far are whole PNGs
        assert np.asarray(Image.open(png)).shape == (32, 64)


# --- 10 and 13: the weights' cache and metadata -----------------------------------------------------
def test_an_unreadable_cached_file_is_reported_once_and_replaced_by_a_download(monkeypatch, tmp_path, capsys):
    served = tmp_path / "served.pth"
    served.write_bytes(b"the right bytes" * 10)
    digest = hashlib.sha256(served.read_bytes()).hexdigest()[:8]
    chain = [Source(f"mirror {i}", served.as_uri(), "drn_d_22-x.pth", "sha256", digest) for i in range(3)]
    # three sources of one file, as the authors'
    monkeypatch.setattr(pretrained, "sources", lambda arch, init="imagenet": chain)
    out = tmp_path / "cache"
    out.mkdir()
    (out / "drn_d_22-x.pth").write_bytes(b"unreadable")
    real_digest = pretrained.file_digest

    def digest_of(path, algorithm):
        if Path(path).read_bytes() == b"unreadable":
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_digest(path, algorithm)

    monkeypatch.setattr(pretrained, "file_digest", digest_of)
    # offline: one line, naming the unreadable file once
    assert run_cli(weights.main, ["fetch", "drn_d_22", "--out", str(out), "--quiet"]) == 2
    err = one_line_error(capsys)
    assert err.count(str(out / "drn_d_22-x.pth")) == 1
    assert "(in the cache: cannot be read, Permission denied; not used)" in err
    # online: the download replaces it
    monkeypatch.setattr(pretrained, "_urlopen", lambda url, timeout: io.BytesIO(served.read_bytes()))
    assert run_cli(weights.main, ["fetch", "drn_d_22", "--out", str(out), "--quiet"]) == 0
    assert (out / "drn_d_22-x.pth").read_bytes() == served.read_bytes()


def test_the_fetch_error_lists_a_refused_cached_file_once(tmp_path):
    (tmp_path / "drn_d_22-4bd2f8ea.pth").write_bytes(b"tampered")
    with pytest.raises(CheckpointError) as err:
        pretrained.fetch("drn_d_22", cache_dir=str(tmp_path), progress=False)
    assert str(err.value).count("(in the cache: sha256 starts") == 1


@pytest.mark.parametrize("aux_layer", ["six", 6.5, True, 12])
def test_a_checkpoint_whose_aux_layer_is_not_a_level_is_a_checkpoint_error(aux_layer, tmp_path):
    path = tmp_path / "odd.pth"
    payload = torch.load(io.BytesIO(_state_bytes(0)), weights_only=True)
    payload["aux_layer"] = aux_layer
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=rf"odd\.pth holds aux_layer {aux_layer!r}; expected a DRN level"):
        build_from_checkpoint(path)


def test_a_resnet_state_dict_is_not_called_a_drn_backbone(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        build_from_checkpoint(path)
    assert "another network" in str(err.value) and "DRN backbone" not in str(err.value)
    with pytest.raises(CheckpointError) as err:
        weights.load_weights(build_seg_model("drn_d_22"), path)
    assert "(not a DRN) does not fit" in str(err.value)


# --- the writer every command uses -----------------------------------------------------------------
def test_atomic_write_gives_the_files_mode_of_open_and_leaves_nothing_on_failure(tmp_path):
    from utils.errors import OutputError
    from utils.files import atomic_write, write_text_atomic

    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "a.json", "{}\n")
        with open(tmp_path / "b.json", "w") as handle:
            handle.write("{}\n")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == (tmp_path / "b.json").stat().st_mode & 0o777 == 0o644
    with pytest.raises(OutputError, match=rf"cannot write {tmp_path / 'a.json'}: No space left on device"), \
            atomic_write(tmp_path / "a.json") as handle:
        handle.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json"]
    assert (tmp_path / "a.json").read_text() == "{}\n"
