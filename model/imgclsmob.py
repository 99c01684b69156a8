"""The imgclsmob model zoo's DRN weights (PyPI package ``pytorchcv``) renamed to our parameter names.

imgclsmob names a DRN ``features.init_block``, ``features.stage{1..4}.unit{k}`` (levels 4 to 8 share
stage 4) and ``output``; we use the DRN authors' names (``layer0`` / ``conv1``, ``layer{1..8}``, ``fc``).
Both compute the same function with the same weights; the conversion is a pure renaming, except for
DRN-C-58, whose non-residual level-7 block owns an unused ``downsample`` in our naming (and the
authors' files) that imgclsmob leaves out: it is filled with neutral values that change no output.
"""

from __future__ import annotations

import functools
import re
import zipfile
from collections.abc import Mapping

import torch
from torch import Tensor

from model.drn import ARCH_SPECS, Bottleneck

STEM_KEY = "features.init_block.conv.weight"
"""A key only imgclsmob DRN state dicts have: how their format is recognised."""

ZOO_NAMES = {"drn_c_26": "drnc26", "drn_c_42": "drnc42", "drn_c_58": "drnc58", "drn_d_22": "drnd22",
             "drn_d_38": "drnd38", "drn_d_54": "drnd54", "drn_d_105": "drnd105"}
"""Our architecture name -> imgclsmob's model name, for the DRNs both zoos have."""

MAX_PTH_BYTES = 1 << 30
"""The largest ``.pth`` inside a zip that is read (declared uncompressed size): the biggest DRN with its
ImageNet classifier, drn_d_107, holds 236 MB of float32 tensors."""

_LEVEL_STAGE = (1, 2, 3, 4, 4, 4, 4, 4)  # imgclsmob's stage of each level 1..8
_PARAM = re.compile(r"^(.*)\.(weight|bias|running_mean|running_var|num_batches_tracked)$")


def is_imgclsmob(state: Mapping[str, object]) -> bool:
    """True when ``state`` uses imgclsmob's DRN names (a ``module.`` prefix already stripped)."""
    return STEM_KEY in state


def _units(arch: str):
    """(level, block index in our level, imgclsmob unit prefix) for every block of ``arch``, in order."""
    counts = ARCH_SPECS[arch].layers
    next_unit = {stage: 1 for stage in _LEVEL_STAGE}
    for level, count in enumerate(counts, start=1):
        stage = _LEVEL_STAGE[level - 1]
        for index in range(count):
            yield level, index, f"features.stage{stage}.unit{next_unit[stage]}"
            next_unit[stage] += 1


@functools.cache
def module_map(arch: str) -> dict[str, str]:
    """imgclsmob module prefix -> our module prefix, for every module with parameters in ``arch``."""
    spec = ARCH_SPECS[arch]
    mapping = {"output": "fc"}
    if spec.arch == "D":
        mapping.update({"features.init_block.conv": "layer0.0", "features.init_block.bn": "layer0.1"})
    else:
        mapping.update({"features.init_block.conv": "conv1", "features.init_block.bn": "bn1"})
    for level, index, unit in _units(arch):
        ours = f"layer{level}"
        if spec.arch == "D" and level in (1, 2, 7, 8):  # a plain conv-BN-ReLU, three modules per conv
            mapping[f"{unit}.body.conv"] = f"{ours}.{3 * index}"
            mapping[f"{unit}.body.bn"] = f"{ours}.{3 * index + 1}"
            continue
        convs = 3 if spec.block is Bottleneck and 3 <= level <= 6 else 2
        for i in range(1, convs + 1):
            mapping[f"{unit}.body.conv{i}.conv"] = f"{ours}.{index}.conv{i}"
            mapping[f"{unit}.body.conv{i}.bn"] = f"{ours}.{index}.bn{i}"
        mapping[f"{unit}.identity_conv.conv"] = f"{ours}.{index}.downsample.0"
        mapping[f"{unit}.identity_conv.bn"] = f"{ours}.{index}.downsample.1"
    return mapping


