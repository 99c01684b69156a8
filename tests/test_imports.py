"""Imports go one way: scripts -> the engine and its modules (utils/, bench/) -> model/, dataset/ -> a bottom
layer of utils modules that imports nothing else of the project. No library module imports a top-level script."""
from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

# utils modules that import nothing of the project but one another: errors, command-line helpers, settings,
# files, devices, what the CPU runs fast, logs, losses and metrics, the timer and the FLOP count. model/ and
# dataset/ may import these, and only these, of utils/.
BOTTOM = {
    "utils", "utils.errors", "utils.cli", "utils.settings", "utils.files", "utils.checkpoint", "utils.runtime",
    "utils.cpu", "utils.logger",
    "utils.loss", "utils.metrics", "utils.video", "utils.onnx_net", "utils.plot_log", "utils.timing", "utils.flops",
}
PACKAGES = ("utils", "model", "dataset", "bench")


def _modules() -> dict[str, Path]:
    """Every module of the project by dotted name (tests left out)."""
    found = {path.stem: path for path in REPO.glob("*.py")}
    for package in PACKAGES:
        for path in (REPO / package).glob("*.py"):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            found[name] = path
    return found


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The project modules `path` imports, anywhere in the file (function-level imports included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        out.update(name for name in names if name in modules)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, set(modules)) for name, path in modules.items()}


def _layer(name: str) -> str:
    if "." not in name and name not in PACKAGES:
        return "script"
    if name in BOTTOM:
        return "bottom"
    return {"model": "model", "dataset": "dataset"}.get(name.split(".")[0], "engine")


# what each layer may import
ALLOWED = {"script": {"script", "engine", "model", "dataset", "bottom"},
           "engine": {"engine", "model", "dataset", "bottom"},
           "model": {"model", "bottom"}, "dataset": {"dataset", "bottom"}, "bottom": {"bottom"}}


def test_every_import_goes_down_the_layers():
    wrong = [f"{name} ({_layer(name)}) imports {dep} ({_layer(dep)})" for name, deps in sorted(_graph().items())
             for dep in sorted(deps) if _layer(dep) not in ALLOWED[_layer(name)]]
    assert not wrong, "\n".join(wrong)


def test_the_layers_are_what_this_test_says():
    graph = _graph()
    assert {_layer(n) for n in graph} == set(ALLOWED)  # every layer has modules (the list is not stale)
    assert set(graph) >= BOTTOM, sorted(BOTTOM - set(graph))
    assert "utils.engine" in graph and _layer("bench.oldway") == "engine"
    assert _layer("train_gta2cs_ts_multi") == "script" and _layer("model.drn") == "model"
