"""Settings declared once: every setting means the same as a script constant and as a flag, and an
UPPER-CASE name at the top of a script that is no setting stops the run before anything is written."""
from __future__ import annotations

import json
import os
import shutil

import pytest

import train_gta2cs_multi_drnd22
import train_gta2cs_multi_drnd38
import train_gta2cs_ts_multi
from tests.conftest import REPO, run_script, tiny_train_args
from utils.config import RETIRED_CONSTANTS, TrainConfig, parse_config
from utils.errors import ConfigError
from utils.settings import NUMBER, SIZE, SWITCH, TEXT, UNIT_INTERVAL, declared

SCRIPTS = (train_gta2cs_multi_drnd38, train_gta2cs_multi_drnd22, train_gta2cs_ts_multi)
BASE = {"TEACHER": "runs/teacher/final.pth", "PARADIGM": "both"}  # what a distillation run needs besides defaults


def _other_value(d):
    """A valid value of setting `d` other than its default, as (Python value, the flag's text)."""
    kind = d.setting.kind.inner or d.setting.kind
    default = d.default
    if kind is SWITCH:
        return (not default), None
    if kind.choices:
        value = next(c for c in kind.choices if c != default)
    elif kind is SIZE:
        return (96, 48), "96,48"
    elif kind is TEXT:
        value = "elsewhere/data" if d.setting.path else "something"
    elif kind.parse is int:
        value = (default or 0) + 3
    elif kind is UNIT_INTERVAL:
        value = 0.5
    else:
        assert kind.parse is float or kind is NUMBER, d
        value = 0.375
    return value, str(value)


def _parse(constants, argv):
    return parse_config({**BASE, **constants}, argv, prog="p", description="", distill=True)


def _as_set(cfg: TrainConfig) -> dict:
    data = cfg.to_dict()
    data.pop("given"), data.pop("argv")
    return data


@pytest.mark.parametrize("name", [d.name for d in declared(TrainConfig)])
def test_every_setting_means_the_same_as_a_constant_and_as_a_flag(name):
    d = next(d for d in declared(TrainConfig) if d.name == name)
    value, text = _other_value(d)
    flags = [("--" if value else "--no-") + d.flag[2:]] if d.setting.kind is SWITCH else [d.flag, text]
    by_flag = _parse({}, flags)
    expected = os.path.abspath(value) if d.setting.path else value  # paths are kept absolute, from the cwd
    assert getattr(by_flag, name) == expected != d.default
    for constant in d.constants:  # its own upper-case name and the older ones (the original code's)
        assert _as_set(_parse({constant: value}, [])) == _as_set(by_flag), constant
        if text is not None and d.setting.kind is not TEXT:  # the original code wrote INPUT_SIZE = '1024,512'
            assert _as_set(_parse({constant: text}, [])) == _as_set(by_flag), constant
    for alias in d.setting.aliases:
        assert _as_set(_parse({}, ["--" + alias.replace("_", "-"), *flags[1:]])) == _as_set(by_flag), alias


def test_a_constant_the_flag_would_refuse_is_refused_naming_the_constant():
    with pytest.raises(ConfigError, match=r"BATCH_SIZE = 0: BATCH_SIZE expects a positive integer"):
        _parse({"BATCH_SIZE": 0}, [])
    with pytest.raises(ConfigError, match=r"LAMBDA_KL = nan: LAMBDA_KL expects a weight >= 0"):
        _parse({"LAMBDA_KL": float("nan")}, [])
    with pytest.raises(ConfigError, match=r"RANDOM_MIRROR = 'maybe': RANDOM_MIRROR expects True or False"):
        _parse({"RANDOM_MIRROR": "maybe"}, [])


def test_a_name_that_is_no_setting_names_the_closest_setting_or_what_replaced_it():
    with pytest.raises(ConfigError, match=r"LAMBDA_KLL = 5.0: no setting is called LAMBDA_KLL; did you mean LAMBDA_KL"):
        _parse({"LAMBDA_KLL": 5.0}, [])
    for name, replaced_by in RETIRED_CONSTANTS.items():
        with pytest.raises(ConfigError) as err:
            _parse({name: 1}, [])
        assert f"the original code's {name} has no meaning here; {replaced_by}" in str(err.value)
    with pytest.raises(ConfigError, match=r"LAMBDA_KL = 0.1: this script does not offer LAMBDA_KL"):
        parse_config({"LAMBDA_KL": 0.1}, [], prog="p", description="", distill=False)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda m: m.__name__)
def test_each_scripts_block_is_valid_and_is_what_its_run_gets(script):
    argv = ["--teacher", "t.pth"] if script is train_gta2cs_ts_multi else []
    cfg = parse_config(vars(script), argv, prog="p", description="", distill=script is train_gta2cs_ts_multi)
    by_constant = {c: d for d in declared(TrainConfig) for c in d.constants}
    for constant, value in vars(script).items():
        if constant.isupper() and constant != "TEACHER":  # given as a flag above
            d = by_constant[constant]
            expected = os.path.abspath(value) if d.setting.path and value else value
            assert getattr(cfg, d.name) == expected, constant


def _script_copy(tmp_path, lines: str):
    """train_gta2cs_ts_multi.py with `lines` added after its constants, in a copy of the repository's scripts."""
    copy = tmp_path / "repo"
    shutil.copytree(REPO, copy, ignore=shutil.ignore_patterns(".git", ".venv*", "__pycache__", "runs", "data",
                                                               "snapshots", "docs", "figures", "tests"))
    script = copy / "train_gta2cs_ts_multi.py"
    text = script.read_text()
    anchor = 'SNAPSHOT_DIR = None'
    script.write_text(text.replace(anchor, lines + "\n" + anchor, 1))
    return copy, script


def test_a_setting_added_at_the_top_of_a_script_takes_effect(synthetic_root, tmp_path, checkpoint):
    copy, script = _script_copy(tmp_path, 'RANDOM_MIRROR = True\nAMP = "bf16"\nALLOW_SLOW_BF16 = True\nLOG_EVERY = 1')
    out = tmp_path / "run"
    result = run_script(str(script), *tiny_train_args(synthetic_root, out, steps=1), "--teacher", str(checkpoint),
                        "--paradigm", "both", cwd=copy)
    assert result.returncode == 0, result.stderr
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["random_mirror"] is True and config["amp"] == "bf16" and config["log_every"] == 1
    assert config["allow_slow_bf16"] is True


def test_a_misspelled_setting_at_the_top_stops_the_run_in_one_line_before_writing(synthetic_root, tmp_path):
    copy, script = _script_copy(tmp_path, "LAMBDA_KLL = 5.0")
    out = tmp_path / "run"
    result = run_script(str(script), *tiny_train_args(synthetic_root, out, steps=1), "--teacher", "t.pth", cwd=copy)
    assert result.returncode == 2
    assert result.stderr == ("train_gta2cs_ts_multi.py: error: LAMBDA_KLL = 5.0: no setting is called LAMBDA_KLL; "
                             "did you mean LAMBDA_KL?\n")
    assert not out.exists()
