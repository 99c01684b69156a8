"""The one training configuration: script constants -> argparse -> `TrainConfig` -> engine.

Each setting is declared once, as a field of `TrainConfig` (the loss terms' weights and options as a field
of `Knobs`, utils/objective.py): its default, kind, help, group, what `--resume` does with it and which
scripts offer it. The scripts' UPPER-CASE constants, the flags, the checks, config.json and the resume
rules all come from that declaration (utils/settings.py).
"""
from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from model.discriminator import MIN_SIZE
from utils.cli import ArgumentParser, DefaultsHelpFormatter
from utils.criteria import LAST, SELECT_CHOICES
from utils.errors import ConfigError
from utils.objective import PARADIGMS, Knobs
from utils.settings import (
    INTEGER,
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    POSITIVE,
    POSITIVE_INT,
    SIZE,
    SWITCH,
    TEXT,
    UNIT_INTERVAL,
    Declared,
    absolute_paths,
    add_flags,
    choice,
    declared,
    given_on_command_line,
    older_names,
    optional,
    read_constants,
    setting,
)

SOURCES = ("gta5", "bdd", "cityscapes", "synthia")  # cityscapes: its own labels, the "oracle" upper bound
TARGETS = ("cityscapes", "bdd")
AMP_MODES = ("off", "bf16", "fp16")

# The original code's constants that mean nothing here, and what replaced them.
RETIRED_CONSTANTS = {
    "MODEL": "the net is ARCH (e.g. ARCH = 'drn_d_22')",
    "IMG_MEAN": "images are normalised as the ImageNet weights expect: RGB in [0, 1], ImageNet mean and std "
                "(docs/differences.md)",
    "IGNORE_LABEL": "the ignore label is 255 everywhere (docs/method.md)",
    "SAVE_NUM_IMAGES": "it was never used; SAVE_PRED_EVERY sets how often last.pth is written",
}


