"""predict.py: one colour mask and one overlay per input image, at the image's own size; clear errors."""
from __future__ import annotations

import json
import shutil
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import predict
from utils.cli import run_cli
from utils.errors import ConfigError, DatasetError


@pytest.fixture()
def image_folder(synthetic_root, tmp_path) -> Path:
    """Three Cityscapes PNGs at the top and three BDD JPEGs (another size) in a sub-folder."""
    folder = tmp_path / "frames"
    (folder / "sub").mkdir(parents=True)
    for p in sorted((synthetic_root / "cityscapes" / "leftImg8bit" / "val").glob("*/*.png"))[:3]:
        shutil.copy(p, folder / p.name)
    for p in sorted((synthetic_root / "bdd" / "images" / "val").glob("*.jpg"))[:3]:
        shutil.copy(p, folder / "sub" / p.name)
    (folder / "notes.txt").write_text("not an image")
    return folder


def run(checkpoint: Path, inp: Path, out: Path, *extra: str) -> list[dict]:
    return predict.main(["--restore-from", str(checkpoint), "--input", str(inp), "--out", str(out),
                         "--input-size", "32,16", "--device", "cpu", "--no-progress", *extra])


def test_folder_gives_one_mask_and_one_overlay_per_image(checkpoint, image_folder, tmp_path):
    out = tmp_path / "out"
    entries = run(checkpoint, image_folder, out)
    inputs = sorted(p.relative_to(image_folder).with_suffix("").as_posix()
                    for p in image_folder.rglob("*") if p.suffix in (".png", ".jpg"))
    assert len(entries) == len(inputs) == 6
    for sub in ("color", "overlay"):
        written = sorted(p.relative_to(out / sub).with_suffix("").as_posix() for p in (out / sub).rglob("*.png"))
        assert written == inputs
    for rel in inputs:
        src = next(image_folder.glob(f"{rel}.*"))
        mask = np.asarray(Image.open(out / "color" / f"{rel}.png"))
        assert mask.shape == (*np.asarray(Image.open(src)).shape[:2], 3)  # the image's own size
    assert len(json.loads((out / "manifest.json").read_text())["items"]) == 6


def test_single_image_with_label_ids_and_flip(checkpoint, image_folder, tmp_path):
    from dataset.decode import read_image
    from dataset.labels import TRAIN_ID_TO_LABEL_ID
    from utils.evaluate import load_net

    image = sorted(image_folder.glob("*.png"))[0]
    out = tmp_path / "out"
    entries = run(checkpoint, image, out, "--label-ids", "--flip")
    assert len(entries) == 1
    ids = np.asarray(Image.open(entries[0]["label_ids"]))
    # the label ids of the flip-averaged prediction at the image's size (the plain one differs)
    net, pixels = load_net(str(checkpoint)), read_image(image)
    flipped = predict.segment_image(net, pixels, (32, 16), torch.device("cpu"), flip=True).numpy()
    plain = predict.segment_image(net, pixels, (32, 16), torch.device("cpu")).numpy()
    assert np.array_equal(ids, np.asarray(TRAIN_ID_TO_LABEL_ID)[flipped]) and not np.array_equal(flipped, plain)
    assert (out / "overlay" / f"{image.stem}.png").is_file()


@pytest.mark.parametrize("flags", [("--fold-bn",), ("--channels-last",), ("--fold-bn", "--channels-last")])
def test_fast_paths_write_the_same_label_ids(checkpoint, image_folder, tmp_path, flags):
    image = sorted(image_folder.glob("*.png"))[0]
    plain = run(checkpoint, image, tmp_path / "plain", "--label-ids")[0]
    fast = run(checkpoint, image, tmp_path / "fast", "--label-ids", *flags)[0]
    a, b = (np.asarray(Image.open(e["label_ids"])) for e in (plain, fast))
    assert a.shape == b.shape and (a == b).mean() > 0.999


def test_unsupported_or_missing_input_is_one_line_exit_2(checkpoint, image_folder, tmp_path, capsys):
    for bad in (image_folder / "notes.txt", tmp_path / "missing"):
        status = run_cli(predict.main, ["--restore-from", str(checkpoint), "--input", str(bad), "--out",
                                        str(tmp_path / "o")])
        err = capsys.readouterr().err.strip().splitlines()
        assert status == 2 and len(err) == 1 and str(bad) in err[0]


