"""Reading, checking and writing network weights: the one place that calls ``torch.load``.

Accepted forms (files or URLs; a ``module.`` prefix from DataParallel/DDP is stripped):
- our final file ``{"format": "dakd-final", "arch", "aux_layer", "num_classes", "state_dict"}``;
- our training checkpoint ``{"format": "dakd-train", "arch", "aux_layer", "num_classes", "net", ...}``;
- a raw SegNet state dict (``base.*``, ``seg1.*``, ``seg2.*``);
- the original code's state dict (the same plus the unused ``up1.weight``/``up2.weight``, ignored);
- a DRN ImageNet checkpoint (``layer0.*`` ... ``fc.*``), loaded into the backbone, ``fc.*`` ignored;
- an imgclsmob (``pytorchcv``) DRN ImageNet checkpoint (``features.*``, ``output.*``), as its ``.pth`` or
  as the ``.zip`` holding it, renamed to our names (``model.imgclsmob``) and loaded like the one above;
- a DeepLab-v2 multi-level state dict as AdaptSegNet and ADVENT save them (``conv1.*`` ... ``layer5.*``,
  ``layer6.*``), into a DeepLab-v2 net unchanged; a file of theirs does not say how its classifiers sum
  (``model.deeplab``), so building a net from one needs ``arch=`` (``--arch``);
- a DeepLab-v2 initialisation (ADVENT's ImageNet file, AdaptSegNet's ImageNet + MS-COCO file): the
  backbone under one outer name (``Scale.conv1.weight`` ...), loaded into the backbone, its classifier ignored.

``--pretrained imagenet`` (or ``coco``) resolves through ``model.pretrained`` (a chain of verified sources).
CLI: ``python -m model.weights fetch drn_d_22 drn_d_38 [--init coco] [--out DIR]`` downloads and verifies
those weights ahead of time, e.g. on a cluster's login node when the compute nodes have no network;
``python -m model.weights convert IN OUT --arch ARCH`` writes another code's trained net as our final file.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import os
import pickle
import re
import sys
import urllib.error
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http.client import HTTPException
from typing import Any
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from model import deeplab, imgclsmob, pretrained
from model.drn import ARCHS, build_drn
from model.pretrained import INITS, default_cache_dir
from model.registry import SEG_ARCHS, build_net, is_seg_net
from utils.checkpoint import TRAIN_FORMAT, atomic_save
from utils.cli import ArgumentParser, DefaultsHelpFormatter, check_output, run_cli
from utils.errors import CheckpointError

FINAL_FORMAT = "dakd-final"
_NET_META = ("arch", "aux_layer", "num_classes")
# Keys some checkpoints carry that no net of ours uses: the original code's transposed-conv upsamplers
# and the ImageNet classifier of the backbone.
_UNUSED_KEY = re.compile(r"^(up\d*\.|(base\.)?fc\.)")
_SHOW = 5  # offending keys listed in an error message
_BACKBONE_FORMS = ("drn-backbone", "imgclsmob")  # ImageNet checkpoints: a DRN with its classifier
# Keys only a DRN backbone has (levels 0 and 5-8); a ResNet's conv1, layer1-4 and fc do not count.
_DRN_ONLY_KEY = re.compile(r"^layer[05678]\.")
OTHER_NETWORK = "not a DRN"  # the form of a state dict whose keys are neither ours nor a DRN's
URL_KEY_DIGITS = 16  # hex digits of the URL's SHA-256 in its cache file's name (url_cache_name)
_DEEPLAB_BACKBONE = "deeplab-backbone"  # a DeepLab-v2 initialisation: the backbone without our two heads
_DEEPLAB_HEADS = tuple(h + "." for h in deeplab.HEADS)


@dataclass
class LoadReport:
    """What ``load_weights`` did: keys loaded, ignored (unused by the net) and left at init (missing)."""

    source: str
    form: str
    loaded: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        text = f"{self.source} ({self.form}): loaded {len(self.loaded)} tensors"
        if self.ignored:
            text += f", ignored {len(self.ignored)} unused ({_first(self.ignored)})"
        if self.missing:
            text += f", {len(self.missing)} not in the checkpoint and left as initialised ({_first(self.missing)})"
        return text


def _first(keys: list[str], n: int = _SHOW) -> str:
    more = f", ... (+{len(keys) - n})" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def is_url(path_or_url: str) -> bool:
    """True for http(s) and ftp addresses."""
    return urlparse(str(path_or_url)).scheme in ("http", "https", "ftp")


def _torch_load(path: str, allow_pickle: bool = False) -> Any:
    """``torch.load`` of a local file on the CPU, safe by default; every failure is a CheckpointError."""
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint is not a file: {path}")
    packed = _zipped_pth(path)
    try:
        obj = torch.load(path if packed is None else packed, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError:
        unsafe = _unsafe_globals(path if packed is None else packed)
        if unsafe and not allow_pickle:
            raise CheckpointError(
                f"{path} contains a pickled Python object ({unsafe[0]}), e.g. a whole model saved with "
                "torch.save(model); it is refused for safety. If you trust the file, --allow-pickle "
                "(allow_pickle=True, unsafe: runs code from the file) extracts its state dict") from None
        # torch's text here is about weights_only and misleads: the data is simply not a checkpoint.
        raise CheckpointError(f"{path} is corrupt or not a PyTorch checkpoint (unreadable pickle data)") from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, ImportError) as err:
        raise CheckpointError(f"{path} is truncated, corrupt or not a PyTorch checkpoint ({_short(err)})") from None
    if isinstance(obj, nn.Module):  # only reachable with allow_pickle=True
        obj = obj.state_dict()
    return obj


def _zipped_pth(path: str) -> io.BytesIO | None:
    """The one ``.pth`` inside a zip such as imgclsmob's, in memory; None for any other file.

    A checkpoint saved by torch >= 1.6 is itself a zip, recognised by its ``data.pkl`` entry.
    """
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
                return None
            try:
                member = imgclsmob.zipped_pth(archive)  # its declared size is checked before it is read
            except ValueError as err:
                raise CheckpointError(f"{path} is {err}") from None
            return io.BytesIO(archive.read(member))
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise CheckpointError(f"{path} is a truncated or corrupt zip ({_short(err)})") from None


def _unsafe_globals(source) -> list[str]:
    """The Python objects a checkpoint would import when unpickled (read without running any of them)."""
    if hasattr(source, "seek"):
        source.seek(0)
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(source)
    except Exception:  # not a zip-format checkpoint, or unreadable: nothing to name
        return []


def _short(err: BaseException) -> str:
    """The exception's type and first sentence: enough to tell a truncated file from a refused URL."""
    text = str(err).strip()
    first = text.splitlines()[0].split(". ")[0][:160] if text else ""
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def url_cache_name(url: str) -> str:
    """The file name a URL's download is cached under: its whole address's key, then its own file name.

    ``https://host/h1/final.pth`` -> ``url-<first 16 hex digits of the SHA-256 of the URL>-final.pth``: two
    addresses that end in the same file name are two cache entries, and a name can be found by hand.
    """
    key = hashlib.sha256(url.encode("utf-8")).hexdigest()[:URL_KEY_DIGITS]
    return f"url-{key}-{os.path.basename(urlparse(url).path) or 'download'}"


