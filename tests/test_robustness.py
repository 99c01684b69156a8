"""Bad inputs to every command: one line on stderr naming the file or flag, exit status 2, no traceback,
no existing file touched. One table row per case; each row runs in its own (forked) process."""
from __future__ import annotations

import ast
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model import build_seg_model, save_final
from tests.conftest import REPO, run_script

TRAIN = ["--input-size", "64,32", "--input-size-target", "64,32", "--batch-size", "2", "--num-workers", "0",
         "--num-steps", "2", "--pretrained", "none", "--no-progress", "--device", "cpu",
         "--snapshot-dir", "{out}", "--data-dir", "{g}", "--data-dir-target", "{cs}"]
EVAL = ["--restore-from", "{ck}", "--data-dir", "{b}", "--dataset", "bdd", "--input-size", "64,32",
        "--num-workers", "0", "--device", "cpu", "--no-progress"]
PREDICT = ["--restore-from", "{ck}", "--input", "{img}", "--out", "{out}", "--input-size", "64,32",
           "--device", "cpu", "--no-progress"]
EXPORT = ["--restore-from", "{ck}", "--out", "{out}/net.onnx", "--no-check", "--no-latency", "--card-size", "64,32"]
D22, D38, TS = "train_gta2cs_multi_drnd22.py", "train_gta2cs_multi_drnd38.py", "train_gta2cs_ts_multi.py"
TEACH = [*TRAIN, "--paradigm", "both"]


def gbad(name: str) -> list[str]:
    """Flags selecting list `name` over the broken GTA5 copy."""
    return ["--data-dir", "{gbad}", "--data-list", f"{{lists}}/{name}.txt"]


def bbad(name: str) -> list[str]:
    """Flags selecting list `name` over the broken BDD copy."""
    return ["--data-dir", "{bbad}", "--data-list", f"{{lists}}/bdd_{name}.txt"]


