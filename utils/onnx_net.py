"""An exported ONNX graph run by onnxruntime, usable wherever the code expects a segmentation net."""
from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from utils.cli import one_line
from utils.errors import CheckpointError, ConfigError


def require(module: str):
    """Import an optional dependency or raise a `ConfigError` saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ConfigError(f"{module} is not installed; `pip install onnx onnxruntime` to export and check "
                          f"ONNX models (or pass --no-check to skip onnxruntime)") from err


def ort_session(path: str | Path, threads: int | None = None, *, flag: str = "--onnx"):
    """An onnxruntime CPU session for an ONNX file (all graph optimisations on); `CheckpointError` names a bad file."""
    ort = require("onnxruntime")
    if not Path(path).is_file():
        raise CheckpointError(f"{flag} {path}: no such file")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own pybind error types (InvalidProtobuf, Fail, ...)
        raise CheckpointError(f"{flag} {path}: onnxruntime cannot load it as a model ({one_line(err)})") from err


QUANTISED_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger", "MatMulInteger"})


def graph_number_type(path: str | Path) -> str:
    """"int8" for a quantised graph, "fp32" otherwise, "ONNX" when onnx (to read the graph) is not installed."""
    try:
        import onnx
    except ImportError:
        return "ONNX"
    model = onnx.load(str(path), load_external_data=False)
    return "int8" if any(node.op_type in QUANTISED_OPS for node in model.graph.node) else "fp32"


class OnnxSegNet(nn.Module):
    """A graph written by export_onnx.py (input `image`, first output the main head's log-probabilities or,
    with --logits, logits) behind `main_logits`, so that `utils.evaluate` (predict_labels, evaluate) runs
    it like a SegNet.

    The graph's output is upsampled bilinearly (align_corners=True) to the requested size; the arg-max
    and softmax of log-probabilities are those of the logits, since a log-softmax only subtracts one
    value per pixel. Runs on the CPU; the images are moved there.
    """

    def __init__(self, path: str | Path, threads: int | None = None, *, flag: str = "--onnx",
                 num_classes: int | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self.flag = flag
        self.session = ort_session(path, threads, flag=flag)
        inputs = [i.name for i in self.session.get_inputs()]
        if inputs != ["image"]:
            raise CheckpointError(f"{flag} {path}: expected one input named 'image' (a graph written by "
                                  f"export_onnx.py), got {inputs}")
        self.num_classes = self._check_scores(num_classes) if num_classes else self.session.get_outputs()[0].shape[1]

    def _check_scores(self, num_classes: int) -> int:
        """`num_classes` when the first output is (N, num_classes, H, W) class scores; else `CheckpointError`.

        The declared shape decides when it names the rank and the class count; a graph that leaves them
        symbolic is run once on a small image.
        """
        output = self.session.get_outputs()[0]
        shape = list(output.shape or [])
        if not shape or (len(shape) == 4 and not isinstance(shape[1], int)):  # not declared: run it once
            declared = list(self.session.get_inputs()[0].shape or [])
            dims = [d if isinstance(d, int) else default for d, default in zip(declared, (1, 3, 32, 64))]
            try:
                shape = list(self.session.run([output.name], {"image": np.zeros(dims or (1, 3, 32, 64), np.float32)}
                                              )[0].shape)
            except Exception as err:  # onnxruntime's own error types
                raise CheckpointError(f"{self.flag} {self.path}: onnxruntime cannot run it on a {dims} image "
                                      f"({one_line(err)})") from err
        if len(shape) != 4 or shape[1] != num_classes or "float" not in output.type:
            raise CheckpointError(f"{self.flag} {self.path}: its output '{output.name}' is {output.type} of shape "
                                  f"{_shape_text(shape)}; expected float class scores (N, {num_classes}, H, W), one "
                                  f"channel per class of the palette (a graph written by export_onnx.py)")
        return num_classes

    def main_logits(self, x: torch.Tensor, output_size: tuple[int, int] | None = None) -> torch.Tensor:
        """Main-head scores (N, C, H, W) at `output_size` (default: the input's size): the graph's output."""
        feed = {"image": np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())}
        out = torch.from_numpy(self.session.run(None, feed)[0])
        size = tuple(x.shape[-2:]) if output_size is None else tuple(output_size)
        if tuple(out.shape[-2:]) != size:
            out = F.interpolate(out, size=size, mode="bilinear", align_corners=True)
        return out.to(x.device)

    def forward(self, x: torch.Tensor, output_size: tuple[int, int] | None = None) -> tuple[None, torch.Tensor]:
        """`(None, main)`: the SegNet output convention, without the aux head."""
        return None, self.main_logits(x, output_size)


def _shape_text(shape: list) -> str:
    return "(" + ", ".join(str(d) if d not in (None, "") else "?" for d in shape) + ")"