@dataclass
class TrainConfig(Knobs):
    """Every setting of a training run (adaptation, or distillation when `teacher` is set).

    Besides the fields below, the weights and options of the loss terms (`lambda_seg`, `lambda_kl`, ...:
    `Knobs`, utils/objective.py).
    """

    # network
    arch: str = setting("drn_d_22", TEXT, "net: a DRN (e.g. drn_d_22, drn_d_38) or DeepLab-v2 ResNet-101 "
                        "(deeplabv2_resnet101, deeplabv2_resnet101_adaptsegnet; docs/reference.md)", "network")
    aux_layer: Optional[int] = setting(None, optional(POSITIVE_INT), "DRN level of the auxiliary head (none: 6 for "
                                       "drn_d_22, 7 for drn_d_38); DeepLab-v2's is always on layer3 and ignores it",
                                       "network")
    num_classes: int = setting(19, POSITIVE_INT, "classes the heads predict", "network")
    pretrained: str = setting("imagenet", TEXT, "backbone init: 'imagenet' (published DRN weights; for DeepLab-v2 "
                              "ADVENT's ImageNet file), 'coco' (DeepLab-v2: AdaptSegNet's ImageNet + MS-COCO file), "
                              "a path or URL, or 'none'", "network")
    zero_init_residual: bool = setting(False, SWITCH, "from scratch (--pretrained none): start each residual block "
                                       "as the identity (its last BN scale 0); helps deep nets such as DRN-D-38 "
                                       "train from scratch", "network")
    restore_from: Optional[str] = setting(None, optional(TEXT), "initialise the whole net from this checkpoint "
                                          "(ours, the original code's, an ImageNet file)", "network", path=True)
    # data
    source: str = setting("gta5", choice(*SOURCES), "labelled dataset; 'cityscapes' with both --lambda-adv-aux/main "
                          "0 trains on the target's own labels (the oracle upper bound of domain adaptation papers)",
                          "data")
    target: str = setting("cityscapes", choice(*TARGETS), "unlabelled dataset adapted to", "data")
    data_dir: str = setting("data/gta5", TEXT, "source dataset root", "data", resume="may_change", path=True,
                            constants=("DATA_DIRECTORY",))
    data_list: Optional[str] = setting(None, optional(TEXT), "source list file (none: scan the root)", "data",
                                       resume="may_change", path=True, constants=("DATA_LIST_PATH",))
    exclude: Optional[str] = setting(None, optional(TEXT), "leave out the source frames named in this file, one name, "
                                     "stem or image path per line (e.g. GTA5's blank 15188 and 17705; docs/data.md)",
                                     "data", path=True)
    data_dir_target: str = setting("data/cityscapes", TEXT, "target dataset root", "data", resume="may_change",
                                   path=True, constants=("DATA_DIRECTORY_TARGET",))
    data_list_target: Optional[str] = setting(None, optional(TEXT), "target list file (none: scan the root)", "data",
                                              resume="may_change", path=True, constants=("DATA_LIST_PATH_TARGET",))
    source_split: str = setting("train", TEXT, "split of the source dataset trained on", "data")
    target_split: str = setting("train", TEXT, "split of the target dataset adapted to", "data", constants=("SET",))
    val_split: Optional[str] = setting("val", optional(TEXT), "split of the target scored by --eval-every (none: the "
                                       "target has no labels; --eval-every then logs only the label-free signals)",
                                       "data", resume="may_change")
    input_size: tuple[int, int] = setting((1024, 512), SIZE, "source images resized to W,H", "data")
    input_size_target: tuple[int, int] = setting((1280, 720), SIZE, "target images resized to W,H", "data")
    eval_size: tuple[int, int] = setting((1024, 512), SIZE, "validation images resized to W,H (labels scored at "
                                         "full size)", "data", resume="may_change")
    random_mirror: bool = setting(False, SWITCH, "flip training images left-right at random", "data")
    random_scale: bool = setting(False, SWITCH, "rescale training images at random (0.5 to 1.5) and crop", "data")
    source_holdout: int = setting(0, NON_NEGATIVE_INT, "hold these source frames out of training and score them at "
                                  "each --eval-every (sel/source_mIoU; a fixed hash-ranked choice; docs/selection.md)",
                                  "data")
    batch_size: int = setting(3, POSITIVE_INT, "images per batch, per domain and per process", "data")
    iter_size: int = setting(1, POSITIVE_INT, "accumulate gradients over this many batches per step", "data")
    num_workers: int = setting(4, NON_NEGATIVE_INT, "data-loading processes per domain", "data",
                               resume="invocation")
    # optimisation
    num_steps: int = setting(250_000, POSITIVE_INT, "length of the poly learning-rate schedule", "optimisation")
    num_steps_stop: int = setting(200_000, POSITIVE_INT, "stop after this many steps", "optimisation",
                                  resume="invocation")
    learning_rate: float = setting(2.5e-4, POSITIVE, "the net's base learning rate (SGD)", "optimisation")
    learning_rate_d: float = setting(1e-4, POSITIVE, "the discriminators' learning rate (Adam)", "optimisation",
                                     flag="--learning-rate-D")
    momentum: float = setting(0.9, UNIT_INTERVAL, "SGD momentum", "optimisation")
    weight_decay: float = setting(5e-4, NON_NEGATIVE, "SGD weight decay", "optimisation")
    power: float = setting(0.9, POSITIVE, "poly learning-rate exponent", "optimisation")
    # distillation
    teacher: Optional[str] = setting(None, optional(TEXT), "the teacher's final.pth (required)", "distillation",
                                     resume="may_change", distill_only=True, path=True)
    paradigm: str = setting("sequential", choice(*PARADIGMS), "distil on source (a), target (b), both (c), or (c) "
                            "then (b) (d)", "distillation", distill_only=True)
    num_steps_target: int = setting(0, NON_NEGATIVE_INT, "length of the target-only phase of 'sequential'",
                                    "distillation", distill_only=True)
    # run
    random_seed: int = setting(1234, INTEGER, "seed of every random generator", "run")
    deterministic: bool = setting(False, SWITCH, "deterministic kernels (bitwise reproducible on a CPU)", "run",
                                  resume="may_change")
    device: str = setting("auto", TEXT, "auto (CUDA when present), cpu, cuda, cuda:N", "run", resume="invocation")
    amp: str = setting("off", choice(*AMP_MODES), "mixed precision: bf16 or fp16 autocast", "run",
                       resume="may_change")
    allow_slow_bf16: bool = setting(False, SWITCH, "run --amp bf16 even on a CPU without native bf16 (emulated: up "
                                    "to hundreds of times slower; utils/cpu.py)", "run", resume="may_change")
    channels_last: bool = setting(False, SWITCH, "channels-last memory format (faster convolutions on GPUs and "
                                  "bf16 CPUs)", "run", resume="may_change")
    compile: bool = setting(False, SWITCH, "torch.compile the nets (the first steps compile; "
                            "docs/scaling.md#gpu-check)", "run", resume="may_change")
    sync_bn: bool = setting(False, SWITCH, "batch-norm statistics over every GPU (torchrun)", "run",
                            resume="may_change")
    dist_timeout: int = setting(60, POSITIVE_INT, "minutes a rank waits for the others (rank 0 validates and saves "
                                "meanwhile)", "run", resume="invocation")
    snapshot_dir: Optional[str] = setting(None, optional(TEXT), "run folder (none: snapshots/<run name from the key "
                                          "settings>)", "run", resume="may_change")
    run_suffix: str = setting("", TEXT, "appended to the run folder's name", "run")
    save_pred_every: int = setting(2000, POSITIVE_INT, "write last.pth every N steps", "run", resume="may_change")
    keep_last: int = setting(1, POSITIVE_INT, "keep the K latest saves: with K > 1 each save is also step_N.pth (the "
                             "newest is last.pth under a second name); K = 1 keeps last.pth alone", "run",
                             resume="may_change")
    resume: Optional[str] = setting(None, optional(TEXT), "continue from a last.pth", "run", resume="invocation")
    log_every: int = setting(10, POSITIVE_INT, "write the losses to log.jsonl every N steps", "run",
                             resume="may_change")
    eval_every: int = setting(0, NON_NEGATIVE_INT, "validate every N steps: the target's val mIoU and the "
                              "selection signals, logged (0: never)", "run", resume="may_change")
    eval_limit: Optional[int] = setting(None, optional(POSITIVE_INT), "score at most this many val images", "run",
                                        resume="may_change")
    signal_images: int = setting(200, NON_NEGATIVE_INT, "target train images (a fixed hash-ranked choice, never val) "
                                 "the label-free signals are computed on at each --eval-every (0: none)", "run")
    select: str = setting(LAST, choice(*SELECT_CHOICES), "keep the snapshot this criterion picks at each --eval-every "
                          "as selected_<name>.pth ('last': final.pth alone; 'oracle': by the target's val mIoU, "
                          "choosing on the test data; docs/selection.md)", "run", resume="may_change")
    keep_best: bool = setting(False, SWITCH, "also keep the snapshot of best val mIoU, as selected_oracle.pth (the "
                              "older name of --select oracle; it was best.pth)", "run", resume="may_change")
    skip_nonfinite: int = setting(0, NON_NEGATIVE_INT, "tolerate this many steps with a NaN/Inf loss before stopping",
                                  "run", resume="may_change")
    allow_pickle: bool = setting(False, SWITCH, "UNSAFE: accept whole pickled models (runs code from the file)",
                                 "run", resume="may_change")
    progress: bool = setting(True, SWITCH, "show a progress bar", "run", resume="invocation")
    debug: bool = setting(False, SWITCH, "show tracebacks instead of one-line errors", "run", resume="invocation")
    # not settings: what the command line was
    script: str = ""
    argv: tuple[str, ...] = ()   # this invocation's flags
    given: tuple[str, ...] = ()  # the settings they set

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
        for key, value in data.items():
            if isinstance(value, tuple):
                data[key] = list(value)
        return data

    @classmethod
    def from_dict(cls, data: Mapping) -> TrainConfig:
        """Inverse of `to_dict` (a saved run's settings): older names read under their names, older values in
        their current form, unknown keys ignored."""
        renamed = older_names(cls)
        data = {renamed.get(k, k): v for k, v in data.items()}
        kwargs: dict[str, Any] = {}
        for d in declared(cls):
            if d.name in data:
                try:
                    kwargs[d.name] = d.setting.kind.read(data[d.name])
                except ValueError:
                    kwargs[d.name] = data[d.name]  # as saved: a resume names it if it differs from this run's
        for name in ("script", "argv", "given"):
            if name in data:
                kwargs[name] = data[name] if name == "script" else tuple(data[name])
        return cls(**kwargs)


