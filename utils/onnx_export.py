"""A segmentation net as an ONNX graph (dynamic batch, height and width), and its parity with PyTorch."""
from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from utils.cli import one_line
from utils.errors import ConfigError
from utils.onnx_net import require

OPSET = 17
MIN_OPSET = 11  # the bilinear upsampling with align_corners=True has no ONNX form before opset 11
SEED = 1234


class ExportWrapper(nn.Module):
    """The net's main head (and the aux head with `with_aux`) as the graph's outputs: log-probabilities,
    or with `logits` the main head's logits (what an arg-max needs, without a full-size log-softmax)."""

    def __init__(self, net: nn.Module, with_aux: bool = False, logits: bool = False) -> None:
        super().__init__()
        if with_aux and logits:
            raise ConfigError("--logits exports the main head alone: drop --with-aux")
        self.net = net
        self.with_aux = with_aux
        self.logits = logits

    def forward(self, image: torch.Tensor):
        """`main` log-probabilities (or logits), or `(main, aux)`."""
        if self.logits:
            return self.net.main_logits(image)
        aux, main = self.net(image)
        return (main, aux) if self.with_aux else main


def export(net: nn.Module, path: str | Path, *, with_aux: bool = False, logits: bool = False, opset: int = OPSET,
           sample_size: tuple[int, int] = (128, 64)) -> Path:
    """Write `net` as ONNX with dynamic batch, height and width; returns the path.

    An existing file at `path` stays until the export has worked and the graph passed onnx's checker.
    """
    require("onnx")
    wrapper = ExportWrapper(net, with_aux, logits).eval()  # eval before export: the exporter restores this mode
    w, h = sample_size
    sample = torch.randn(1, 3, h, w)
    outputs = ["main", "aux"] if with_aux else ["main"]
    axes = {name: {0: "batch", 2: "height", 3: "width"} for name in ["image", *outputs]}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the partial file goes whatever stops the export
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter announces its deprecation and tracer notes
            torch.onnx.export(wrapper, (sample,), str(partial), opset_version=opset, dynamo=False,
                              input_names=["image"], output_names=outputs, dynamic_axes=axes)
        require("onnx").checker.check_model(str(partial))
        os.replace(partial, path)
    except ConfigError:
        raise
    except Exception as err:  # the exporter's errors have no common type (RuntimeError, SymbolicValueError, ...)
        raise ConfigError(f"the ONNX export with --opset {opset} failed: {one_line(err)}") from err
    finally:
        partial.unlink(missing_ok=True)
    return path


@torch.inference_mode()
def parity(net: nn.Module, session, sizes: Sequence[tuple[int, int]], *, with_aux: bool = False,
           logits: bool = False, seed: int = SEED) -> list[dict]:
    """Max abs difference between onnxruntime and PyTorch outputs on seeded random images per (w, h)."""
    wrapper = ExportWrapper(net, with_aux, logits).eval()
    gen = torch.Generator().manual_seed(seed)
    report = []
    for w, h in sizes:
        x = torch.randn(2, 3, h, w, generator=gen)
        ref = wrapper(x)
        ref = ref if isinstance(ref, tuple) else (ref,)
        got = session.run(None, {"image": x.numpy()})
        for name, r, g in zip(["main", "aux"], ref, got):
            if tuple(g.shape) != tuple(r.shape):
                raise RuntimeError(f"ONNX output {name} has shape {g.shape}, PyTorch {tuple(r.shape)} at {w}x{h}")
            report.append({"size": [w, h], "output": name,
                           "max_abs_diff": float((torch.from_numpy(g) - r).abs().max())})
    return report
