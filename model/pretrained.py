"""Where the published initialisations come from, and getting one verified copy into the cache.

Each architecture has, per initialisation (``INITS``), a chain of sources tried in order until one
gives a file that passes its check (docs/weights.md says where every address and checksum comes from).

DRN ImageNet weights ("imagenet"):

1. the DRN authors' file (``model.drn.MODEL_URLS``), checked against the SHA-256 prefix in its name;
2. the web archive's copy of that same file, at its current address and at the authors' older one;
3. the imgclsmob model zoo's file: a zip holding one ``.pth``, checked against imgclsmob's SHA-1 of
   that ``.pth`` and converted to our names on load. These are imgclsmob's own ImageNet training,
   not the authors' weights: the chain prefers the authors'.

DeepLab-v2 ResNet-101 (both DeepLab architectures share the backbone):

- "imagenet": ADVENT's ``DeepLab_resnet_pretrained_imagenet.pth`` (GitHub release), then the web
  archive's copy. No checksum is published for it, so the file is checked by its content: a state dict
  holding every tensor of the DeepLab-v2 ResNet-101 backbone with the right shape.
- "coco": AdaptSegNet's ``DeepLab_resnet_pretrained_init-f81d91e8.pth`` (DeepLab-v2's initialisation,
  ImageNet then MS-COCO), checked against the SHA-256 prefix in its name, then the web archive's copy.

A verified file is written atomically into torch hub's checkpoint folder and found there next time
without the network; a file that fails its check is never used.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from http.client import HTTPException
from typing import BinaryIO

import torch
from tqdm import tqdm

from model import deeplab, imgclsmob
from model.drn import ARCHS, MODEL_URLS
from utils.checkpoint import fsync_folder
from utils.errors import CheckpointError

FETCH_COMMAND = "python -m model.weights fetch"
ARCHIVE = "https://web.archive.org/web/2019id_/"
"""The web archive's raw-file address form: this prefix + the original URL returns the archived bytes."""
AUTHORS_OLD_ROOT = "https://tigress-web.princeton.edu/~fy/drn/models/"
"""The authors' address before July 2019 (fyu/drn commit 5563327 moved it to dl.yf.io)."""
IMGCLSMOB_RELEASES = "https://github.com/osmr/imgclsmob/releases/download/"
INITS = ("imagenet", "coco")
"""Names of published initialisations (``--pretrained NAME``); anything else is a path or URL."""
INIT_NAMES = {"imagenet": "ImageNet", "coco": "ImageNet + MS-COCO"}

# DeepLab-v2 ResNet-101 initialisations (docs/weights.md#deeplab-v2-resnet-101):
# ADVENT's README points at its releases; third-party READMEs give the file's address in release v0.1.
ADVENT_IMAGENET = "https://github.com/valeoai/ADVENT/releases/download/v0.1/DeepLab_resnet_pretrained_imagenet.pth"
# AdaptSegNet's training script, RESTORE_FROM; the hex after the last '-' starts the file's SHA-256.
ADAPTSEGNET_COCO = "http://vllab.ucmerced.edu/ytsai/CVPR18/DeepLab_resnet_pretrained_init-f81d91e8.pth"

# From pytorchcv 0.0.74, pytorchcv/models/common/model_metainfos.csv: model, top-5 error in the
# file name, SHA-1 of the .pth, release tag.
IMGCLSMOB_FILES: dict[str, tuple[str, str, str, str]] = {
    "drn_c_26": ("drnc26", "0723", "e7306483781db61f71302eda6769d7d9fd126bf6", "v0.0.508"),
    "drn_c_42": ("drnc42", "0628", "8817241f62263c6375ff3c17a9d34f42067a114d", "v0.0.556"),
    "drn_c_58": ("drnc58", "0527", "3f74be98f80db3273ed764ded5bcb5d8bdf0b907", "v0.0.559"),
    "drn_d_22": ("drnd22", "0758", "02cb44bdea9b05e988e65576f79f5f5c133f2664", "v0.0.498"),
    "drn_d_38": ("drnd38", "0643", "496f648b8b8427050ad3327077f9a9b7a07fbcc6", "v0.0.552"),
    "drn_d_54": ("drnd54", "0517", "caa3c85dbdb39397f049da649d196b15704427b3", "v0.0.554"),
    "drn_d_105": ("drnd105", "0501", "8dc6aa76c16cb1964929adf53183d1e0324ae051", "v0.0.564"),
}

