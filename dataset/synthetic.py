"""Synthetic driving-scene benchmark in the real GTA5, Cityscapes, BDD100K and SYNTHIA layouts.

    python -m dataset.synthetic --out DIR [--num-train 200] [--num-val 50] [--size 128,64] [--seed 0]
                                [--quirks] [--bdd-layout 2018|10k] [--domains gta5 cityscapes bdd synthia]

writes DIR/gta5 and DIR/synthia (sources: train frames only, like the real ones), DIR/cityscapes and
DIR/bdd (targets: train and val). The domains share the scene model (road below, sky above, object
shapes) but differ systematically in look and camera:
- gta5, "rendered game": saturated flat colours, strong contrast, sharp edges, almost no texture,
  no sensor noise; horizon at 45 % of the height; many vehicles. 1914:1052 frames (W x round(W*0.55)).
- cityscapes: desaturated, greenish-grey, flatter contrast, fixed per-class hue/brightness shifts,
  full texture, sensor noise, slight blur; higher horizon (38 %), a small ego hood (label id 1);
  more persons, riders and trees, fewer trucks. 2:1 frames at --size.
- bdd: darker and warmer (dusk dashcam), another per-class shift table, gamma, vignetting, JPEG
  artefacts; lower horizon (50 %), a large ego hood (ignored); many cars. 16:9 frames.
- synthia, "rendered city" (SYNTHIA-RAND-CITYSCAPES): clean rendering, bluish and brighter, a milder
  per-class shift table; a raised camera (horizon at 35 %), many pedestrians. 1280:760 frames named
  RGB/NNNNNNN.png with GT/LABELS/NNNNNNN.png written as the real ones: 16-bit RGB PNGs, SYNTHIA's class
  id in the first channel, an instance id in the second (terrain, truck and train get SYNTHIA's ids,
  which the loader ignores as the field does).
Same seed -> identical files. `--quirks` turns a few GTA5 frames into the real download's quirks
(`dataset.synth_quirks`); `--bdd-layout 10k` writes BDD in today's layout, DIR/bdd/bdd100k/images/10k/
and DIR/bdd/bdd100k/labels/sem_seg/masks/ (default 2018: DIR/bdd holds the seg/ folder's images/ and
labels/), with the same frames either way.
"""
from __future__ import annotations

import io
import struct
import sys
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from dataset.labels import (
    IGNORE_LABEL,
    NUM_CLASSES,
    PALETTE,
    SYNTHIA_CLASSES,
    SYNTHIA_TO_TRAIN_ID,
    TRAIN_ID_TO_LABEL_ID,
)
from dataset.layouts import BDD, BDD_10K
from dataset.synth_canvas import EGO
from dataset.synth_quirks import MIN_FRAMES, add_gta5_quirks
from dataset.synth_scene import SceneParams, draw_scene
from utils.cli import ArgumentParser, check_output, non_negative_int, positive_int, run_cli, size_arg
from utils.errors import ConfigError
from utils.files import write_bytes_atomic

DEFAULT_NUM_TRAIN = 200
DEFAULT_NUM_VAL = 50
DEFAULT_SIZE = (128, 64)  # Cityscapes-like 2:1; GTA5 and BDD keep their own aspect ratios
DEFAULT_SEED = 0
DOMAINS = ("gta5", "cityscapes", "bdd", "synthia")  # appended in this order: a domain's index seeds its frames
SOURCE_ONLY = ("gta5", "synthia")  # no official split: train frames only
TRAIN_CITIES = ("aachen", "bochum", "bremen", "cologne", "darmstadt")
VAL_CITIES = ("frankfurt", "lindau", "munster")
EGO_LABEL_ID = 1  # Cityscapes "ego vehicle"
BDD_WRITE_LAYOUTS = {"2018": (BDD, "."), "10k": (BDD_10K, "bdd100k")}  # layout, folder below DIR/bdd


