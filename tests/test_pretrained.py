"""ImageNet weights: the chain of sources, verified atomic downloads, the cache, and `python -m model.weights fetch`.

No test reaches the network: sources are served by fake openers or file:// addresses.
"""

from __future__ import annotations

import hashlib
import io
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest
import torch

import model.weights as weights
from model import build_drn, build_seg_model, pretrained
from model.pretrained import Source, fetch, sources
from tests.conftest import run_script
from utils.cli import run_cli
from utils.errors import CheckpointError

ARCHIVE_D22 = "https://web.archive.org/web/2019id_/http://dl.yf.io/drn/drn_d_22-4bd2f8ea.pth"
IMGCLSMOB_D22 = "https://github.com/osmr/imgclsmob/releases/download/v0.0.498/drnd22-0758-02cb44bd.pth.zip"


class FakeOpener:
    """Serves bytes (or raises) per URL, and records what was asked."""

    def __init__(self, answers: dict):
        self.answers = answers
        self.asked: list[str] = []

    def __call__(self, url: str, timeout: float):
        self.asked.append(url)
        answer = self.answers.get(url, urllib.error.URLError("[Errno -2] Name or service not known"))
        if isinstance(answer, BaseException):
            raise answer
        return answer() if callable(answer) else io.BytesIO(answer)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def chain_of(monkeypatch, *entries: tuple[str, bytes | None]) -> list[Source]:
    """Replace every architecture's chain by sources checked against the given payloads' SHA-256."""
    chain = [Source(f"source {i}", url, f"weights-{i}.pth", "sha256", sha256(data)[:8] if data else "0" * 8)
             for i, (url, data) in enumerate(entries)]
    monkeypatch.setattr(pretrained, "sources", lambda arch, init="imagenet": chain)
    return chain


def test_the_chain_prefers_the_authors_then_the_archive_then_imgclsmob():
    chain = sources("drn_d_22")
    assert [s.url for s in chain] == [
        "http://dl.yf.io/drn/drn_d_22-4bd2f8ea.pth", ARCHIVE_D22,
        "https://web.archive.org/web/2019id_/https://tigress-web.princeton.edu/~fy/drn/models/drn_d_22-4bd2f8ea.pth",
        IMGCLSMOB_D22]
    assert [(s.file_name, s.algorithm, s.digest) for s in chain][2:] == [
        ("drn_d_22-4bd2f8ea.pth", "sha256", "4bd2f8ea"),
        ("drnd22-0758-02cb44bd.pth", "sha1", "02cb44bdea9b05e988e65576f79f5f5c133f2664")]
    assert sources("drn_d_38")[0].digest == "eebb45f0" and sources("drn_d_24") == []


def test_imgclsmob_table_matches_the_one_pytorchcv_publishes():
    store = pytest.importorskip("pytorchcv.models.common.model_store")
    published = store.get_model_metainfo_dict()
    for model_name, error, sha1, tag in pretrained.IMGCLSMOB_FILES.values():
        _, their_error, their_sha1, their_tag = published[model_name]
        assert (error, sha1, tag) == (their_error, their_sha1, their_tag)


def test_checksum_mismatch_is_refused_and_leaves_no_file(monkeypatch, tmp_path):
    chain_of(monkeypatch, ("http://a/w.pth", b"the published bytes"))
    opener = FakeOpener({"http://a/w.pth": b"other bytes"})
    with pytest.raises(CheckpointError, match=r"http://a/w\.pth \(ValueError: checksum mismatch: sha256 "):
        fetch("drn_d_22", cache_dir=str(tmp_path), opener=opener, progress=False, log=lambda _: None)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_source_falls_through_to_the_next(monkeypatch, tmp_path):
    good = b"weights from the third source"
    chain_of(monkeypatch, ("http://a/1", good), ("http://b/2", good), ("http://c/3", good))
    opener = FakeOpener({"http://b/2": urllib.error.HTTPError("http://b/2", 404, "Not Found", None, None),
                         "http://c/3": good})
    said: list[str] = []
    path, source = fetch("drn_d_22", cache_dir=str(tmp_path), opener=opener, progress=False, log=said.append)
    assert opener.asked == ["http://a/1", "http://b/2", "http://c/3"]
    assert source.url == "http://c/3" and Path(path).read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights-2.pth"]
    assert said == [f"drn_d_22: {path} downloaded from http://c/3 (source 2) after http://a/1 (unreachable: [Errno -2] "
                    "Name or service not known); http://b/2 (HTTP 404 Not Found)"]