Opener = Callable[[str, float], BinaryIO]
"""``opener(url, timeout)`` -> a readable response (``read(n)``; ``headers`` optional); urlopen by default."""
TIMEOUT = 30.0  # seconds without an answer before a source counts as unreachable
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Source:
    """One place to get one architecture's weights, and how to check what comes from there."""

    label: str  # who publishes it, for messages
    url: str
    file_name: str  # the verified file's name in the cache
    algorithm: str  # "sha256" or "sha1", or "content" where no checksum is published (see `content_problem`)
    digest: str  # the expected hex digest, or its prefix (the authors' names carry 8 hex digits); "" for content
    zipped: bool = False  # a zip holding the one .pth

    def matches(self, hexdigest: str) -> bool:
        """True when ``hexdigest`` (of the algorithm's kind) is the expected one."""
        return hexdigest.startswith(self.digest)

    def problem(self, path: str) -> str | None:
        """Why the file at ``path`` is not this source's file (None when it is)."""
        if self.algorithm == "content":
            return content_problem(path)
        got = file_digest(path, self.algorithm)
        if self.matches(got):
            return None
        return f"checksum mismatch: {self.algorithm} {got[:16]}..., expected {self.digest}"


def sources(arch: str, init: str = "imagenet") -> list[Source]:
    """The chain of sources of initialisation ``init`` for ``arch``, in the order tried; empty when none."""
    if arch in deeplab.DEEPLAB_ARCHS:
        return _deeplab_sources(init)
    chain: list[Source] = []
    if init != "imagenet":
        return chain
    if arch in MODEL_URLS:
        url = MODEL_URLS[arch]
        name = url.rsplit("/", 1)[1]
        prefix = name.rsplit("-", 1)[1].split(".")[0]  # torch hub: hex after the last '-' starts the SHA-256
        chain += [Source("the DRN authors", url, name, "sha256", prefix),
                  Source("the web archive's copy of the authors' file", ARCHIVE + url, name, "sha256", prefix),
                  Source("the web archive's copy of the authors' file at their older address",
                         ARCHIVE + AUTHORS_OLD_ROOT + name, name, "sha256", prefix)]
    if arch in IMGCLSMOB_FILES:
        model, error, sha1, tag = IMGCLSMOB_FILES[arch]
        name = f"{model}-{error}-{sha1[:8]}.pth"
        chain.append(Source("the imgclsmob model zoo, its own ImageNet training",
                            f"{IMGCLSMOB_RELEASES}{tag}/{name}.zip", name, "sha1", sha1, zipped=True))
    return chain


def _deeplab_sources(init: str) -> list[Source]:
    if init == "imagenet":
        name = ADVENT_IMAGENET.rsplit("/", 1)[1]
        return [Source("ADVENT's release (ImageNet)", ADVENT_IMAGENET, name, "content", ""),
                Source("the web archive's copy of ADVENT's release", ARCHIVE + ADVENT_IMAGENET, name, "content", "")]
    if init == "coco":
        name = ADAPTSEGNET_COCO.rsplit("/", 1)[1]
        prefix = name.rsplit("-", 1)[1].split(".")[0]
        return [Source("AdaptSegNet's authors (ImageNet + MS-COCO)", ADAPTSEGNET_COCO, name, "sha256", prefix),
                Source("the web archive's copy of AdaptSegNet's file", ARCHIVE + ADAPTSEGNET_COCO, name, "sha256",
                       prefix)]
    return []


def published_archs(init: str = "imagenet") -> list[str]:
    """Architectures with at least one source of initialisation ``init``."""
    return [arch for arch in (*ARCHS, *deeplab.DEEPLAB_ARCHS) if sources(arch, init)]