@dataclass(frozen=True)
class Style:
    """How one domain turns a drawn scene into pixels (all systematic, none random per frame)."""

    aspect: float  # height / width
    texture: float  # scale of the texture ("shade") channel
    saturation: float
    contrast: float
    brightness: float
    tint: tuple[float, float, float]
    gamma: float
    blur: float  # Gaussian sigma, pixels at the default width (scaled with the width)
    noise: float  # sensor noise std (0..1 intensity)
    hue_shift: float  # max per-class hue rotation (degrees), from a fixed per-domain table
    gain_shift: float  # max per-class brightness change
    table_seed: int
    vignette: float = 0.0
    jpeg: int = 0  # JPEG quality (0: PNG)


STYLES = {
    "gta5": Style(aspect=1052 / 1914, texture=0.35, saturation=1.35, contrast=1.2, brightness=1.05,
                  tint=(1.0, 1.0, 1.0), gamma=0.95, blur=0.0, noise=0.0, hue_shift=0.0, gain_shift=0.0,
                  table_seed=0),
    "cityscapes": Style(aspect=0.5, texture=1.0, saturation=0.5, contrast=0.75, brightness=0.92,
                        tint=(0.93, 1.02, 0.95), gamma=1.0, blur=0.7, noise=0.03, hue_shift=20.0,
                        gain_shift=0.2, table_seed=1001),
    "bdd": Style(aspect=9 / 16, texture=1.0, saturation=0.8, contrast=0.95, brightness=0.8,
                 tint=(1.1, 0.96, 0.8), gamma=1.15, blur=0.5, noise=0.025, hue_shift=20.0,
                 gain_shift=0.2, table_seed=2002, vignette=0.35, jpeg=70),
    "synthia": Style(aspect=760 / 1280, texture=0.5, saturation=1.1, contrast=1.05, brightness=1.08,
                     tint=(0.95, 1.0, 1.08), gamma=1.0, blur=0.0, noise=0.0, hue_shift=10.0, gain_shift=0.1,
                     table_seed=3003),
}

SCENES = {
    "gta5": SceneParams(horizon=0.45, vegetation=0.25, verge=0.2,
                        rates={"car": 3.5, "truck": 0.8, "bus": 0.5, "person": 1.0, "rider": 0.3,
                               "_poles": 1.2}),
    "cityscapes": SceneParams(horizon=0.38, vegetation=0.45, verge=0.5, hood=0.08,
                              rates={"car": 2.5, "truck": 0.2, "bus": 0.2, "person": 3.0, "rider": 0.9,
                                     "_poles": 2.0}),
    "bdd": SceneParams(horizon=0.5, vegetation=0.3, verge=0.3, hood=0.14,
                       rates={"car": 4.0, "truck": 0.6, "bus": 0.3, "person": 0.8, "rider": 0.3,
                              "_poles": 1.5}),
    "synthia": SceneParams(horizon=0.35, vegetation=0.35, verge=0.3,
                           rates={"car": 3.0, "truck": 0.4, "bus": 0.5, "person": 4.0, "rider": 1.0,
                                  "_poles": 2.0}),
}

# Internal train id -> SYNTHIA class id: the inverse of the field's mapping, plus SYNTHIA's own ids for the
# three classes it has but the mapping ignores; ego and unlabelled pixels are void (0).
_SYNTHIA_IDS = np.zeros(256, dtype=np.uint16)
for _synthia_id, _train_id in SYNTHIA_TO_TRAIN_ID.items():
    _SYNTHIA_IDS[_train_id] = _synthia_id
for _train_id, _name in ((9, "terrain"), (14, "truck"), (16, "train")):
    _SYNTHIA_IDS[_train_id] = SYNTHIA_CLASSES.index(_name)
_THINGS = (11, 12, 13, 14, 15, 16, 17, 18)  # person ... bicycle: the classes with instance ids


