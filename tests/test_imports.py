"""Library code never imports a top-level script (issue 24: one direction of imports)."""
from __future__ import annotations

import ast

from tests.conftest import REPO

PACKAGES = ("utils", "model", "dataset", "bench")
# modules of the bottom layer this branch added: they import nothing of model/, dataset/ or the engine
BOTTOM = ("utils/cpu.py", "utils/timing.py", "utils/flops.py", "utils/staging.py")


def imported(path) -> set[str]:
    """The top-level names of every module `path` imports (at any depth of the file)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_library_module_imports_a_top_level_script():
    scripts = {p.stem for p in REPO.glob("*.py")}
    assert {"export_onnx", "predict", "benchmark", "eval_cs"} <= scripts
    found = {str(p.relative_to(REPO)): sorted(imported(p) & scripts)
             for package in PACKAGES for p in (REPO / package).rglob("*.py")}
    assert {path: names for path, names in found.items() if names} == {}


def test_the_new_bottom_modules_import_nothing_of_the_project_above_them():
    for path in BOTTOM:
        assert imported(REPO / path) & {"model", "dataset", "bench"} == set(), path