def offered_by(distill: bool):
    """Whether a script (the distillation one when `distill`) offers a declared setting."""
    def offered(d: Declared) -> bool:
        return distill or not d.setting.distill_only

    return offered


def parse_config(constants: Mapping[str, Any], argv: Sequence[str] | None, *, prog: str, description: str,
                 distill: bool) -> TrainConfig:
    """The resolved `TrainConfig` of a training script: its UPPER-CASE `constants` (pass `globals()`), then `argv`.

    An UPPER-CASE constant that is not a setting, or a value a flag would refuse, is a `ConfigError`.
    With --resume, the run's saved settings are merged in, and checked, when the run starts (utils/resume.py).
    """
    offered = offered_by(distill)
    defaults = TrainConfig(**read_constants(TrainConfig, constants, RETIRED_CONSTANTS, offered))
    parser = ArgumentParser(prog=prog, description=description, formatter_class=DefaultsHelpFormatter)
    add_flags(parser, TrainConfig, defaults, offered)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = vars(parser.parse_args(argv))
    given = given_on_command_line(parser, argv, list(args))
    cfg = dataclasses.replace(defaults, **absolute_paths(args, TrainConfig), script=prog, argv=tuple(argv),
                              given=tuple(sorted(given)))
    if cfg.pretrained in ("none", "None", ""):
        cfg.pretrained = "none"
    if not cfg.resume:
        check_config(cfg, distill)
    return cfg


def flag_of(name: str) -> str:
    """The command-line flag of setting `name` (e.g. --learning-rate-D)."""
    return next(d.flag for d in declared(TrainConfig) if d.name == name)


def check_config(cfg: TrainConfig, distill: bool) -> None:
    """The checks that involve several settings (`distill`: of the distillation script); a `ConfigError` names
    the flags."""
    if cfg.num_steps_stop > cfg.num_steps:
        cfg.num_steps_stop = cfg.num_steps
    if distill and not cfg.teacher:
        raise ConfigError("--teacher is required: the path of the teacher's final.pth")
    if cfg.paradigm == "sequential" and cfg.distill and cfg.num_steps_target <= 0:
        raise ConfigError("--paradigm sequential needs --num-steps-target > 0")
    if cfg.adapt:  # the discriminators see the outputs at the input sizes
        for name in ("input_size", "input_size_target"):
            w, h = getattr(cfg, name)
            if min(w, h) < MIN_SIZE:
                raise ConfigError(f"{flag_of(name)} {w},{h}: the discriminators need at least {MIN_SIZE}x{MIN_SIZE} "
                                  "(or train without them: --lambda-adv-aux 0 --lambda-adv-main 0)")


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
