"""The one training configuration: script constants -> argparse -> `TrainConfig` -> engine."""
from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from model.discriminator import MIN_SIZE
from utils.cli import ArgumentParser, DefaultsHelpFormatter, non_negative_int, positive_int, size_arg
from utils.objective import ALIASES, KNOBS, PARADIGMS

SOURCES = ("gta5", "bdd", "cityscapes")  # cityscapes: its own labels, the "oracle" upper bound
TARGETS = ("cityscapes", "bdd")


def _with_knobs(cls: type) -> type:
    """Add one field per knob of the objective (utils/objective.py KNOBS), with its default."""
    for knob in KNOBS:
        cls.__annotations__[knob.name] = type(knob.default).__name__
        setattr(cls, knob.name, knob.default)
    return cls


@dataclass
@_with_knobs
class TrainConfig:
    """Every setting of a training run (adaptation, or distillation when `teacher` is set).

    Besides the fields below, one field per knob of the objective (its weights and options:
    `lambda_seg`, `lambda_kl`, ..., see utils/objective.py KNOBS).
    """

    # networks
    arch: str = "drn_d_22"
    aux_layer: Optional[int] = None
    num_classes: int = 19
    pretrained: str = "imagenet"
    zero_init_residual: bool = False
    restore_from: Optional[str] = None
    # data
    source: str = "gta5"
    target: str = "cityscapes"
    data_dir: str = "data/gta5"
    data_list: Optional[str] = None
    exclude: Optional[str] = None  # source frames to leave out, one per line (dataset.quirks.drop_excluded)
    data_dir_target: str = "data/cityscapes"
    data_list_target: Optional[str] = None
    source_split: str = "train"
    target_split: str = "train"
    val_split: str = "val"
    input_size: tuple[int, int] = (1024, 512)
    input_size_target: tuple[int, int] = (1280, 720)
    eval_size: tuple[int, int] = (1024, 512)
    random_mirror: bool = False
    random_scale: bool = False
    batch_size: int = 3
    iter_size: int = 1
    num_workers: int = 4
    # optimisation
    num_steps: int = 250_000
    num_steps_stop: int = 200_000
    learning_rate: float = 2.5e-4
    learning_rate_d: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    power: float = 0.9
    # distillation (the objective's weights and options are the knob fields)
    teacher: Optional[str] = None
    paradigm: str = "sequential"
    num_steps_target: int = 0
    # run
    random_seed: int = 1234
    deterministic: bool = False
    device: str = "auto"
    amp: str = "off"
    allow_slow_bf16: bool = False
    channels_last: bool = False
    sync_bn: bool = False
    dist_timeout: int = 60
    snapshot_dir: Optional[str] = None
    run_suffix: str = ""
    save_pred_every: int = 2000
    keep_last: int = 1
    resume: Optional[str] = None
    log_every: int = 10
    eval_every: int = 0
    eval_limit: Optional[int] = None
    keep_best: bool = False
    skip_nonfinite: int = 0
    allow_pickle: bool = False
    progress: bool = True
    debug: bool = False
    script: str = ""

    @property
    def adapt(self) -> bool:
        """True when the adversarial (output-space adaptation) terms are on."""
        return self.lambda_adv_aux > 0 or self.lambda_adv_main > 0

    @property
    def distill(self) -> bool:
        """True for a distillation run (a teacher is given)."""
        return self.teacher is not None

    def to_dict(self) -> dict:
        """Plain, JSON-friendly dict of the configuration."""
        data = dataclasses.asdict(self)
        for key in ("input_size", "input_size_target", "eval_size"):
            data[key] = list(data[key])
        return data

    @classmethod
    def from_dict(cls, data: Mapping) -> TrainConfig:
        """Inverse of `to_dict`; older names of knobs are read under their names, unknown keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        data = {ALIASES.get(k, k): v for k, v in data.items()}
        kwargs = {k: v for k, v in data.items() if k in names}
        for key in ("input_size", "input_size_target", "eval_size"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)


# The UPPER-CASE constants a training script may define, and the TrainConfig field each one sets.
SCRIPT_CONSTANTS = {
    "ARCH": "arch", "AUX_LAYER": "aux_layer", "NUM_CLASSES": "num_classes", "PRETRAINED": "pretrained",
    "ZERO_INIT_RESIDUAL": "zero_init_residual",
    "RESTORE_FROM": "restore_from", "SOURCE": "source", "TARGET": "target", "DATA_DIRECTORY": "data_dir",
    "DATA_LIST_PATH": "data_list", "DATA_DIRECTORY_TARGET": "data_dir_target",
    "DATA_LIST_PATH_TARGET": "data_list_target", "INPUT_SIZE": "input_size",
    "INPUT_SIZE_TARGET": "input_size_target", "EVAL_SIZE": "eval_size", "BATCH_SIZE": "batch_size",
    "ITER_SIZE": "iter_size", "NUM_WORKERS": "num_workers", "NUM_STEPS": "num_steps",
    "NUM_STEPS_STOP": "num_steps_stop", "LEARNING_RATE": "learning_rate", "LEARNING_RATE_D": "learning_rate_d",
    "MOMENTUM": "momentum", "WEIGHT_DECAY": "weight_decay", "POWER": "power",
    "TEACHER": "teacher", "PARADIGM": "paradigm", "NUM_STEPS_TARGET": "num_steps_target",
    "RANDOM_SEED": "random_seed", "SAVE_PRED_EVERY": "save_pred_every", "SNAPSHOT_DIR": "snapshot_dir",
    # every knob of the objective under its older names and its own name in upper case (LAMBDA_PSEUDO,
    # which wins over LAMBDA_TARGETCE when a script has both)
    **{alias.upper(): name for alias, name in ALIASES.items()}, **{k.name.upper(): k.name for k in KNOBS},
}


def config_from_constants(constants: Mapping[str, object]) -> TrainConfig:
    """A `TrainConfig` whose fields come from a script's UPPER-CASE constants (pass the script's `globals()`)."""
    return TrainConfig(**{field: constants[name] for name, field in SCRIPT_CONSTANTS.items() if name in constants})


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# Flags are the attribute names of TrainConfig, but for this one (the original code's spelling).
_RENAMED = {"learning_rate_d": "--learning-rate-D"}


def build_parser(defaults: TrainConfig, *, prog: str, description: str, distill: bool) -> ArgumentParser:
    """The command line of a training script, with defaults taken from the script's constants."""
    d = defaults
    p = ArgumentParser(prog=prog, description=description,
                       formatter_class=DefaultsHelpFormatter)

    g = p.add_argument_group("network")
    g.add_argument("--arch", dest="arch", default=d.arch, help="backbone (e.g. drn_d_22, drn_d_38)")
    g.add_argument("--aux-layer", dest="aux_layer", type=int, default=d.aux_layer,
                   help="DRN level of the auxiliary head (default %(default)s, the script's AUX_LAYER; "
                        "when unset: 6 for drn_d_22, 7 for drn_d_38)")
    g.add_argument("--num-classes", dest="num_classes", type=positive_int, default=d.num_classes)
    g.add_argument("--pretrained", dest="pretrained", default=d.pretrained,
                   help="backbone init: 'imagenet' (published DRN weights), a path or URL, or 'none'")
    g.add_argument("--zero-init-residual", dest="zero_init_residual", action=argparse.BooleanOptionalAction,
                   default=d.zero_init_residual,
                   help="from scratch (--pretrained none): start each residual block as the identity "
                        "(its last BN scale 0); helps deep nets such as DRN-D-38 train from scratch")
    g.add_argument("--restore-from", dest="restore_from", default=d.restore_from,
                   help="initialise the whole net from this checkpoint (ours, the original code's, an ImageNet file)")
    g = p.add_argument_group("data")
    g.add_argument("--source", choices=SOURCES, default=d.source,
                   help="labelled dataset; 'cityscapes' with both --lambda-adv-aux/main 0 trains on the "
                        "target's own labels (the oracle upper bound of domain adaptation papers)")
    g.add_argument("--target", choices=TARGETS, default=d.target)
    g.add_argument("--data-dir", dest="data_dir", default=d.data_dir, help="source dataset root")
    g.add_argument("--data-list", dest="data_list", default=d.data_list,
                   help="source list file (default: scan the root)")
    g.add_argument("--exclude", dest="exclude", default=d.exclude, metavar="FILE",
                   help="leave out the source frames named in FILE, one name, stem or image path per line "
                        "(e.g. GTA5's blank 15188 and 17705; docs/data.md)")
    g.add_argument("--data-dir-target", dest="data_dir_target", default=d.data_dir_target)
    g.add_argument("--data-list-target", dest="data_list_target", default=d.data_list_target)
    g.add_argument("--source-split", dest="source_split", default=d.source_split)
    g.add_argument("--target-split", dest="target_split", default=d.target_split)
    g.add_argument("--val-split", dest="val_split", default=d.val_split)
    g.add_argument("--input-size", dest="input_size", type=size_arg, default=d.input_size,
                   help="source images resized to W,H")
    g.add_argument("--input-size-target", dest="input_size_target", type=size_arg,
                   default=d.input_size_target, help="target images resized to W,H")
    g.add_argument("--eval-size", dest="eval_size", type=size_arg, default=d.eval_size,
                   help="validation images resized to W,H (labels scored at full size)")
    g.add_argument("--random-mirror", dest="random_mirror", action=argparse.BooleanOptionalAction,
                   default=d.random_mirror)
    g.add_argument("--random-scale", dest="random_scale", action=argparse.BooleanOptionalAction,
                   default=d.random_scale)
    g.add_argument("--batch-size", dest="batch_size", type=positive_int, default=d.batch_size)
    g.add_argument("--iter-size", dest="iter_size", type=positive_int, default=d.iter_size,
                   help="accumulate gradients over this many batches per step")
    g.add_argument("--num-workers", dest="num_workers", type=non_negative_int, default=d.num_workers)
    g = p.add_argument_group("optimisation")
    g.add_argument("--num-steps", dest="num_steps", type=positive_int, default=d.num_steps,
                   help="length of the poly learning-rate schedule")
    g.add_argument("--num-steps-stop", dest="num_steps_stop", type=positive_int, default=d.num_steps_stop,
                   help="stop after this many steps")
    g.add_argument("--learning-rate", dest="learning_rate", type=float, default=d.learning_rate)
    g.add_argument("--learning-rate-D", dest="learning_rate_d", type=float, default=d.learning_rate_d)
    g.add_argument("--momentum", type=float, default=d.momentum)
    g.add_argument("--weight-decay", dest="weight_decay", type=float, default=d.weight_decay)
    g.add_argument("--power", type=float, default=d.power, help="poly learning-rate exponent")
    g = p.add_argument_group("objective", "weights and options of the loss terms (utils/objective.py)")
    for knob in KNOBS:
        if distill or not knob.teacher:
            add_knob_flag(g, knob, getattr(d, knob.name))
    if distill:
        g = p.add_argument_group("distillation")
        g.add_argument("--teacher", default=d.teacher, help="the teacher's final.pth (required)")
        g.add_argument("--paradigm", choices=tuple(PARADIGMS), default=d.paradigm,
                       help="distil on source (a), target (b), both (c), or (c) then (b) (d)")
        g.add_argument("--num-steps-target", dest="num_steps_target", type=non_negative_int,
                       default=d.num_steps_target, help="length of the target-only phase of 'sequential'")
    g = p.add_argument_group("run")
    g.add_argument("--random-seed", dest="random_seed", type=int, default=d.random_seed)
    g.add_argument("--deterministic", action="store_true", default=d.deterministic)
    g.add_argument("--device", default=d.device, help="auto (CUDA when present), cpu, cuda, cuda:N")
    g.add_argument("--amp", choices=("off", "bf16", "fp16"), default=d.amp)
    g.add_argument("--allow-slow-bf16", dest="allow_slow_bf16", action="store_true", default=d.allow_slow_bf16,
                   help="run --amp bf16 even on a CPU without native bf16 (emulated: up to hundreds of times slower)")
    g.add_argument("--channels-last", dest="channels_last", action="store_true", default=d.channels_last)
    g.add_argument("--sync-bn", dest="sync_bn", action="store_true", default=d.sync_bn)
    g.add_argument("--dist-timeout", dest="dist_timeout", type=positive_int, default=d.dist_timeout,
                   help="minutes a rank waits for the others (rank 0 validates and saves meanwhile)")
    g.add_argument("--snapshot-dir", dest="snapshot_dir", default=d.snapshot_dir,
                   help="run folder (default: snapshots/<run name from the key settings>)")
    g.add_argument("--run-suffix", dest="run_suffix", default=d.run_suffix)
    g.add_argument("--save-pred-every", dest="save_pred_every", type=positive_int, default=d.save_pred_every,
                   help="write last.pth every N steps")
    g.add_argument("--keep-last", dest="keep_last", type=positive_int, default=d.keep_last,
                   help="keep the K latest saves: with K > 1 each save is also step_N.pth (the newest is "
                        "last.pth under a second name); K = 1 keeps last.pth alone")
    g.add_argument("--resume", default=d.resume, help="continue from a last.pth")
    g.add_argument("--log-every", dest="log_every", type=positive_int, default=d.log_every)
    g.add_argument("--eval-every", dest="eval_every", type=non_negative_int, default=d.eval_every,
                   help="score on the target's val split every N steps (0: never)")
    g.add_argument("--eval-limit", dest="eval_limit", type=positive_int, default=d.eval_limit)
    g.add_argument("--keep-best", dest="keep_best", action="store_true", default=d.keep_best,
                   help="also keep best.pth by val mIoU (selection on the test set: see README)")
    g.add_argument("--skip-nonfinite", dest="skip_nonfinite", type=non_negative_int, default=d.skip_nonfinite,
                   help="tolerate this many steps with a NaN/Inf loss before stopping")
    g.add_argument("--allow-pickle", dest="allow_pickle", action="store_true", default=d.allow_pickle,
                   help="UNSAFE: accept whole pickled models (runs code from the file)")
    g.add_argument("--no-progress", dest="progress", action="store_false", default=d.progress)
    g.add_argument("--debug", action="store_true", default=d.debug, help="show tracebacks")
    return p