def _load_url(url: str, cache_dir: str | None) -> Any:
    """Weights from a URL, downloaded once into the cache (``url_cache_name``) and read as a local file is
    (safe loading, a zip's declared size checked); a CheckpointError says what to download where."""
    cache_dir = cache_dir or default_cache_dir()
    cached = os.path.join(cache_dir, url_cache_name(url))
    if not os.path.isfile(cached):
        try:
            pretrained.download_file(url, cached)
        except (urllib.error.URLError, HTTPException, OSError, ValueError) as err:
            raise CheckpointError(
                f"could not download {url} ({_short(err)}); download it by hand and save it as {cached} "
                f"(then it is found offline), or pass the downloaded file's path instead of the URL") from None
    try:
        return _torch_load(cached)
    except CheckpointError as err:  # the download worked but the cached file does not load
        raise CheckpointError(f"{cached} (downloaded from {url}) does not load: {err}; delete it and try "
                              "again") from None


def read_checkpoint(path_or_url: str | os.PathLike, allow_pickle: bool = False, cache_dir: str | None = None) -> dict:
    """The checkpoint's top-level dict as stored (a pickled module becomes its state dict)."""
    source = str(path_or_url)
    obj = _load_url(source, cache_dir) if is_url(source) else _torch_load(source, allow_pickle)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source} holds a {type(obj).__name__}, not a dict of weights")
    return dict(obj)