def class_matrices(style: Style) -> np.ndarray:
    """(256, 3, 3) per-class colour matrices: a fixed hue rotation and gain per class and domain."""
    rng = np.random.default_rng(style.table_seed)
    angles = np.deg2rad(rng.uniform(-style.hue_shift, style.hue_shift, 256))
    gains = 1.0 + rng.uniform(-style.gain_shift, style.gain_shift, 256)
    skew = np.array([[0, -1, 1], [1, 0, -1], [-1, 1, 0]], np.float32) / np.sqrt(3)
    eye, grey = np.eye(3, dtype=np.float32), np.full((3, 3), 1 / 3, np.float32)
    cos, sin = np.cos(angles)[:, None, None], np.sin(angles)[:, None, None]
    rot = cos * eye + (1 - cos) * grey + sin * skew  # rotation about the grey axis
    return (rot * gains[:, None, None]).astype(np.float32)


def render(canvas, style: Style, rng: np.random.Generator, matrices: np.ndarray) -> np.ndarray:
    """Turn a drawn canvas into a uint8 (H, W, 3) image in the domain's look."""
    h, w = canvas.label.shape
    img = canvas.color * (1.0 + style.texture * canvas.shade)[..., None]
    img = np.einsum("hwij,hwj->hwi", matrices[canvas.label], img)
    lum = img @ np.array([0.299, 0.587, 0.114], np.float32)
    img = lum[..., None] + style.saturation * (img - lum[..., None])
    img = 0.45 + style.contrast * (img - 0.45)
    img = img * np.array(style.tint, np.float32) * style.brightness
    if style.vignette:
        r2 = ((canvas.xs / w - 0.5) ** 2 + (canvas.ys / h - 0.5) ** 2) * 2
        img = img * (1 - style.vignette * r2)[..., None]
    img = np.clip(img, 0, 1) ** style.gamma
    if style.blur:
        sigma = style.blur * w / DEFAULT_SIZE[0]
        img = ndimage.gaussian_filter(img, (sigma, sigma, 0))
    if style.noise:
        img = img + rng.normal(0, style.noise, img.shape).astype(np.float32)
    return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)


def label_ids(train_ids: np.ndarray) -> np.ndarray:
    """Internal train ids (+ ego) -> Cityscapes label ids (unlabelled 0, ego vehicle 1)."""
    table = TRAIN_ID_TO_LABEL_ID.copy()
    table[EGO] = EGO_LABEL_ID
    table[IGNORE_LABEL] = 0
    return table[train_ids]


def bdd_train_ids(train_ids: np.ndarray) -> np.ndarray:
    """Internal train ids (+ ego) -> BDD train-id PNG values (255 for ego / unlabelled)."""
    return np.where(train_ids < NUM_CLASSES, train_ids, IGNORE_LABEL).astype(np.uint8)


def synthia_label(train_ids: np.ndarray) -> np.ndarray:
    """Internal train ids (+ ego) -> SYNTHIA's (H, W, 3) uint16 label: class id, instance id, 0."""
    ids = _SYNTHIA_IDS[train_ids]
    instances = np.zeros_like(ids)
    for cls in _THINGS:
        blobs, count = ndimage.label(train_ids == cls)
        instances = np.where(blobs > 0, blobs + instances.max() * (count > 0), instances).astype(np.uint16)
    return np.stack([ids, instances, np.zeros_like(ids)], axis=-1)


def png16_bytes(array: np.ndarray) -> bytes:
    """A 16-bit RGB PNG of a (H, W, 3) uint16 array (Pillow and torchvision write 8-bit only)."""
    h, w, channels = array.shape
    if channels != 3 or array.dtype != np.uint16:
        raise ValueError(f"png16_bytes writes (H, W, 3) uint16 arrays, got {array.shape} {array.dtype}")
    rows = np.zeros((h, 1 + w * 6), np.uint8)  # each row: filter type 0, then big-endian samples
    rows[:, 1:] = array.astype(">u2").reshape(h, -1).view(np.uint8)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)  # 16 bits, RGB, deflate, no filter, no interlace
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
            + chunk(b"IEND", b""))