# With --resume, how each setting is resolved. From this invocation (its flags, else the script's defaults):
# where and how fast it runs; --num-steps-stop too, so that a run stopped early goes on to its end.
RESUME_HOST = frozenset({"resume", "device", "num_workers", "progress", "debug", "num_steps_stop", "dist_timeout"})
# The run's saved value unless given again: how the run computes and records, and where its files are
# (data and teachers may move). Every other setting is the run's own and cannot change.
RESUME_MAY_CHANGE = frozenset({
    "amp", "allow_slow_bf16", "channels_last", "deterministic", "sync_bn", "log_every", "save_pred_every", "keep_last",
    "eval_every", "eval_limit", "keep_best", "skip_nonfinite", "allow_pickle",
    "data_dir", "data_list", "data_dir_target", "data_list_target", "teacher", "snapshot_dir", "val_split",
    "eval_size",
})
# Paths saved in the run's settings, made absolute when a run starts so that a resume works from anywhere.
SAVED_PATHS = ("data_dir", "data_list", "data_dir_target", "data_list_target", "teacher", "exclude")


def add_knob_flag(group: argparse._ActionsContainer, knob, default) -> None:
    """The flag of a knob of the objective (`--lambda-kl`), with its older names as aliases."""
    flags = [_flag(knob.name), *(_flag(alias) for alias in knob.aliases)]
    if knob.choices:
        group.add_argument(*flags, dest=knob.name, choices=knob.choices, default=default, help=knob.help)
    else:
        group.add_argument(*flags, dest=knob.name, type=float, default=default, help=knob.help)