def content_problem(path: str) -> str | None:
    """Why the file at ``path`` is not a DeepLab-v2 ResNet-101 backbone state dict (None when it is).

    For a file whose publisher gives no checksum: it must load safely (``weights_only``) and hold every
    backbone tensor with its shape (an outer ``Scale.``-like prefix allowed, the classifiers ignored).
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable or unsafe file is simply not this file
        return f"not a loadable state dict ({type(err).__name__})"
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        return "not a state dict of tensors"
    _, state = deeplab.strip_wrapper_prefix({str(k): v for k, v in obj.items()})
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return deeplab.backbone_problem(state)


def default_cache_dir() -> str:
    """Where downloaded weights are kept: torch hub's checkpoint folder (``$TORCH_HOME/hub/checkpoints``)."""
    return os.path.join(torch.hub.get_dir(), "checkpoints")


def file_digest(path: str, algorithm: str) -> str:
    """Hex digest of a file's bytes."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _urlopen(url: str, timeout: float) -> BinaryIO:
    request = urllib.request.Request(url, headers={"User-Agent": "dakd-weights"})
    return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - http(s)/ftp only (our table, is_url)


def _reason(err: BaseException) -> str:
    """A short why for the list of failed sources."""
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        return f"unreachable: {err.reason}"
    text = str(err).strip().splitlines()[0][:120] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _copy(response: BinaryIO, out: BinaryIO, label: str, progress: bool) -> None:
    """Copy a response into ``out`` with a progress bar (shown on a terminal only)."""
    headers = getattr(response, "headers", None)
    length = headers.get("Content-Length") if headers is not None else None
    total = int(length) if length and str(length).isdigit() else None
    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label, leave=False,
              disable=None if progress else True, file=sys.stderr) as bar:
        for chunk in iter(lambda: response.read(_CHUNK), b""):
            out.write(chunk)
            bar.update(len(chunk))


def _temp_file(folder: str, name: str) -> tuple[int, str]:
    return tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".part")


def _unzip_one_pth(path: str, folder: str, name: str) -> str:
    """Extract the one ``.pth`` of an imgclsmob zip into a temporary file beside it; returns its path."""
    with zipfile.ZipFile(path) as archive:
        member = imgclsmob.zipped_pth(archive)  # ValueError for a wrong count or a declared size too large
        fd, inner = _temp_file(folder, name)
        try:
            with archive.open(member) as src, os.fdopen(fd, "wb") as dst:
                for chunk in iter(lambda: src.read(_CHUNK), b""):
                    dst.write(chunk)
                dst.flush()
                os.fsync(dst.fileno())
        except BaseException:
            os.unlink(inner)
            raise
    return inner


def download_file(url: str, path: str, opener: Opener | None = None, progress: bool = False) -> str:
    """Download ``url`` to ``path`` through a temporary file beside it, renamed once complete; returns ``path``.

    No checksum: for an address the user gave (``--restore-from URL``). Raises the opener's errors
    (URLError, OSError, ...) as they come, leaving no file.
    """
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, part = _temp_file(folder, os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as out, (opener or _urlopen)(url, TIMEOUT) as response:
            _copy(response, out, os.path.basename(path), progress)
            out.flush()
            os.fsync(out.fileno())
        os.replace(part, path)
    finally:
        if os.path.exists(part):
            os.unlink(part)
    fsync_folder(folder)
    return path


def download(source: Source, folder: str, opener: Opener | None = None, progress: bool = True) -> str:
    """Download ``source`` into ``folder`` as ``source.file_name`` if its checksum is right; returns the path.

    The bytes go to a temporary file in ``folder`` (fsynced) and are renamed into place only once
    verified, so an interrupted or refused download leaves no file behind. Raises ValueError for a
    wrong checksum or a bad zip, and the opener's errors (URLError, OSError, ...) as they come.
    """
    os.makedirs(folder, exist_ok=True)
    final = os.path.join(folder, source.file_name)
    fd, part = _temp_file(folder, source.file_name)
    kept: list[str] = [part]
    try:
        with os.fdopen(fd, "wb") as out, (opener or _urlopen)(source.url, TIMEOUT) as response:
            _copy(response, out, source.file_name, progress)
            out.flush()
            os.fsync(out.fileno())
        if source.zipped:
            if not zipfile.is_zipfile(part):
                raise ValueError("not a zip file")
            kept.append(_unzip_one_pth(part, folder, source.file_name))
        problem = source.problem(kept[-1])
        if problem:
            raise ValueError(problem)
        os.replace(kept[-1], final)
        kept.pop()
        fsync_folder(folder)
        return final
    finally:
        for path in kept:
            if os.path.exists(path):
                os.unlink(path)


def cached(arch: str, cache_dir: str | None = None, init: str = "imagenet") -> tuple[str | None, list[str]]:
    """(path of the first verified cached file of the chain or None, why each cached file was refused)."""
    folder = cache_dir or default_cache_dir()
    refused: list[str] = []
    seen: set[str] = set()  # the authors' file and its archived copies share one name: check it once
    for source in sources(arch, init):
        path = os.path.join(folder, source.file_name)
        if path in seen or not os.path.isfile(path):
            continue
        seen.add(path)
        try:
            if source.algorithm == "content":
                problem = content_problem(path)
            else:
                got = file_digest(path, source.algorithm)
                problem = None if source.matches(got) else \
                    f"{source.algorithm} starts {got[:8]}, expected {source.digest[:8]}"
        except OSError as err:  # unreadable: not used, and a download may replace it
            refused.append(f"{path} (in the cache: cannot be read, {err.strerror or _reason(err)}; not used)")
            continue
        if problem is None:
            return path, refused
        refused.append(f"{path} (in the cache: {problem}; not used)")
    return None, refused


def fetch(arch: str, cache_dir: str | None = None, opener: Opener | None = None, progress: bool = True,
          log: Callable[[str], None] | None = None, init: str = "imagenet") -> tuple[str, Source]:
    """A verified initialisation file (``init``, e.g. ImageNet) for ``arch``: from the cache, else the first
    source that works.

    Returns (path, source it came from). Raises CheckpointError naming every address tried and why it
    failed, with how to place a file by hand.
    """
    chain = sources(arch, init)
    if not chain:
        raise CheckpointError(f"no published {INIT_NAMES.get(init, init)} weights for {arch}; those exist for "
                              f"{', '.join(published_archs(init))} (or pass a file with --pretrained PATH)")
    folder = cache_dir or default_cache_dir()
    path, failures = cached(arch, folder, init)
    if path is not None:
        return path, next(s for s in chain if s.file_name == os.path.basename(path))
    say = log or (lambda text: print(text, file=sys.stderr))
    for source in chain:
        try:
            path = download(source, folder, opener, progress)
        except (urllib.error.URLError, HTTPException, OSError, ValueError, zipfile.BadZipFile) as err:
            failures.append(f"{source.url} ({_reason(err)})")
            continue
        # Only a success is reported here: when every source fails, the error alone lists them all.
        tried = f" after {'; '.join(failures)}" if failures else ""
        say(f"{arch}: {path} downloaded from {source.url} ({source.label}){tried}")
        return path, source
    raise CheckpointError(all_failed_message(arch, folder, failures, init))


def all_failed_message(arch: str, folder: str, failures: list[str], init: str = "imagenet") -> str:
    """The one-line error when no source of ``arch`` gives a verified file."""
    names = " or ".join(dict.fromkeys(s.file_name for s in sources(arch, init)))
    which = INIT_NAMES.get(init, init)
    flag = "" if init == "imagenet" else f" --init {init}"
    return (f"no {which} weights for {arch}: every source failed: {'; '.join(failures)}. "
            f"On a machine with network run `{FETCH_COMMAND} {arch}{flag}` and copy the file it prints to "
            f"{folder}/ (as {names}), or pass it with --pretrained PATH")
