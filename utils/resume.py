"""`--resume`: the checkpoint read once, every check in one place, and the run's settings merged with the flags."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from model import resolve_aux_layer
from utils.checkpoint import load_training_state
from utils.config import TrainConfig, check_config
from utils.errors import CheckpointError, ConfigError
from utils.settings import declared


def resume_run(cfg: TrainConfig) -> tuple[TrainConfig, dict]:
    """The configuration and training state to continue `cfg.resume` with.

    The run's saved settings apply, except those of this invocation (where and how fast it runs) and those
    the flags may change and set again; a flag that would change the run itself is a `ConfigError`, and so
    is a net the checkpoint does not fit.
    """
    state = load_training_state(cfg.resume)
    if state.get("config"):  # a checkpoint without its settings: the flags decide
        cfg = _merged(cfg, TrainConfig.from_dict(state["config"]))
    check_config(cfg, distill=cfg.distill)
    _check_fits(cfg, state)
    return cfg, state


def _merged(cfg: TrainConfig, run: TrainConfig) -> TrainConfig:
    where = f"--resume {cfg.resume}"
    if run.script and run.script != cfg.script:
        raise ConfigError(f"{where}: it is a run of {run.script}; resume it with that script")
    rules = {d.name: d for d in declared(TrainConfig)}
    given = set(cfg.given)
    changed = [f"{rules[name].flag} {getattr(cfg, name)} (the run has {getattr(run, name)})"
               for name in sorted(given) if rules[name].setting.resume == "own"
               and getattr(cfg, name) != getattr(run, name)]
    if changed:
        raise ConfigError(f"{where}: a resumed run keeps its settings; drop " + "; ".join(changed))
    kept = {name: getattr(run, name) for name, d in rules.items()
            if d.setting.resume != "invocation" and name not in given}
    if "snapshot_dir" not in given:
        kept["snapshot_dir"] = str(Path(cfg.resume).parent)  # continue in the folder of its last.pth
    for name, d in rules.items():
        value = kept.get(name)
        if d.setting.path and value and "://" not in value and not os.path.exists(value):
            raise ConfigError(f"{where}: the run's {d.flag} {value} does not exist here; give {d.flag} again")
    return dataclasses.replace(cfg, **kept)


def _check_fits(cfg: TrainConfig, state: dict) -> None:
    asked = {"arch": cfg.arch, "num_classes": cfg.num_classes, "aux_layer": resolve_aux_layer(cfg.arch, cfg.aux_layer)}
    for key, value in asked.items():
        if key in state and state[key] != value:
            raise CheckpointError(f"--resume {cfg.resume}: it was trained with {key}={state[key]!r}, "
                                  f"this run asks for {value!r}")
    saved = state.get("config", {})
    if saved.get("teacher") and saved.get("paradigm") != cfg.paradigm and cfg.distill:
        raise CheckpointError(f"--resume {cfg.resume}: it ran --paradigm {saved.get('paradigm')}, "
                              f"this run asks for {cfg.paradigm}")