def parse_config(defaults: TrainConfig, argv: Sequence[str] | None, *, prog: str, description: str,
                 distill: bool) -> TrainConfig:
    """Parse argv over the script's defaults and return the resolved `TrainConfig`.

    With --resume the run's saved settings apply: `--resume RUN/last.pth` alone continues it.
    """
    parser = build_parser(defaults, prog=prog, description=description, distill=distill)
    args = parser.parse_args(argv)
    cfg = dataclasses.replace(defaults, **vars(args))
    if args.resume:
        cfg = _resumed(cfg, _given(parser, argv, vars(args)), parser, prog)
    for name in SAVED_PATHS:
        value = getattr(cfg, name)
        if value and "://" not in value:
            setattr(cfg, name, os.path.abspath(value))
    cfg.script = prog
    if cfg.pretrained in ("none", "None", ""):
        cfg.pretrained = "none"
    _check(cfg, parser, distill)
    return cfg


def _given(parser: ArgumentParser, argv: Sequence[str] | None, parsed: dict) -> set[str]:
    """The settings given on the command line (argparse fills in a default only where none is set yet)."""
    unset = object()
    probe = parser.parse_args(argv, namespace=argparse.Namespace(**{k: unset for k in parsed}))
    return {k for k, v in vars(probe).items() if v is not unset}