def _save_png(array: np.ndarray, path: Path, palette: bool = False) -> None:
    image = Image.fromarray(array)
    if palette:  # real GTA5 labels are palette PNGs whose indices are the label ids
        image = image.convert("P")
        colours = np.zeros((256, 3), np.uint8)
        colours[TRAIN_ID_TO_LABEL_ID[:NUM_CLASSES]] = PALETTE
        image.putpalette(colours.ravel().tolist())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    write_bytes_atomic(path, buffer.getvalue())


def _save_jpeg(array: np.ndarray, path: Path, quality: int) -> None:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    write_bytes_atomic(path, buffer.getvalue())


def frame_size(domain: str, size: tuple[int, int]) -> tuple[int, int]:
    """(w, h) of a domain's frames: Cityscapes uses `size`, the others their own aspect ratio."""
    w, h = size
    if domain == "cityscapes":
        return w, h
    return w, max(8, round(w * STYLES[domain].aspect))


def make_frame(domain: str, size: tuple[int, int], seed: int, split: str, index: int):
    """(uint8 image HxWx3, internal train-id map HxW) of one frame, a pure function of its arguments."""
    w, h = frame_size(domain, size)
    rng = np.random.default_rng([seed, DOMAINS.index(domain), ("train", "val").index(split), index])
    canvas = draw_scene(rng, h, w, SCENES[domain])
    style = STYLES[domain]
    return render(canvas, style, rng, class_matrices(style)), canvas.label


def _bdd_names(seed: int, count: int, split: str) -> list[str]:
    rng = np.random.default_rng([seed, 99, ("train", "val").index(split)])
    names: list[str] = []
    while len(names) < count:
        name = f"{rng.integers(16**8):08x}-{rng.integers(16**8):08x}"
        if name not in names:
            names.append(name)
    return names