# (case id, command line, text the one-line error must contain)
CASES = [
    # training (the three scripts share the engine; data cases on the student script)
    ("d22-missing-root", [D22, *TRAIN, "--data-dir", "{ws}/nope"], "{ws}/nope"),
    ("d22-empty-list", [D22, *TRAIN, "--data-list", "{lists}/empty.txt"], "empty.txt"),
    ("d22-missing-image", [D22, *TRAIN, *gbad("missing_image")], "99999.png"),
    ("d22-missing-label", [D22, *TRAIN, *gbad("missing_label")], "labels/90004.png"),
    ("d22-corrupt-png", [D22, *TRAIN, *gbad("corrupt")], "images/90001.png"),
    ("d22-corrupt-png-workers", [D22, *TRAIN, *gbad("corrupt"), "--num-workers", "2"],
     "images/90001.png"),
    ("d22-label-ids", [D22, *TRAIN, *gbad("ids")], "labels/90002.png"),
    ("d22-size-mismatch", [D22, *TRAIN, *gbad("size")], "labels/90003.png"),
    ("d22-input-size-x", [D22, *TRAIN, "--input-size", "1024x512"], "--input-size"),
    ("d22-exclude-missing", [D22, *TRAIN, "--exclude", "{ws}/nope.txt"], "--exclude {ws}/nope.txt"),
    ("d22-negative-steps", [D22, *TRAIN, "--num-steps", "-5"], "--num-steps"),
    ("d22-missing-val-split", [D22, *TRAIN, "--eval-every", "1", "--val-split", "nope"], "nope"),
    ("d22-snapshot-under-file", [D22, *TRAIN, "--snapshot-dir", "{file}/sub"], "--snapshot-dir"),
    ("d22-existing-run", [D22, *TRAIN, "--snapshot-dir", "{run}"], "--resume"),
    ("d22-resume-truncated", [D22, *TRAIN, "--resume", "{trunc}"], "trunc.pth"),
    ("d22-restore-truncated", [D22, *TRAIN, "--restore-from", "{trunc}"], "trunc.pth"),
    ("d22-restore-pickled", [D22, *TRAIN, "--restore-from", "{pickled}"], "--allow-pickle"),
    ("d38-missing-target-root", [D38, *TRAIN, "--data-dir-target", "{ws}/nope"], "{ws}/nope"),
    ("d38-input-size-target-x", [D38, *TRAIN, "--input-size-target", "1024x512"], "--input-size-target"),
    ("d38-negative-steps", [D38, *TRAIN, "--num-steps", "-1"], "--num-steps"),
    ("ts-teacher-wrong-arch", [TS, *TEACH, "--teacher", "{wrong_arch}"], "wrong_arch.pth"),
    ("ts-teacher-wrong-classes", [TS, *TEACH, "--teacher", "{classes5}"], "5 classes"),
    ("ts-teacher-truncated", [TS, *TEACH, "--teacher", "{trunc}"], "trunc.pth"),
    ("ts-teacher-missing", [TS, *TEACH, "--teacher", "{ws}/none.pth"], "none.pth"),
    ("ts-teacher-pickled", [TS, *TEACH, "--teacher", "{pickled}"], "--allow-pickle"),
    ("ts-empty-target-list", [TS, *TEACH, "--teacher", "{ck}", "--data-list-target", "{lists}/empty.txt"],
     "empty.txt"),
    ("ts-input-size-x", [TS, *TEACH, "--teacher", "{ck}", "--input-size", "1024x512"], "--input-size"),
    # evaluation (BDD layout: JPEG images)
    ("eval-missing-root", ["eval_cs.py", *EVAL, "--data-dir", "{ws}/nope"], "{ws}/nope"),
    ("eval-empty-list", ["eval_cs.py", *EVAL, "--data-list", "{lists}/empty.txt"], "empty.txt"),
    ("eval-missing-image", ["eval_cs.py", *EVAL, *bbad("missing_image")], "zz_gone.jpg"),
    ("eval-missing-label", ["eval_cs.py", *EVAL, *bbad("missing_label")],
     "zz_nolabel_train_id.png"),
    ("eval-corrupt-jpg", ["eval_cs.py", *EVAL, *bbad("corrupt")], "zz_corrupt.jpg"),
    ("eval-label-ids", ["eval_cs.py", *EVAL, *bbad("ids")], "zz_ids_train_id.png"),
    ("eval-size-mismatch", ["eval_cs.py", *EVAL, *bbad("size")], "zz_size_train_id.png"),
    ("eval-input-size-x", ["eval_cs.py", *EVAL, "--input-size", "1024x512"], "--input-size"),
    ("eval-exclude-missing", ["eval_cs.py", *EVAL, "--exclude", "{ws}/nope.txt"], "--exclude {ws}/nope.txt"),
    ("eval-truncated", ["eval_cs.py", *EVAL, "--restore-from", "{trunc}"], "trunc.pth"),
    ("eval-wrong-classes", ["eval_cs.py", *EVAL, "--restore-from", "{classes5}"], "classes5.pth"),
    ("eval-pickled", ["eval_cs.py", *EVAL, "--restore-from", "{pickled}"], "--allow-pickle"),
    ("eval-json-under-file", ["eval_cs.py", *EVAL, "--json", "{file}/sub/x.json"], "--json"),
    ("eval-pred-under-file", ["eval_cs.py", *EVAL, "--save-pred", "{file}/sub"], "--save-pred"),
    # prediction
    ("predict-missing-input", ["predict.py", *PREDICT, "--input", "{ws}/nope.png"], "nope.png"),
    ("predict-corrupt-png", ["predict.py", *PREDICT, "--input", "{gbad}/images/90001.png"], "90001.png"),
    ("predict-input-size-x", ["predict.py", *PREDICT, "--input-size", "1024x512"], "--input-size"),
    ("predict-truncated", ["predict.py", *PREDICT, "--restore-from", "{trunc}"], "trunc.pth"),
    ("predict-out-under-file", ["predict.py", *PREDICT, "--out", "{file}/sub"], "--out"),
    # export
    ("export-truncated", ["export_onnx.py", *EXPORT, "--restore-from", "{trunc}"], "trunc.pth"),
    ("export-out-under-file", ["export_onnx.py", *EXPORT, "--out", "{file}/sub/net.onnx"], "--out"),
    ("export-size-x", ["export_onnx.py", *EXPORT, "--card-size", "1024x512"], "--card-size"),
    ("export-opset-too-old", ["export_onnx.py", *EXPORT, "--opset", "5"], "--opset"),
    ("export-no-check-size", ["export_onnx.py", *EXPORT, "--check-sizes", ""], "--check-sizes"),
    # dataset tools
    ("lists-missing-root", ["-m", "dataset.make_lists", "--dataset", "gta5", "--root", "{ws}/nope",
                            "--out", "{out}/l.txt"], "{ws}/nope"),
    ("lists-missing-label", ["-m", "dataset.make_lists", "--dataset", "gta5", "--root", "{gbad}", "--check-labels",
                             "--out", "{out}/l.txt"], "labels/90004.png"),
    ("lists-out-under-file", ["-m", "dataset.make_lists", "--dataset", "gta5", "--root", "{g}",
                              "--out", "{file}/sub/l.txt"], "--out"),
    ("lists-split-mat-missing", ["-m", "dataset.make_lists", "--dataset", "gta5", "--root", "{g}", "--split-mat",
                                 "{ws}/split.mat", "--out", "{out}/l.txt"], "{ws}/split.mat"),
    ("lists-split-mat-not-mat", ["-m", "dataset.make_lists", "--dataset", "gta5", "--root", "{g}", "--split-mat",
                                 "{file}", "--out", "{out}/l.txt"], "not a readable MATLAB file"),
    ("lists-split-mat-not-gta5", ["-m", "dataset.make_lists", "--dataset", "bdd", "--root", "{b}", "--split-mat",
                                  "{file}", "--out", "{out}/l.txt"], "--split-mat"),
    ("check-missing-root", ["-m", "dataset.check", "--dataset", "gta5", "--root", "{ws}/nope"], "{ws}/nope"),
    ("check-broken-gta5", ["-m", "dataset.check", "--dataset", "gta5", "--root", "{gbad}", "--no-progress"],
     "labels/90003.png"),
    ("check-bdd-no-images", ["-m", "dataset.check", "--dataset", "bdd", "--root", "{ws}/lists"], "bdd100k/images"),
    ("synthetic-out-under-file", ["-m", "dataset.synthetic", "--out", "{file}/sub", "--num-train", "1"], "--out"),
    ("synthetic-size-x", ["-m", "dataset.synthetic", "--out", "{out}", "--size", "64x32"], "--size"),
    ("synthetic-over-a-benchmark", ["-m", "dataset.synthetic", "--out", "{ws}", "--num-train", "1"],
     "already holds gta5/, bdd/"),
    ("synthetic-no-frames", ["-m", "dataset.synthetic", "--out", "{out}", "--num-train", "0"], "--num-train"),
    # the demo
    ("demo-out-under-file", ["demo.py", "--quick", "--out", "{file}/sub", "--data-dir", "{out}"], "--out"),
    ("demo-out-not-a-demo", ["demo.py", "--quick", "--out", "{run}", "--data-dir", "{out}"], "--out"),
    ("demo-size-x", ["demo.py", "--quick", "--out", "{out}/d", "--size", "64x32"], "--size"),
    ("demo-negative-steps", ["demo.py", "--quick", "--out", "{out}/d", "--steps", "-3"], "--steps"),
    ("demo-data-dir-is-a-file", ["demo.py", "--quick", "--out", "{out}/d", "--data-dir", "{file}"], "--data-dir"),
    ("demo-size-too-small", ["demo.py", "--quick", "--out", "{out}/d", "--size", "64,16"], "--size 64,16"),
    ("demo-negative-lr", ["demo.py", "--quick", "--out", "{out}/d", "--learning-rate", "-1"], "--learning-rate"),
    ("demo-score-last-too-many", ["demo.py", "--quick", "--out", "{out}/d", "--score-last", "13"], "--score-last 13"),
    ("demo-combine-no-summary", ["demo.py", "--combine", "{ws}/nope", "{out}", "--out", "{out}/c"],
     "--combine {ws}/nope: no readable summary.json"),
    ("d22-input-size-below-discriminator", [D22, *TRAIN, "--input-size-target", "64,16"], "--input-size-target"),
    # non-finite numbers: every float flag of every script refuses them before anything is written
    ("d22-learning-rate-nan", [D22, *TRAIN, "--learning-rate", "nan"],
     "--learning-rate: expected a positive number, got 'nan'"),
    ("d22-learning-rate-d-inf", [D22, *TRAIN, "--learning-rate-D", "inf"], "--learning-rate-D"),
    ("d22-momentum-nan", [D22, *TRAIN, "--momentum", "nan"], "--momentum"),
    ("d22-weight-decay-inf", [D22, *TRAIN, "--weight-decay=-inf"],
     "--weight-decay: expected a number >= 0, got '-inf'"),
    ("d22-power-nan", [D22, *TRAIN, "--power", "NaN"], "--power"),
    ("d38-lambda-adv-main-nan", [D38, *TRAIN, "--lambda-adv-main", "nan"], "--lambda-adv-main"),
    ("d38-lambda-seg-inf", [D38, *TRAIN, "--lambda-seg", "inf"], "--lambda-seg"),
    ("ts-lambda-kl-nan", [TS, *TEACH, "--teacher", "{ck}", "--lambda-kl", "nan"], "--lambda-kl"),
    ("ts-kd-temperature-inf", [TS, *TEACH, "--teacher", "{ck}", "--kd-temperature", "inf"], "--kd-temperature"),
    ("ts-pseudo-threshold-nan", [TS, *TEACH, "--teacher", "{ck}", "--pseudo-threshold", "nan"],
     "--pseudo-threshold"),
    ("predict-alpha-nan", ["predict.py", *PREDICT, "--alpha", "nan"], "--alpha"),
    ("export-tolerance-nan", ["export_onnx.py", *EXPORT, "--tolerance", "nan"], "--tolerance"),
    ("eval-scales-inf", ["eval_cs.py", *EVAL, "--scales", "1,inf"], "--scales"),
    ("demo-learning-rate-nan", ["demo.py", "--quick", "--out", "{out}/d", "--learning-rate", "nan"], "--learning-rate"),
]
# Faults inside an image's bytes are found when a training step reads the image: the run folder exists by then.
FOUND_WHILE_TRAINING = {"d22-corrupt-png", "d22-corrupt-png-workers", "d22-label-ids"}