def test_empty_folder_is_a_dataset_error(checkpoint, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        run(checkpoint, tmp_path / "empty", tmp_path / "out")


def test_two_inputs_with_one_output_name_are_refused(checkpoint, image_folder, tmp_path):
    src = sorted(image_folder.glob("*.png"))[0]
    Image.open(src).convert("RGB").save(image_folder / f"{src.stem}.jpg")
    with pytest.raises(DatasetError, match="same output name"):
        run(checkpoint, image_folder, tmp_path / "out")


def test_alpha_out_of_range_is_a_config_error(checkpoint, image_folder, tmp_path):
    with pytest.raises(ConfigError, match="--alpha"):
        run(checkpoint, image_folder, tmp_path / "out", "--alpha", "1.5")


# --- video ----------------------------------------------------------------------------------------
def write_video(path: Path, frames: list[np.ndarray], rate: int) -> Path:
    """A short H.264 video of RGB frames, written with PyAV (yuv444p: any size, little colour loss)."""
    av = pytest.importorskip("av", reason="PyAV is not installed (optional: pip install av)")
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv444p"
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def decoded_frames(path: Path) -> tuple[list[np.ndarray], Fraction]:
    """Every frame of a video as RGB arrays, and its average frame rate."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [f.to_ndarray(format="rgb24") for f in container.decode(stream)], stream.average_rate


@pytest.fixture()
def street_video(synthetic_root, tmp_path) -> Path:
    """Six 64x32 street frames (the synthetic Cityscapes images) at 12 frames/s."""
    files = sorted((synthetic_root / "cityscapes" / "leftImg8bit").rglob("*.png"))[:6]
    frames = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    return write_video(tmp_path / "drive.mp4", frames, 12)


def test_video_keeps_frames_size_and_rate_and_predicts_like_the_frames_as_images(checkpoint, street_video,
                                                                                 tmp_path):
    out = tmp_path / "out"
    entry = run(checkpoint, street_video, out, "--label-ids", "--alpha", "0.7")[0]
    frames, rate = decoded_frames(out / "drive_overlay.mp4")
    assert entry["video"] == str(out / "drive_overlay.mp4") and entry["frames"] == 6
    assert len(frames) == 6 and frames[0].shape == (32, 64, 3) and rate == 12
    # the same decoded frames as PNGs through the image path give the same label ids
    source, _ = decoded_frames(street_video)
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    for i, rgb in enumerate(source):
        Image.fromarray(rgb).save(pngs / f"frame_{i:06d}.png")
    run(checkpoint, pngs, tmp_path / "as_images", "--label-ids")
    for i in range(6):
        from_video = np.asarray(Image.open(out / "labelIds" / "drive" / f"frame_{i:06d}.png"))
        from_image = np.asarray(Image.open(tmp_path / "as_images" / "labelIds" / f"frame_{i:06d}.png"))
        assert from_video.shape == (32, 64) and (from_video == from_image).all()
    assert json.loads((out / "manifest.json").read_text())["items"][0]["frames"] == 6


def test_odd_sized_video_keeps_its_size_and_every_divides_the_rate(checkpoint, tmp_path):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (31, 45, 3), dtype=np.uint8) for _ in range(5)]
    video = write_video(tmp_path / "odd.mkv", frames, 10)
    run(checkpoint, video, tmp_path / "out", "--every", "2")
    got, rate = decoded_frames(tmp_path / "out" / "odd_overlay.mp4")
    assert len(got) == 3 and got[0].shape == (31, 45, 3) and rate == 5


def test_video_without_pyav_is_one_line_exit_2(checkpoint, street_video, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` now raises ImportError
    status = run_cli(predict.main, ["--restore-from", str(checkpoint), "--input", str(street_video),
                                    "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "pip install av" in err[0]
    assert not (tmp_path / "o").exists()


def test_a_file_that_is_not_a_video_is_one_line_exit_2(checkpoint, tmp_path, capsys):
    pytest.importorskip("av", reason="PyAV is not installed (optional: pip install av)")
    fake = tmp_path / "drive.mp4"
    fake.write_bytes(b"not a video at all" * 10)
    status = run_cli(predict.main, ["--restore-from", str(checkpoint), "--input", str(fake),
                                    "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and str(fake) in err[0] and "not a video" in err[0]


# --- ONNX -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def onnx_model(checkpoint, tmp_path_factory) -> Path:
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (optional: pip install onnxruntime)")
    from utils.evaluate import load_net
    from utils.onnx_export import export

    return export(load_net(str(checkpoint)), tmp_path_factory.mktemp("onnx") / "student.onnx")


def test_onnx_graph_predicts_like_its_checkpoint_on_images_and_video(checkpoint, onnx_model, image_folder,
                                                                     street_video, tmp_path, capsys):
    plain = run(checkpoint, image_folder, tmp_path / "torch", "--label-ids")
    graph = predict.main(["--onnx", str(onnx_model), "--input", str(image_folder), "--out", str(tmp_path / "ort"),
                          "--input-size", "32,16", "--no-progress", "--label-ids"])
    assert len(graph) == len(plain) == 6
    printed = capsys.readouterr().out
    assert "running: torch fp32" in printed and "running: onnxruntime, fp32 graph" in printed
    for a, b in zip(plain, graph):
        ids_a, ids_b = (np.asarray(Image.open(e["label_ids"])) for e in (a, b))
        # the graph upsamples its output to the input size, then to the image's: a few border pixels differ
        assert ids_a.shape == ids_b.shape and (ids_a == ids_b).mean() > 0.97
    entry = predict.main(["--onnx", str(onnx_model), "--input", str(street_video), "--out", str(tmp_path / "v"),
                          "--input-size", "32,16", "--no-progress"])[0]
    assert entry["frames"] == 6 and (tmp_path / "v" / "drive_overlay.mp4").is_file()


def test_onnx_that_is_not_a_model_is_a_checkpoint_error(image_folder, tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (optional: pip install onnxruntime)")
    from utils.errors import CheckpointError

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="bad.onnx: onnxruntime cannot load it"):
        predict.main(["--onnx", str(bad), "--input", str(image_folder), "--out", str(tmp_path / "o")])


def foreign_graph(path: Path, output: str) -> Path:
    """A graph with the `image` input that export_onnx.py writes but another output: 'rgb' (N, 3, H, W) scores,
    'symbolic' the same with its channels not declared, or 'pooled' (N, 3) (one vector per image)."""
    onnx = pytest.importorskip("onnx", reason="onnx is not installed (optional: pip install onnx)")
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1), "w")
    nodes = [helper.make_node("Conv", ["image", "w"], [output if output == "symbolic" else "rgb"])]
    dims = ["batch", "classes" if output == "symbolic" else 3, "height", "width"]
    if output == "pooled":
        nodes += [helper.make_node("GlobalAveragePool", ["rgb"], ["gap"]),
                  helper.make_node("Flatten", ["gap"], ["pooled"])]
        dims = ["batch", 3]
    graph = helper.make_graph(nodes, "foreign", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                               ["batch", 3, "height", "width"])],
                              [helper.make_tensor_value_info(output, TensorProto.FLOAT, dims)], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize("output, shape", [("rgb", "(batch, 3, height, width)"),
                                           ("symbolic", "(batch, 3, height, width)"), ("pooled", "(batch, 3)")])
def test_onnx_whose_output_is_not_one_score_map_per_class_stops_in_one_line(output, shape, image_folder, tmp_path,
                                                                            capsys):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (optional: pip install onnxruntime)")
    graph = foreign_graph(tmp_path / f"{output}.onnx", output)
    out = tmp_path / "out"
    status = run_cli(predict.main, ["--onnx", str(graph), "--input", str(image_folder), "--out", str(out),
                                    "--input-size", "32,16", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1, err
    assert f"{output}.onnx" in err[0] and shape in err[0] and "(N, 19, H, W)" in err[0]
    assert not out.exists() or not any(out.rglob("*.png"))