def test_a_cached_file_is_used_without_the_network(monkeypatch, tmp_path):
    data = b"verified once"
    chain_of(monkeypatch, ("http://a/1", data))
    first, _ = fetch("drn_d_22", cache_dir=str(tmp_path), opener=FakeOpener({"http://a/1": data}), progress=False,
                     log=lambda _: None)
    offline = FakeOpener({})
    again, _ = fetch("drn_d_22", cache_dir=str(tmp_path), opener=offline, progress=False)
    assert again == first and offline.asked == []


def test_a_cached_file_with_a_wrong_checksum_is_not_used(monkeypatch, tmp_path):
    chain_of(monkeypatch, ("http://a/1", b"right"))
    (tmp_path / "weights-0.pth").write_bytes(b"tampered")
    with pytest.raises(CheckpointError, match=r"weights-0\.pth \(in the cache: sha256 starts .*not used\)"):
        fetch("drn_d_22", cache_dir=str(tmp_path), opener=FakeOpener({}), progress=False, log=lambda _: None)
    path, _ = fetch("drn_d_22", cache_dir=str(tmp_path), opener=FakeOpener({"http://a/1": b"right"}),
                    progress=False, log=lambda _: None)
    assert Path(path).read_bytes() == b"right"  # the download replaced the bad file


@pytest.mark.parametrize("stop", [ConnectionResetError, KeyboardInterrupt])
def test_an_interrupted_download_leaves_no_file_behind(monkeypatch, tmp_path, stop):
    data = b"x" * 5000
    chain_of(monkeypatch, ("http://a/1", data))

    class Dropped(io.BytesIO):
        """A response whose connection drops (or whose user presses Ctrl-C) after the first chunk."""

        def read(self, size=-1):
            if self.tell() > 0:
                raise stop()
            return super().read(1000)

    opener = FakeOpener({"http://a/1": lambda: Dropped(data)})
    with pytest.raises(CheckpointError if stop is ConnectionResetError else KeyboardInterrupt):
        fetch("drn_d_22", cache_dir=str(tmp_path), opener=opener, progress=False, log=lambda _: None)
    assert list(tmp_path.iterdir()) == []


