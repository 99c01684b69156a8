"""Weight loading and saving: every accepted form, and a clear CheckpointError for every bad one."""

from __future__ import annotations

import io
import os

import pytest
import torch

from model import (
    MODEL_URLS,
    build_drn,
    build_from_checkpoint,
    build_seg_model,
    load_weights,
    read_checkpoint,
    save_final,
)
from model.weights import infer_arch, url_cache_name
from utils.errors import CheckpointError


@pytest.fixture(scope="module")
def trained() -> torch.nn.Module:
    """A D-22 SegNet with non-default weights and BN statistics."""
    torch.manual_seed(1)
    net = build_seg_model("drn_d_22")
    with torch.no_grad():
        net.train()(torch.randn(2, 3, 32, 32))  # moves the running statistics
        net.seg2.bias.normal_()
    return net.eval()


def same_outputs(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    x = torch.randn(1, 3, 32, 40, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return all(torch.equal(u, v) for u, v in zip(a.eval()(x), b.eval()(x)))


def test_old_code_state_dict_loads_ignoring_up1_up2_and_gives_the_same_outputs(trained, tmp_path):
    sd = dict(trained.state_dict())
    sd["up1.weight"] = torch.randn(19, 1, 16, 16)
    sd["up2.weight"] = torch.randn(19, 1, 16, 16)
    path = tmp_path / "GTA5_100000.pth"
    torch.save(sd, path)
    fresh = build_seg_model("drn_d_22")
    report = load_weights(fresh, str(path))
    assert report.form == "old-code"
    assert report.ignored == ["up1.weight", "up2.weight"]
    assert report.missing == []
    assert same_outputs(fresh, trained)
    assert "ignored 2 unused (up1.weight, up2.weight)" in str(report)


def test_data_parallel_prefix_is_stripped(trained, tmp_path):
    path = tmp_path / "ddp.pth"
    torch.save({f"module.{k}": v for k, v in trained.state_dict().items()}, path)
    fresh = build_seg_model("drn_d_22")
    assert load_weights(fresh, str(path)).form == "segnet"
    assert same_outputs(fresh, trained)


def test_save_final_round_trip_and_build_from_checkpoint(trained, tmp_path):
    path = tmp_path / "out" / "final.pth"
    save_final(str(path), trained)
    assert sorted(os.listdir(path.parent)) == ["final.pth"]  # no temp file left behind
    ckpt = read_checkpoint(str(path))
    assert {k: ckpt[k] for k in ("format", "arch", "aux_layer", "num_classes")} == {
        "format": "dakd-final", "arch": "drn_d_22", "aux_layer": 6, "num_classes": 19}
    net = build_from_checkpoint(str(path))
    assert (net.arch, net.aux_layer, net.num_classes) == ("drn_d_22", 6, 19)
    assert same_outputs(net, trained)


def test_training_checkpoint_form_loads(trained, tmp_path):
    path = tmp_path / "last.pth"
    torch.save({"format": "dakd-train", "arch": "drn_d_22", "aux_layer": 6, "num_classes": 19,
                "net": trained.state_dict(), "step": 10, "optimizer": {"state": {}, "param_groups": []}}, path)
    fresh = build_seg_model("drn_d_22")
    assert load_weights(fresh, str(path)).form == "dakd-train"
    assert same_outputs(fresh, trained)
    assert same_outputs(build_from_checkpoint(str(path)), trained)


def test_checkpoint_of_another_net_names_the_difference(trained, tmp_path):
    path = tmp_path / "final.pth"
    save_final(str(path), trained)
    with pytest.raises(CheckpointError, match=r"aux_layer 6 \(net: 7\)"):
        load_weights(build_seg_model("drn_d_22", aux_layer=7), str(path))


@pytest.mark.parametrize("arch", ["drn_d_22", "drn_d_38", "drn_c_26", "drn_d_24"])
def test_old_code_state_dict_builds_the_architecture_its_keys_show(arch, tmp_path):
    torch.manual_seed(2)
    net = build_seg_model(arch).eval()
    sd = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}  # old PyTorch
    sd["up1.weight"], sd["up2.weight"] = torch.randn(19, 1, 16, 16), torch.randn(19, 1, 16, 16)
    path = tmp_path / "GTA5_100000.pth"
    torch.save(sd, path)
    built = build_from_checkpoint(str(path))
    assert built.arch == arch and same_outputs(built, net)


def test_infer_arch_reads_imagenet_backbones_and_refuses_unknown_ones():
    assert infer_arch(build_drn("drn_d_38", num_classes=1000).state_dict()) == "drn_d_38"
    sd = dict(build_seg_model("drn_d_22").state_dict())
    del sd["base.layer8.0.weight"]
    assert infer_arch(sd) is None


def test_foreign_form_that_matches_no_architecture_is_refused(trained, tmp_path):
    sd = {k: v for k, v in trained.state_dict().items() if not k.startswith("base.layer8")}
    path = tmp_path / "raw.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="match none of the DRN architectures"):
        build_from_checkpoint(str(path))


def test_wrong_class_count_names_keys_and_shapes(trained, tmp_path):
    path = tmp_path / "raw19.pth"
    torch.save(trained.state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        load_weights(build_seg_model("drn_d_22", num_classes=7), str(path))
    msg = str(err.value)
    assert "raw19.pth" in msg and "4 keys with other shapes" in msg
    assert "seg1.weight: expected [7, 512, 1, 1], found [19, 512, 1, 1]" in msg


def test_wrong_architecture_lists_missing_and_unexpected_keys(trained, tmp_path):
    path = tmp_path / "d22.pth"
    torch.save(trained.state_dict(), path)
    with pytest.raises(CheckpointError, match=r"keys missing from the checkpoint \(base\.layer3\.2\."):
        load_weights(build_seg_model("drn_d_38"), str(path))


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(CheckpointError, match=f"checkpoint not found: {path}"):
        load_weights(build_seg_model("drn_d_22"), str(path))


def test_truncated_file_names_the_file(trained, tmp_path):
    path = tmp_path / "cut.pth"
    torch.save(trained.state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pth is truncated, corrupt"):
        load_weights(build_seg_model("drn_d_22"), str(path))


def test_whole_pickled_model_is_refused_unless_allowed(trained, tmp_path):
    path = tmp_path / "model.pth"
    torch.save(trained, path)
    with pytest.raises(CheckpointError, match=r"refused for safety.*--allow-pickle"):
        load_weights(build_seg_model("drn_d_22"), str(path))
    fresh = build_seg_model("drn_d_22")
    assert load_weights(fresh, str(path), allow_pickle=True).form == "segnet"
    assert same_outputs(fresh, trained)


def test_offline_url_says_what_to_download_and_where(tmp_path):
    url = MODEL_URLS["drn_d_22"]  # the conftest's opener is offline
    with pytest.raises(CheckpointError) as err:
        load_weights(build_seg_model("drn_d_22"), url, cache_dir=str(tmp_path))
    msg = str(err.value)
    assert url in msg and str(tmp_path / url_cache_name(url)) in msg and "download it by hand" in msg
    assert list(tmp_path.iterdir()) == []  # no partial download left


def test_a_url_is_downloaded_once_into_the_cache_and_loaded_safely(monkeypatch, tmp_path):
    from model import pretrained
    from model.drn import drn_d_22

    sd = drn_d_22(num_classes=1000).state_dict()
    blob = io.BytesIO()
    torch.save(sd, blob)
    asked = []

    def serve(url, timeout):
        asked.append(url)
        return io.BytesIO(blob.getvalue())

    monkeypatch.setattr(pretrained, "_urlopen", serve)
    for _ in range(2):
        net = build_seg_model("drn_d_22")
        load_weights(net, MODEL_URLS["drn_d_22"], cache_dir=str(tmp_path))
        assert torch.equal(net.base.state_dict()["layer0.0.weight"], sd["layer0.0.weight"])
    assert asked == [MODEL_URLS["drn_d_22"]]  # the second load reads the cache
    assert [p.name for p in tmp_path.iterdir()] == [url_cache_name(MODEL_URLS["drn_d_22"])]


def test_non_weights_file_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="not a dict"):
        read_checkpoint(str(path))


def test_a_backbone_alone_is_not_a_segmentation_net(tmp_path):
    path = tmp_path / "drn_d_38-imagenet.pth"
    torch.save(build_drn("drn_d_38", num_classes=1000).state_dict(), path)
    with pytest.raises(CheckpointError, match="without the segmentation heads"):
        build_from_checkpoint(str(path))