def write_domain(out: Path, domain: str, split: str, count: int, size: tuple[int, int], seed: int,
                 bdd_layout: str = "2018") -> None:
    """Write `count` frames of one domain and split under `out` in that dataset's real layout
    (BDD: `bdd_layout`, a key of `BDD_WRITE_LAYOUTS`)."""
    names = _bdd_names(seed, count, split) if domain == "bdd" else []
    cities = TRAIN_CITIES if split == "train" else VAL_CITIES
    for i in range(count):
        image, labels = make_frame(domain, size, seed, split, i)
        if domain == "gta5":
            _save_png(image, out / "images" / f"{i + 1:05d}.png")
            _save_png(label_ids(labels), out / "labels" / f"{i + 1:05d}.png", palette=True)
        elif domain == "synthia":
            _save_png(image, out / "RGB" / f"{i:07d}.png")
            (out / "GT" / "LABELS").mkdir(parents=True, exist_ok=True)
            (out / "GT" / "LABELS" / f"{i:07d}.png").write_bytes(png16_bytes(synthia_label(labels)))
        elif domain == "cityscapes":
            city = cities[i % len(cities)]
            stem = f"{city}_{i // len(cities):06d}_{19 + 10 * (i % 7):06d}"
            _save_png(image, out / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
            _save_png(label_ids(labels), out / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png")
        else:
            layout, sub = BDD_WRITE_LAYOUTS[bdd_layout]
            image_rel = f"{layout.split_dir(split)}/{names[i]}.jpg"
            _save_jpeg(image, out / sub / image_rel, STYLES["bdd"].jpeg)
            _save_png(bdd_train_ids(labels), out / sub / layout.label_rel(image_rel))


def generate(out: str | Path, num_train: int = DEFAULT_NUM_TRAIN, num_val: int = DEFAULT_NUM_VAL,
             size: tuple[int, int] = DEFAULT_SIZE, seed: int = DEFAULT_SEED,
             domains: Sequence[str] = DOMAINS, *, quirks: bool = False,
             bdd_layout: str = "2018") -> dict[str, int]:
    """Write the benchmark under `out`/{gta5,cityscapes,bdd,synthia}; returns frames written per domain.

    GTA5 and SYNTHIA get `num_train` frames (they have no official split); Cityscapes and BDD get
    `num_train` train and `num_val` val frames. `quirks`: GTA5 gets the download's quirks (`dataset.synth_quirks`);
    `bdd_layout`: "2018" or "10k" (today's download).
    """
    if quirks and "gta5" in domains and num_train < MIN_FRAMES:
        raise ConfigError(f"--quirks needs --num-train {MIN_FRAMES} or more (got {num_train})")
    if bdd_layout not in BDD_WRITE_LAYOUTS:
        raise ConfigError(f"--bdd-layout: expected one of {', '.join(BDD_WRITE_LAYOUTS)}, got {bdd_layout!r}")
    out = Path(out)
    written = {}
    for domain in domains:
        splits = (("train", num_train),) if domain in SOURCE_ONLY else (("train", num_train), ("val", num_val))
        for split, count in splits:
            write_domain(out / domain, domain, split, count, size, seed, bdd_layout)
        if quirks and domain == "gta5":
            add_gta5_quirks(out / domain, num_train)
        written[domain] = sum(count for _, count in splits)
    return written


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: generate the benchmark and print what was written."""
    parser = ArgumentParser(prog="python -m dataset.synthetic", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder (gets gta5/, cityscapes/, bdd/, synthia/)")
    parser.add_argument("--num-train", type=positive_int, default=DEFAULT_NUM_TRAIN,
                        help="training frames per domain (default %(default)s)")
    parser.add_argument("--num-val", type=non_negative_int, default=DEFAULT_NUM_VAL,
                        help="validation frames for cityscapes and bdd (default %(default)s)")
    parser.add_argument("--size", type=size_arg, default=DEFAULT_SIZE,
                        help="Cityscapes frame size W,H; GTA5, BDD and SYNTHIA use W with their own aspect "
                             "(default %(default)s)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed (default %(default)s)")
    parser.add_argument("--domains", nargs="+", choices=DOMAINS, default=list(DOMAINS),
                        help="domains to write (default: all four)")
    parser.add_argument("--quirks", action="store_true",
                        help="give GTA5 the real download's quirks: labels a few pixels off, a label of another "
                             "aspect ratio, a blank image, an image without label, a label without image")
    parser.add_argument("--bdd-layout", choices=sorted(BDD_WRITE_LAYOUTS), default="2018",
                        help="BDD100K layout: 2018 (seg/ folder) or 10k (today's bdd100k/ download)")
    args = parser.parse_args(argv)
    check_output(args.out, "--out", folder=True)
    taken = [d for d in args.domains if (Path(args.out) / d).is_dir() and any((Path(args.out) / d).iterdir())]
    if taken:  # writing over another benchmark would mix its frames with these
        raise ConfigError(f"--out {args.out}: already holds {', '.join(f'{d}/' for d in taken)}; choose another "
                          "folder or delete it")
    start = time.perf_counter()
    try:
        written = generate(args.out, args.num_train, args.num_val, args.size, args.seed, args.domains,
                           quirks=args.quirks, bdd_layout=args.bdd_layout)
    except OSError as err:
        raise ConfigError(f"--out {args.out}: cannot write there ({err.strerror or err})") from err
    seconds = time.perf_counter() - start
    total = sum(written.values())
    for domain, count in written.items():
        w, h = frame_size(domain, args.size)
        print(f"{domain}: {count} frames of {w}x{h} in {Path(args.out) / domain}")
    print(f"{total} frames in {seconds:.1f} s ({total / max(seconds, 1e-9):.0f} frames/s)")


if __name__ == "__main__":
    sys.exit(run_cli(main))