def _unwrap(ckpt: Mapping, source: str) -> tuple[str, dict[str, Tensor], dict[str, Any]]:
    """(form, state dict without DataParallel prefix, net metadata) of a loaded checkpoint."""
    fmt = ckpt.get("format")
    meta: dict[str, Any] = {}
    if fmt in (FINAL_FORMAT, TRAIN_FORMAT):
        inner = ckpt.get("state_dict" if fmt == FINAL_FORMAT else "net")
        meta = {k: ckpt[k] for k in _NET_META if k in ckpt}
        form = fmt
    elif "state_dict" in ckpt and isinstance(ckpt["state_dict"], Mapping):
        inner, form = ckpt["state_dict"], "state_dict"  # e.g. {"epoch", "arch", "state_dict", ...}
    else:
        inner, form = ckpt, ""
    if not isinstance(inner, Mapping) or not inner:
        raise CheckpointError(f"{source} has no weights (form {fmt or 'unknown'})")
    bad = [k for k, v in inner.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{source} is not a state dict: {len(bad)} entries are not tensors ({_first(bad)})")
    state = {str(k): v for k, v in inner.items()}
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    if imgclsmob.is_imgclsmob(state):
        try:
            _, state = imgclsmob.to_ours(state)
        except ValueError as err:
            raise CheckpointError(f"{source} is an imgclsmob DRN checkpoint, but {err}") from None
        form = "imgclsmob"
    elif not form or form == "state_dict":
        wrapper, unwrapped = deeplab.strip_wrapper_prefix(state)
        if deeplab.is_deeplab_state(unwrapped):
            state = unwrapped  # AdaptSegNet's and ADVENT's loaders drop the outer name (``Scale.``) too
            form = "deeplab" if deeplab.has_heads(state) else _DEEPLAB_BACKBONE
        elif any(k.startswith("base.") for k in state):
            form = "old-code" if any(k.startswith(("up1.", "up2.")) for k in state) else "segnet"
        elif any(_DRN_ONLY_KEY.match(k) for k in state):
            form = "drn-backbone"
        else:  # e.g. a ResNet: conv1, layer1-4, fc
            form = OTHER_NETWORK
    return form, state, _checked_meta(meta, source)


def _checked_meta(meta: dict[str, Any], source: str) -> dict[str, Any]:
    """`meta` as a SegNet takes it, or a CheckpointError naming the file and the value that is wrong."""
    arch, aux, classes = meta.get("arch"), meta.get("aux_layer"), meta.get("num_classes")
    if "arch" in meta and arch not in SEG_ARCHS:
        raise CheckpointError(f"{source} names the architecture {arch!r}, not one of {', '.join(SEG_ARCHS)}")
    if aux is not None and (not isinstance(aux, int) or isinstance(aux, bool) or not 1 <= aux <= 8):
        raise CheckpointError(f"{source} holds aux_layer {aux!r}; expected a DRN level, an integer from 1 to 8")
    if "num_classes" in meta and (not isinstance(classes, int) or isinstance(classes, bool) or classes < 1):
        raise CheckpointError(f"{source} holds num_classes {classes!r}; expected a positive integer")
    return meta


def _describe(net: nn.Module) -> str:
    if is_seg_net(net):
        return f"{net.arch} (aux_layer {net.aux_layer}, {net.num_classes} classes)"
    return type(net).__name__


def _check_meta(net: nn.Module, meta: dict[str, Any], source: str) -> None:
    if not is_seg_net(net) or not meta:
        return
    diff = [f"{k} {meta[k]!r} (net: {getattr(net, k)!r})" for k in _NET_META
            if k in meta and meta[k] != getattr(net, k)]
    if diff:
        raise CheckpointError(f"{source} was saved from another net than {_describe(net)}: {'; '.join(diff)}; "
                              "build the net from the checkpoint (build_from_checkpoint) or match these")


def _apply(net: nn.Module, ckpt: Mapping, source: str) -> LoadReport:
    """Load an already-read checkpoint into ``net`` (or its backbone), checking every key and shape."""
    target = net.module if isinstance(net, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else net
    form, state, meta = _unwrap(ckpt, source)
    _check_meta(target, meta, source)
    into_backbone = form in _BACKBONE_FORMS and hasattr(target, "base") and is_seg_net(target)
    deeplab_init = form == _DEEPLAB_BACKBONE and isinstance(target, deeplab.DeepLabV2)
    module = target.base if into_backbone else target
    prefix = "base." if into_backbone else ""
    expected = module.state_dict()
    if deeplab_init:  # an initialisation's classifier belongs to another net: ours keep their own init
        expected = {k: v for k, v in expected.items() if not k.startswith(_DEEPLAB_HEADS)}
    ignored = sorted(k for k in state if k not in expected
                     and (_UNUSED_KEY.match(k) or (deeplab_init and k.startswith(_DEEPLAB_HEADS))))
    unexpected = sorted(k for k in state if k not in expected and k not in ignored)
    # Checkpoints older than PyTorch 0.4.1 (the DRN ImageNet files) have no num_batches_tracked.
    missing = sorted(k for k in expected if k not in state and not k.endswith("num_batches_tracked"))
    wrong = [(k, tuple(expected[k].shape), tuple(v.shape)) for k, v in state.items()
             if k in expected and expected[k].shape != v.shape]
    if wrong or unexpected or missing:
        raise CheckpointError(_mismatch_message(source, form, _describe(target), wrong, missing, unexpected))
    module.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
    loaded = sorted(prefix + k for k in state if k in expected)
    heads = ("seg1.", "seg2.") if into_backbone else _DEEPLAB_HEADS if deeplab_init else ()
    not_in_ckpt = sorted(k for k in target.state_dict() if heads and k.startswith(heads))
    return LoadReport(source=source, form=form, loaded=loaded, ignored=ignored, missing=not_in_ckpt)


def _mismatch_message(source: str, form: str, net: str, wrong: list, missing: list, unexpected: list) -> str:
    parts = []
    if wrong:
        shown = "; ".join(f"{k}: expected {list(e)}, found {list(f)}" for k, e, f in wrong[:_SHOW])
        parts.append(f"{len(wrong)} keys with other shapes ({shown}{', ...' if len(wrong) > _SHOW else ''})")
    if missing:
        parts.append(f"{len(missing)} keys missing from the checkpoint ({_first(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys ({_first(unexpected)})")
    return (f"{source} ({form}) does not fit {net}: " + "; ".join(parts)
            + " - wrong architecture or class count?")


def load_weights(net: nn.Module, path_or_url: str | os.PathLike, *, allow_pickle: bool = False,
                 cache_dir: str | None = None) -> LoadReport:
    """Load a checkpoint file or URL of any accepted form into ``net``; returns what was loaded.

    Raises CheckpointError for a missing, corrupt, unsafe or non-matching checkpoint.
    """
    source = str(path_or_url)
    return _apply(net, read_checkpoint(source, allow_pickle=allow_pickle, cache_dir=cache_dir), source)


def build_from_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                          allow_pickle: bool = False, *, arch: str | None = None, aux_layer: int | None = None,
                          num_classes: int | None = None) -> nn.Module:
    """A segmentation net built as the checkpoint says (our formats) or from ``arch=`` (others), weights loaded."""
    source = str(path)
    ckpt = read_checkpoint(source, allow_pickle=allow_pickle)
    form, state, meta = _unwrap(ckpt, source)
    given = {"arch": arch, "aux_layer": aux_layer, "num_classes": num_classes}
    for key, value in given.items():
        if value is not None and key in meta and meta[key] != value:
            raise CheckpointError(f"{source} holds {key} {meta[key]!r}, not the requested {value!r}")
    if form == OTHER_NETWORK:
        raise CheckpointError(f"{source} holds the weights of another network ({_first(sorted(state), 3)}): not a "
                              "segmentation net of ours (base.*, seg1.*, seg2.*), a DRN (layer0-8) nor a DeepLab-v2")
    if form in _BACKBONE_FORMS or form == _DEEPLAB_BACKBONE:
        raise CheckpointError(f"{source} holds a backbone without the segmentation heads (an ImageNet "
                              "checkpoint): start a training run from it (--pretrained, --restore-from), it is "
                              "not a trained segmentation net")
    arch = meta.get("arch", arch) or infer_arch(state)
    if arch is None and form == "deeplab":
        raise CheckpointError(
            f"{source} holds a DeepLab-v2 ResNet-101 saved by AdaptSegNet or ADVENT (or the original code), which "
            f"does not say how its classifiers sum their branches: pass --arch {deeplab.ARCH} (all four: ADVENT and "
            f"its descendants) or --arch {deeplab.ADAPTSEGNET_ARCH} (the first two: AdaptSegNet's DeeplabMulti); "
            "`python -m model.weights convert` writes it as a file that names it")
    if arch is None:
        raise CheckpointError(f"{source} ({form}): its backbone's keys and shapes match none of the DRN "
                              f"architectures ({', '.join(ARCHS)})")
    aux_layer = meta.get("aux_layer", aux_layer)
    if num_classes is None:
        num_classes = meta.get("num_classes")
    for head in ("seg1.weight", "layer6.conv2d_list.0.weight"):
        if num_classes is None and head in state:
            num_classes = int(state[head].shape[0])
    net = build_net(arch, num_classes=num_classes or 19, aux_layer=aux_layer)
    _apply(net, ckpt, source)
    return net.to(map_location)


@functools.cache
def _backbone_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        backbone = build_drn(arch)
    return {k: tuple(v.shape) for k, v in backbone.state_dict().items() if not k.endswith("num_batches_tracked")}


def infer_arch(state: Mapping[str, Tensor]) -> str | None:
    """The DRN architecture whose backbone has exactly the keys and shapes of `state`'s backbone, or None.

    `state` is a SegNet / old-code state dict (``base.*``) or a DRN ImageNet one; for files that do not
    name their architecture, such as the original code's saved teachers.
    """
    prefix = "base." if any(k.startswith("base.") for k in state) else ""
    found = {k[len(prefix):]: tuple(v.shape) for k, v in state.items()
             if k.startswith(prefix) and not _UNUSED_KEY.match(k) and not k.endswith("num_batches_tracked")}
    matches = [arch for arch in ARCHS if _backbone_shapes(arch) == found]
    return matches[0] if len(matches) == 1 else None


def save_final(path: str | os.PathLike, net: nn.Module) -> None:
    """Write ``net`` as our final-weights file, atomically (temp file in the same folder, then rename)."""
    if isinstance(net, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        net = net.module
    if not is_seg_net(net):
        raise TypeError(f"save_final needs a segmentation net (SegNet, DeepLabV2), got {type(net).__name__}")
    payload = {"format": FINAL_FORMAT, "arch": net.arch, "aux_layer": net.aux_layer,
               "num_classes": net.num_classes,
               "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()}}
    atomic_save(payload, path)


def _fetch_command(args: argparse.Namespace) -> int:
    """Download and verify the initialisation (``--init``) of each named architecture; print where they are."""
    cache = default_cache_dir()
    folder = args.out or cache
    if args.out:
        check_output(args.out, "--out", folder=True)
    for arch in args.archs:
        path, source = pretrained.fetch(arch, cache_dir=folder, progress=not args.quiet, init=args.init)
        check = "content checked (no checksum is published)" if source.algorithm == "content" else \
            f"{source.algorithm} {source.digest[:8]} verified"
        print(f"{arch}: {path} (from {source.label}, {check})")
        if source.zipped:
            print("  note: imgclsmob's own ImageNet training, not the DRN authors' weights (docs/weights.md)")
    flag = f"--pretrained {args.init}"
    if os.path.abspath(folder) == os.path.abspath(cache):
        print(f"{flag} finds them in {cache} on this machine; on a machine "
              "without network copy them into its $TORCH_HOME/hub/checkpoints/ or pass --pretrained PATH")
    else:
        print(f"use one with --pretrained PATH, or copy it into {cache}/ (or $TORCH_HOME/hub/checkpoints/ "
              f"on the machine that trains) where {flag} finds it")
    return 0


def _convert_command(args: argparse.Namespace) -> int:
    """Write a trained segmentation checkpoint of any accepted form as our final file, naming its net."""
    check_output(args.out, "OUT")
    net = build_from_checkpoint(args.checkpoint, allow_pickle=args.allow_pickle, arch=args.arch)
    save_final(args.out, net)
    print(f"{args.out}: {_describe(net)} from {args.checkpoint}; eval_cs.py --restore-from and --teacher read "
          "its architecture from it")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of this module: ``fetch ARCH... [--init NAME] [--out DIR]`` and ``convert IN OUT``."""
    parser = ArgumentParser(prog="python -m model.weights", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fetch = commands.add_parser(
        "fetch", formatter_class=DefaultsHelpFormatter,
        help="download and verify published initialisations (for machines whose training nodes have no network)",
        description="Download an architecture's published initialisation (DRN or DeepLab-v2 ImageNet weights, "
                    "DeepLab-v2's ImageNet + MS-COCO file) from the first source that works, verify it and keep "
                    "it where --pretrained NAME finds it (docs/weights.md).")
    fetch.add_argument("archs", nargs="+", metavar="ARCH", choices=pretrained.published_archs(),
                       help=f"architectures: {', '.join(pretrained.published_archs())}")
    fetch.add_argument("--init", choices=INITS, default="imagenet",
                       help="which initialisation: imagenet, or coco (DeepLab-v2 only: AdaptSegNet's ImageNet + "
                            "MS-COCO file)")
    fetch.add_argument("--out", metavar="DIR", default=None,
                       help="folder to write to (default: torch hub's checkpoint folder, "
                            "$TORCH_HOME/hub/checkpoints, where --pretrained looks)")
    fetch.add_argument("--quiet", action="store_true", help="no progress bar")
    fetch.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    convert = commands.add_parser(
        "convert", formatter_class=DefaultsHelpFormatter,
        help="write a trained net saved by other code (AdaptSegNet, ADVENT, the original code) as our final file",
        description="Read a trained segmentation checkpoint of any accepted form and write it as our final file, "
                    "which names its architecture (for --teacher, eval_cs.py, export_onnx.py).")
    convert.add_argument("checkpoint", metavar="IN", help="the trained checkpoint")
    convert.add_argument("out", metavar="OUT", help="the final file to write")
    convert.add_argument("--arch", default=None,
                         help="architecture, for files that do not name it (needed for AdaptSegNet's and ADVENT's)")
    convert.add_argument("--allow-pickle", action="store_true",
                         help="UNSAFE: accept a whole pickled model (runs code from the file)")
    convert.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    args = parser.parse_args(argv)
    return _convert_command(args) if args.command == "convert" else _fetch_command(args)


if __name__ == "__main__":
    sys.exit(run_cli(main))