class Runner:
    """Client of tests/script_runner.py: runs a command line in a fresh forked process."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "script_runner.py")], cwd=REPO,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def __call__(self, *argv: str) -> subprocess.CompletedProcess:
        self.proc.stdin.write(json.dumps({"argv": list(argv), "cwd": str(REPO)}) + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline())
        return subprocess.CompletedProcess(list(argv), answer["returncode"], answer["stdout"], answer["stderr"])

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def runner():
    server = Runner()
    yield server
    server.close()


def _png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path)


def _write_list(path: Path, entries: list[str]) -> str:
    path.write_text("".join(f"{e}\n" for e in entries))
    return str(path)


@pytest.fixture(scope="module")
def ws(synthetic_root, tmp_path_factory) -> dict[str, str]:
    """A workspace of broken datasets, lists and checkpoints; returns the placeholders of CASES."""
    ws = tmp_path_factory.mktemp("robust")
    g, b = ws / "gta5", ws / "bdd"  # broken copies; the clean ones stay in synthetic_root
    shutil.copytree(synthetic_root / "gta5", g)
    shutil.copytree(synthetic_root / "bdd", b)
    # GTA5: corrupt image, foreign label ids, label of another size, image without label
    good_png = (g / "images/00001.png").read_bytes()
    label = np.array(Image.open(g / "labels/00001.png"))
    (g / "images/90001.png").write_bytes(good_png[: len(good_png) // 3])
    _png(label, g / "labels/90001.png")
    for n in ("90002", "90003", "90004"):
        (g / f"images/{n}.png").write_bytes(good_png)
    bad_ids = label.copy()
    bad_ids[0, :4] = 200
    _png(bad_ids, g / "labels/90002.png")
    _png(label[: label.shape[0] // 2, : label.shape[1] // 2].copy(), g / "labels/90003.png")
    # BDD val: the same four faults with JPEG images
    val = sorted((b / "images/val").glob("*.jpg"))[0]
    jpg = val.read_bytes()
    blabel = np.array(Image.open(b / "labels/val" / f"{val.stem}_train_id.png"))
    (b / "images/val/zz_corrupt.jpg").write_bytes(jpg[: len(jpg) // 3])
    _png(blabel, b / "labels/val/zz_corrupt_train_id.png")
    for n in ("zz_ids", "zz_size", "zz_nolabel"):
        (b / f"images/val/{n}.jpg").write_bytes(jpg)
    bad = blabel.copy()
    bad[0, :4] = 100
    _png(bad, b / "labels/val/zz_ids_train_id.png")
    _png(blabel[: blabel.shape[0] // 2].copy(), b / "labels/val/zz_size_train_id.png")
    lists = ws / "lists"
    lists.mkdir()
    (lists / "empty.txt").write_text("\n")
    _write_list(lists / "missing_image.txt", ["images/00001.png", "images/99999.png"])
    for name, n in (("missing_label", "90004"), ("corrupt", "90001"), ("ids", "90002"), ("size", "90003")):
        _write_list(lists / f"{name}.txt", ["images/00001.png", f"images/{n}.png"])
    good_val = f"images/val/{val.name}"
    for name, n in (("missing_image", "zz_gone"), ("missing_label", "zz_nolabel"), ("corrupt", "zz_corrupt"),
                    ("ids", "zz_ids"), ("size", "zz_size")):
        _write_list(lists / f"bdd_{name}.txt", [good_val, f"images/val/{n}.jpg"])
    # checkpoints: good, truncated, 5 classes, wrong architecture, whole pickled model
    ck = ws / "ck"
    ck.mkdir()
    torch.manual_seed(0)
    net = build_seg_model("drn_d_22")
    save_final(ck / "good.pth", net)
    data = (ck / "good.pth").read_bytes()
    (ck / "trunc.pth").write_bytes(data[: len(data) // 2])
    save_final(ck / "classes5.pth", build_seg_model("drn_d_22", num_classes=5))
    payload = torch.load(ck / "good.pth", weights_only=True)
    payload.update(arch="drn_d_38", aux_layer=7)
    torch.save(payload, ck / "wrong_arch.pth")
    torch.save(net, ck / "pickled.pth")
    # an existing run whose files must survive, and a regular file to put outputs "under"
    run = ws / "run"
    run.mkdir()
    (run / "last.pth").write_bytes(b"an earlier run's state")
    (run / "config.json").write_text("{}\n")
    (ws / "file").write_text("a regular file, not a folder\n")
    return {"ws": str(ws), "g": str(synthetic_root / "gta5"), "b": str(synthetic_root / "bdd"),
            "gbad": str(g), "bbad": str(b), "cs": str(synthetic_root / "cityscapes"),
            "lists": str(lists), "ck": str(ck / "good.pth"), "trunc": str(ck / "trunc.pth"),
            "classes5": str(ck / "classes5.pth"), "wrong_arch": str(ck / "wrong_arch.pth"),
            "pickled": str(ck / "pickled.pth"), "run": str(run), "file": str(ws / "file"),
            "img": str(g / "images/00001.png")}


def _fingerprints(root: Path) -> dict[str, tuple]:
    """Identity of every file under `root`: inode, size, mtime, and content hash of the small ones."""
    prints = {}
    for path in root.rglob("*"):
        if path.is_file():
            st = path.stat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if st.st_size < 1 << 20 else ""
            prints[str(path)] = (st.st_ino, st.st_size, st.st_mtime_ns, digest)
    return prints


@pytest.mark.parametrize("case, argv, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line_and_exit_2(case, argv, expected, runner, ws, tmp_path):
    values = {**ws, "out": str(tmp_path / "out")}
    argv = [a.format(**values) for a in argv]
    before = _fingerprints(Path(ws["ws"]))
    result = runner(*argv)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, f"{case}: exit {result.returncode}\n{result.stderr[-3000:]}"
    assert len(lines) == 1, f"{case}: expected one line on stderr, got:\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr
    assert ": error: " in lines[0]
    assert expected.format(**values) in lines[0], lines[0]
    after = _fingerprints(Path(ws["ws"]))
    changed = [p for p, v in before.items() if after.get(p) != v]
    assert not changed, f"{case}: existing files changed: {changed}"
    if case not in FOUND_WHILE_TRAINING:  # the flags and files are checked before the output folder is made
        assert not Path(values["out"]).exists(), f"{case}: wrote {sorted(Path(values['out']).rglob('*'))}"


def test_debug_shows_the_traceback_in_a_real_subprocess(ws, tmp_path):
    args = [D22, *TRAIN, "--data-dir", "{ws}/nope", "--debug"]
    result = run_script(*[a.format(**ws, out=str(tmp_path / "out")) for a in args])
    assert result.returncode == 1  # the interpreter's status for an uncaught exception, not run_cli's 2
    assert "Traceback" in result.stderr and "DatasetError" in result.stderr
    assert f"{ws['ws']}/nope" in result.stderr


def _unsafe_loads() -> list[str]:
    """`torch.load` / `load_state_dict_from_url` calls in the repository without `weights_only=True`."""
    found = []
    for path in sorted(REPO.rglob("*.py")):
        if any(part.startswith(".") or part in ("venv", "build") for part in path.relative_to(REPO).parts):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("load", "load_state_dict_from_url")):
                continue
            owner = node.func.value
            if node.func.attr == "load" and not (isinstance(owner, ast.Name) and owner.id == "torch"):
                continue
            safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                       for k in node.keywords)
            if not safe:
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_every_torch_load_is_weights_only_except_the_allow_pickle_path():
    # the one exception: model/weights.py, where weights_only=False only follows an explicit --allow-pickle
    assert [f for f in _unsafe_loads() if "weights_only=not allow_pickle" not in f] == []
    assert len([f for f in _unsafe_loads() if f.startswith("model/weights.py")]) == 1


@pytest.mark.parametrize("script", ["eval_cs.py", "predict.py", "export_onnx.py", D22, D38, TS])
def test_allow_pickle_is_offered_and_documented_as_unsafe(script, runner):
    result = runner(script, "--help")
    assert result.returncode == 0
    assert "--allow-pickle" in result.stdout and "unsafe" in result.stdout.lower()


def test_allow_pickle_loads_a_whole_pickled_model_end_to_end(runner, ws, tmp_path):
    evaluated = runner("eval_cs.py", *[a.format(**ws) for a in EVAL], "--restore-from", ws["pickled"],
                       "--allow-pickle", "--arch", "drn_d_22", "--limit", "1", "--json", str(tmp_path / "e.json"))
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads((tmp_path / "e.json").read_text())["num_images"] == 1
    trained = runner(D22, *[a.format(**ws, out=str(tmp_path / "run")) for a in TRAIN], "--num-steps", "1",
                     "--restore-from", ws["pickled"], "--allow-pickle")
    assert trained.returncode == 0, trained.stderr
    assert (tmp_path / "run" / "final.pth").is_file()


def test_a_reader_that_goes_away_ends_the_command_quietly(ws):
    """`python eval_cs.py ... | head`: no BrokenPipeError traceback when head stops reading."""
    args = [a.format(**ws, out="unused") for a in EVAL]
    proc = subprocess.Popen([sys.executable, "eval_cs.py", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 1
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_a_module_run_names_itself_as_typed(tmp_path):
    result = run_script("-m", "dataset.make_lists", "--dataset", "cityscapes", "--root", str(tmp_path / "nope"),
                        "--split", "val", "--out", str(tmp_path / "l.txt"))
    assert result.returncode == 2
    assert result.stderr.startswith("python -m dataset.make_lists: error: cityscapes dataset root")
