"""Checkpoint-selection criteria: the log.jsonl keys of the label-free signals, each one's direction, and the
rule that picks a snapshot by one of them (docs/selection.md).

This is the one place that names them: the training engine logs under these keys and keeps the snapshot
each criterion picks with `improves`; `python -m utils.select` reads the same keys and applies the same
rule offline. Every direction was fixed from the signal's definition, before any target label was looked
at; none may be tuned on the val split. Imports nothing from torch, model/, dataset/ or the engine.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

# log.jsonl / TensorBoard keys written at every validation
ENTROPY = "sel/entropy"
DIVERSITY = "sel/diversity"
SND_MAIN = "sel/snd_main"
SND_AUX = "sel/snd_aux"
AGREE_HEADS = "sel/agree_heads"
AGREE_TEACHER = "sel/agree_teacher"
SOURCE_MIOU = "sel/source_mIoU"
ORACLE = "val/mIoU"  # the target val score: labels a UDA user does not have
ORACLE_16 = "val/mIoU16"  # a SYNTHIA-trained run's val score on SYNTHIA's 16 classes: its oracle where logged
ORACLE_KEYS = (ORACLE_16, ORACLE)  # in order of preference
# costs of a validation's selection passes (seconds), logged beside the signals; not criteria
SIGNAL_SECONDS = "sel/seconds"
SOURCE_SECONDS = "sel/source_seconds"
SIGNAL_IMAGES = "sel/images"

LAST = "last"
RANDOM = "random"


@dataclass(frozen=True)
class Criterion:
    """A way to choose a snapshot: the logged value it reads and whether higher or lower is better."""

    name: str  # what `--select` and utils.select call it
    key: str  # its log.jsonl key
    higher_is_better: bool
    label_free: bool  # False only for the oracle
    summary: str

    @property
    def direction(self) -> str:
        """'max' or 'min'."""
        return "max" if self.higher_is_better else "min"


CRITERIA: dict[str, Criterion] = {c.name: c for c in (
    Criterion("source_mIoU", SOURCE_MIOU, True, True, "mIoU on source frames training never draws"),
    Criterion("entropy", ENTROPY, False, True, "mean pixel entropy of the main head / log C on the target subset"),
    Criterion("diversity", DIVERSITY, True, True, "entropy of the mean class distribution / log C (target subset)"),
    Criterion("snd_main", SND_MAIN, True, True, "soft neighbourhood density of the main head (Saito et al. 2021)"),
    Criterion("snd_aux", SND_AUX, True, True, "soft neighbourhood density of the aux head (Saito et al. 2021)"),
    Criterion("agree_heads", AGREE_HEADS, True, True, "fraction of target pixels where aux and main arg-max agree"),
    Criterion("agree_teacher", AGREE_TEACHER, True, True,
              "fraction of target pixels where the student's and the teacher's arg-max agree"),
    Criterion("oracle", ORACLE, True, False, "target val mIoU (chooses on the test data: optimistic)"),
)}
LABEL_FREE: tuple[str, ...] = tuple(name for name, c in CRITERIA.items() if c.label_free)
SELECT_CHOICES: tuple[str, ...] = (LAST, *CRITERIA)  # the values a `--select` flag accepts


def value_of(record: dict, key: str) -> float:
    """The finite number a log record holds under `key`, else NaN (absent, or logged as 'nan'/'inf')."""
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value) if math.isfinite(value) else math.nan


def oracle_key(keys: Iterable[str]) -> str:
    """The key the oracle reads among the logged `keys`: `val/mIoU16` where it is logged (a SYNTHIA-trained
    run, which the field scores on SYNTHIA's 16 classes), else `val/mIoU`."""
    keys = set(keys)
    return next((k for k in ORACLE_KEYS if k in keys), ORACLE)


def criterion_value(criterion: Criterion, record: dict) -> float:
    """The value `criterion` reads in a log record (`value_of`; the oracle's key per `oracle_key`)."""
    return value_of(record, oracle_key(record) if criterion.key == ORACLE else criterion.key)


def improves(criterion: Criterion, value: float, best: float | None) -> bool:
    """Whether a snapshot scoring `value` replaces the one kept so far (scoring `best`, None when none yet).

    A tie goes to the newer snapshot (the one trained longer, as `last` would choose); a NaN never wins.
    """
    if not math.isfinite(value):
        return False
    if best is None or not math.isfinite(best):
        return True
    return value >= best if criterion.higher_is_better else value <= best


def checkpoint_name(name: str) -> str:
    """The file a run keeps the snapshot chosen by criterion `name` in: `selected_<name>.pth`.

    The oracle's file says so (`selected_oracle.pth`; before selection existed, `--keep-best` wrote it as
    `best.pth`). `last` needs no file of its own: it is `final.pth`.
    """
    if name == LAST:
        return "final.pth"
    if name not in CRITERIA:
        raise ValueError(f"unknown criterion {name!r}; expected one of {', '.join(SELECT_CHOICES)}")
    return f"selected_{name}.pth"