def _zip(name: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(name, data)
    return buffer.getvalue()


def test_an_imgclsmob_zip_is_checked_by_its_inner_pth(monkeypatch, tmp_path):
    inner = b"the .pth inside"
    source = Source("zoo", "http://z/w.pth.zip", "w.pth", "sha1", hashlib.sha1(inner).hexdigest(), zipped=True)
    monkeypatch.setattr(pretrained, "sources", lambda arch, init="imagenet": [source])
    bad = FakeOpener({"http://z/w.pth.zip": _zip("w.pth", b"something else")})
    with pytest.raises(CheckpointError, match="checksum mismatch: sha1"):
        fetch("drn_d_22", cache_dir=str(tmp_path), opener=bad, progress=False, log=lambda _: None)
    assert list(tmp_path.iterdir()) == []
    good = FakeOpener({"http://z/w.pth.zip": _zip("w.pth", inner)})
    path, _ = fetch("drn_d_22", cache_dir=str(tmp_path), opener=good, progress=False, log=lambda _: None)
    assert Path(path).read_bytes() == inner and [p.name for p in tmp_path.iterdir()] == ["w.pth"]


def test_every_source_failing_is_one_line_listing_each_address_and_the_fetch_command(tmp_path):
    with pytest.raises(CheckpointError) as err:
        fetch("drn_d_22", cache_dir=str(tmp_path), opener=FakeOpener({}), progress=False, log=lambda _: None)
    msg = str(err.value)
    assert "\n" not in msg
    for source in sources("drn_d_22"):
        assert f"{source.url} (unreachable: [Errno -2] Name or service not known)" in msg
    assert "`python -m model.weights fetch drn_d_22`" in msg
    assert f"{tmp_path}/ (as drn_d_22-4bd2f8ea.pth or drnd22-0758-02cb44bd.pth)" in msg
    assert msg.endswith("or pass it with --pretrained PATH")


def test_pretrained_imagenet_offline_is_a_checkpoint_error_naming_the_sources(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # the offline opener comes from conftest
    with pytest.raises(CheckpointError, match=f"no ImageNet weights for drn_d_38: .*{IMGCLSMOB_D22[:40]}"):
        build_seg_model("drn_d_38", pretrained="imagenet")


def test_pretrained_imagenet_loads_the_verified_cached_file(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(3)
    state = build_drn("drn_d_22", num_classes=1000).state_dict()
    blob = io.BytesIO()
    torch.save(state, blob)
    prefix = sha256(blob.getvalue())[:8]
    monkeypatch.setitem(pretrained.MODEL_URLS, "drn_d_22", f"http://dl.yf.io/drn/drn_d_22-{prefix}.pth")
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / f"drn_d_22-{prefix}.pth").write_bytes(blob.getvalue())
    net = build_seg_model("drn_d_22", pretrained="imagenet")
    assert torch.equal(net.base.layer8[0].weight, state["layer8.0.weight"])


def _local_opener(url: str, timeout: float):
    assert url.startswith("file://"), url  # never the network
    return urllib.request.urlopen(url, timeout=timeout)


def test_fetch_command_downloads_verifies_and_prints_the_path_and_flag(monkeypatch, tmp_path, capsys):
    served = tmp_path / "served"
    served.mkdir()
    files = {}
    for arch in ("drn_d_22", "drn_d_38"):
        files[arch] = served / f"{arch}.pth"
        files[arch].write_bytes(arch.encode() * 100)
    monkeypatch.setattr(pretrained, "_urlopen", _local_opener)
    monkeypatch.setattr(pretrained, "sources", lambda arch, init="imagenet": [
        Source("the test's folder", files[arch].as_uri(), f"{arch}-x.pth", "sha256",
               sha256(files[arch].read_bytes())[:8])] if arch in files else [])
    out = tmp_path / "out"
    assert run_cli(weights.main, ["fetch", "drn_d_22", "drn_d_38", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert f"drn_d_22: {out / 'drn_d_22-x.pth'} (from the test's folder, sha256" in printed
    assert f"drn_d_38: {out / 'drn_d_38-x.pth'}" in printed and "--pretrained PATH" in printed
    assert (out / "drn_d_38-x.pth").read_bytes() == files["drn_d_38"].read_bytes()


def test_fetch_command_offline_exits_2_with_one_line(tmp_path, capsys):
    assert run_cli(weights.main, ["fetch", "drn_d_22", "--out", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error: no ImageNet weights for drn_d_22: every source failed: http://dl.yf.io/drn/" in err
    assert ARCHIVE_D22 in err and IMGCLSMOB_D22 in err and "python -m model.weights fetch drn_d_22" in err
    assert list(tmp_path.iterdir()) == []


def test_fetch_command_runs_as_a_module_and_refuses_an_unpublished_arch():
    result = run_script("-m", "model.weights", "fetch", "drn_d_24")
    assert result.returncode == 2
    assert result.stderr.startswith("python -m model.weights fetch: error: argument ARCH: invalid choice: 'drn_d_24'")
    assert "RuntimeWarning" not in result.stderr


def test_a_tiny_training_run_starts_from_a_verified_cached_file(synthetic_root, monkeypatch, tmp_path):
    import train_gta2cs_multi_drnd22 as student_script
    from tests.conftest import tiny_train_args

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    blob = io.BytesIO()
    torch.save(build_drn("drn_d_22", num_classes=1000).state_dict(), blob)
    prefix = sha256(blob.getvalue())[:8]  # a checksum table that this file matches
    monkeypatch.setitem(pretrained.MODEL_URLS, "drn_d_22", f"http://dl.yf.io/drn/drn_d_22-{prefix}.pth")
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / f"drn_d_22-{prefix}.pth").write_bytes(blob.getvalue())
    used = []
    checked = pretrained.file_digest
    monkeypatch.setattr(pretrained, "file_digest", lambda path, algo: used.append(path) or checked(path, algo))
    out = tmp_path / "run"
    args = [*tiny_train_args(synthetic_root, out, steps=1), "--pretrained", "imagenet"]
    assert student_script.main(args) == 0
    assert used == [str(cache / f"drn_d_22-{prefix}.pth")] and (out / "log.jsonl").exists()