def _resumed(cfg: TrainConfig, given: set[str], parser: ArgumentParser, prog: str) -> TrainConfig:
    """`cfg` with the settings saved in --resume's checkpoint; a flag that would change the run is an error."""
    from utils.checkpoint import load_training_state  # reads the checkpoint once more, here, to fail early

    saved = load_training_state(cfg.resume).get("config")
    if not saved:
        return cfg  # a checkpoint without its settings: the flags decide, as before resume kept them
    run = TrainConfig.from_dict(saved)
    if run.script and run.script != prog:
        parser.error(f"--resume {cfg.resume}: it is a run of {run.script}; resume it with that script")
    changed = [f"{_RENAMED.get(k, _flag(k))} {getattr(cfg, k)} (the run has {getattr(run, k)})"
               for k in sorted(given - RESUME_HOST - RESUME_MAY_CHANGE) if getattr(cfg, k) != getattr(run, k)]
    if changed:
        parser.error(f"--resume {cfg.resume}: a resumed run keeps its settings; drop " + "; ".join(changed))
    kept = {f.name: getattr(run, f.name) for f in dataclasses.fields(TrainConfig)
            if f.name not in RESUME_HOST and f.name not in given}
    if "snapshot_dir" not in given:
        kept["snapshot_dir"] = str(Path(cfg.resume).parent)  # continue in the folder of its last.pth
    for name in SAVED_PATHS:
        value = kept.get(name)
        if value and "://" not in value and not os.path.exists(value):
            parser.error(f"--resume {cfg.resume}: the run's {_flag(name)} {value} does not exist here; "
                         f"give {_flag(name)} again")
    return dataclasses.replace(cfg, **kept)