def level_modules(arch: str) -> dict[int, str]:
    """Level 1..8 -> the imgclsmob module whose output is that level's output (its last unit)."""
    return {level: unit for level, _, unit in _units(arch)}


def _rename(state: Mapping[str, Tensor], arch: str) -> dict[str, Tensor] | None:
    """``state`` in our names for ``arch``, or None when its modules are not exactly those of ``arch``."""
    mapping = module_map(arch)
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        found = _PARAM.match(key)
        if found is None or found.group(1) not in mapping:
            return None
        out[f"{mapping[found.group(1)]}.{found.group(2)}"] = value
    used = {_PARAM.match(k).group(1) for k in state}  # type: ignore[union-attr]
    # A unit without a shortcut conv is normal; any other module of the map must be present.
    if any(prefix not in used and ".identity_conv." not in prefix for prefix in mapping if prefix != "output"):
        return None
    return out


def _fill_unused_shortcuts(state: dict[str, Tensor], arch: str) -> None:
    """Give C-58's non-residual level-7 block the ``downsample`` our net owns, with neutral values."""
    spec = ARCH_SPECS[arch]
    if spec.arch != "C" or spec.block is not Bottleneck or "layer7.0.downsample.0.weight" in state:
        return
    out_ch, in_ch = state["layer7.0.conv1.weight"].shape[:2]
    dtype = state["layer7.0.conv1.weight"].dtype
    prefix = "layer7.0.downsample."
    state[prefix + "0.weight"] = torch.zeros(out_ch, in_ch, 1, 1, dtype=dtype)
    state[prefix + "1.weight"] = torch.ones(out_ch, dtype=dtype)
    state[prefix + "1.bias"] = torch.zeros(out_ch, dtype=dtype)
    state[prefix + "1.running_mean"] = torch.zeros(out_ch, dtype=dtype)
    state[prefix + "1.running_var"] = torch.ones(out_ch, dtype=dtype)


def to_ours(state: Mapping[str, Tensor], arch: str | None = None) -> tuple[str, dict[str, Tensor]]:
    """(architecture, state dict in our names) of an imgclsmob DRN state dict.

    ``arch`` is tried first; otherwise the architecture is the one whose module names match exactly.
    Raises ValueError when none does.
    """
    candidates = [arch] if arch in ZOO_NAMES else []
    candidates += [a for a in ZOO_NAMES if a != arch]
    for name in candidates:
        renamed = _rename(state, name)
        if renamed is not None:
            _fill_unused_shortcuts(renamed, name)
            return name, renamed
    raise ValueError("its imgclsmob module names match none of "
                     f"{', '.join(f'{ours} ({theirs})' for ours, theirs in ZOO_NAMES.items())}")


def zipped_pth(archive: zipfile.ZipFile) -> zipfile.ZipInfo:
    """The one ``.pth`` member of a zip as imgclsmob publishes them, checked before a byte of it is read.

    Raises ValueError when the zip holds no or several ``.pth`` files, or when the member declares an
    uncompressed size above ``MAX_PTH_BYTES`` (reading stops at the declared size, so a member cannot
    grow past it).
    """
    members = [m for m in archive.infolist() if m.filename.endswith(".pth") and not m.is_dir()]
    if len(members) != 1:
        names = ", ".join(m.filename for m in members[:5])
        raise ValueError(f"a zip holding {len(members)} .pth files{f' ({names})' if names else ''}; expected "
                         "exactly one (as imgclsmob publishes them)")
    member = members[0]
    if member.file_size > MAX_PTH_BYTES:
        raise ValueError(f"a zip whose {member.filename} declares {member.file_size / 1e9:.1f} GB uncompressed, "
                         f"more than the {MAX_PTH_BYTES / 2**30:.0f} GiB a DRN checkpoint can need; not read")
    return member