def _check(cfg: TrainConfig, parser: ArgumentParser, distill: bool) -> None:
    if cfg.num_steps_stop > cfg.num_steps:
        cfg.num_steps_stop = cfg.num_steps
    if distill and not cfg.teacher:
        parser.error("--teacher is required: the path of the teacher's final.pth")
    for knob in KNOBS:
        value = getattr(cfg, knob.name)
        expected = knob.check(value) if knob.check else None
        if expected is None and not knob.choices and value < 0:
            expected = "a weight >= 0"
        if expected:
            parser.error(f"{_flag(knob.name)} expects {expected}, got {value}")
    for name in ("learning_rate", "learning_rate_d"):
        if getattr(cfg, name) <= 0:
            parser.error(f"{_RENAMED.get(name, _flag(name))} expects a positive value, got {getattr(cfg, name)}")
    if cfg.paradigm == "sequential" and cfg.distill and cfg.num_steps_target <= 0:
        parser.error("--paradigm sequential needs --num-steps-target > 0")
    if cfg.adapt:  # the discriminators see the outputs at the input sizes
        for name in ("input_size", "input_size_target"):
            w, h = getattr(cfg, name)
            if min(w, h) < MIN_SIZE:
                parser.error(f"--{name.replace('_', '-')} {w},{h}: the discriminators need at least "
                             f"{MIN_SIZE}x{MIN_SIZE} (or train without them: --lambda-adv-aux 0 "
                             "--lambda-adv-main 0)")


def run_name(cfg: TrainConfig) -> str:
    """A run folder name from the key settings, e.g. gta5_to_cityscapes_drn_d_22_dakd_sequential."""
    if cfg.distill:
        kind = f"dakd_{cfg.paradigm}"
    elif cfg.adapt:
        kind = "multilevel_adapt"
    else:
        kind = "source_only"
    name = f"{cfg.source}_to_{cfg.target}_{cfg.arch}_{kind}"
    return f"{name}_{cfg.run_suffix}" if cfg.run_suffix else name
