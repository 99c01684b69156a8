"""The objective of DAKD in one place: its loss terms, their weights and options, and the paradigms.

A *term* is one function of what a batch gives (the student's outputs, labels, the teacher's outputs,
the discriminators); its entry names the weights that multiply it. A *knob* is a weight or an option of
the terms: its name is used unchanged by the training scripts' constants (upper case), the flags
(`--lambda-kl`), config.json, the checkpoints, the resume checks and log.jsonl (terms are logged as
`<term>_src` / `<term>_tgt`). A *phase* lists which terms apply on source and on target batches; a
*paradigm* is a sequence of phases. The formulas: docs/method.md#losses; how to add a term or a
paradigm: docs/extending.md.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Optional, Union

from torch import Tensor

from utils.loss import GAN_MODES, SOURCE_LABEL, adversarial_loss, kl_distill, mse_distill, pseudo_label_loss, seg_loss

AUX, MAIN = 0, 1          # positions in the (aux, main) pair the networks return
LEVELS = ("aux", "main")  # names of those positions (D1 judges aux, D2 main)
DOMAINS = {"source": "src", "target": "tgt"}  # the suffix of each domain's terms in log.jsonl


# --- terms ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TermInputs:
    """What a term may read: the student's (aux, main) log-probabilities and, when it applies, the rest."""

    student: tuple[Tensor, Tensor]
    knobs: Mapping[str, Any]
    labels: Optional[Tensor] = None                     # source batches
    teacher: Optional[tuple[Tensor, Tensor]] = None     # distillation runs, no gradient
    discriminate: Optional[Callable[[int, Tensor], Tensor]] = None  # level, log-probs -> frozen D's logits


def seg_main(x: TermInputs) -> Tensor:
    """Cross entropy of the main head against the labels."""
    return seg_loss(x.student[MAIN], x.labels)


def seg_aux(x: TermInputs) -> Tensor:
    """Cross entropy of the aux head against the labels."""
    return seg_loss(x.student[AUX], x.labels)


def adv_aux(x: TermInputs) -> Tensor:
    """Fool D1: its verdict on the aux output against the *source* label."""
    return adversarial_loss(x.discriminate(AUX, x.student[AUX]), SOURCE_LABEL, x.knobs["gan"])


def adv_main(x: TermInputs) -> Tensor:
    """Fool D2: its verdict on the main output against the *source* label."""
    return adversarial_loss(x.discriminate(MAIN, x.student[MAIN]), SOURCE_LABEL, x.knobs["gan"])


def kl_main(x: TermInputs) -> Tensor:
    """KL(teacher || student) on the main heads, per pixel, summed over classes, mean over pixels."""
    return kl_distill(x.student[MAIN], x.teacher[MAIN], x.knobs["kd_temperature"])


def kl_aux(x: TermInputs) -> Tensor:
    """KL(teacher || student) on the aux heads."""
    return kl_distill(x.student[AUX], x.teacher[AUX], x.knobs["kd_temperature"])


def mse(x: TermInputs) -> Tensor:
    """Mean squared error between the aux heads' class probabilities (docs/method.md#losses says why)."""
    return mse_distill(x.student[AUX].exp(), x.teacher[AUX].exp())


def pseudo(x: TermInputs) -> Tensor:
    """Cross entropy of the main head against the teacher's arg-max (optionally only confident pixels)."""
    return pseudo_label_loss(x.student[MAIN], x.teacher[MAIN], threshold=x.knobs["pseudo_threshold"])


@dataclass(frozen=True)
class Term:
    """A loss term: its log name, its function, and the knobs whose product weighs it."""

    name: str
    fn: Callable[[TermInputs], Tensor]
    weights: tuple[str, ...] = ()
    heads: tuple[int, ...] = ()          # the student's outputs it reads (AUX, MAIN): DDP must know them
    teacher: bool = False                # reads the teacher's outputs
    discriminator: Optional[int] = None  # the level (AUX/MAIN) whose discriminator it fools


TERMS: dict[str, Term] = {t.name: t for t in (
    Term("seg_main", seg_main, (), heads=(MAIN,)),
    Term("seg_aux", seg_aux, ("lambda_seg",), heads=(AUX,)),
    Term("adv_aux", adv_aux, ("lambda_adv_aux",), heads=(AUX,), discriminator=AUX),
    Term("adv_main", adv_main, ("lambda_adv_main",), heads=(MAIN,), discriminator=MAIN),
    Term("kl_main", kl_main, ("lambda_kl",), heads=(MAIN,), teacher=True),
    Term("kl_aux", kl_aux, ("lambda_kl", "lambda_seg"), heads=(AUX,), teacher=True),
    Term("mse", mse, ("lambda_mse",), heads=(AUX,), teacher=True),
    Term("pseudo", pseudo, ("lambda_pseudo",), heads=(MAIN,), teacher=True),
)}


# --- the original code's forms (--objective original) ---------------------------------------------
def kl_as_original(x: TermInputs) -> Tensor:
    """The original KL term: `kl_div` with a log-probability target was exactly 0 under the PyTorch of its
    day (NaN under today's); a zero that keeps the graph, so the term adds nothing, as it did."""
    return x.student[MAIN].sum() * 0.0


def mse_as_original(x: TermInputs) -> Tensor:
    """The original MSE term: on the aux heads' log-probabilities, not their probabilities."""
    return mse_distill(x.student[AUX], x.teacher[AUX])


# objective presets (--objective): replacement functions by term name
FORMS: dict[str, dict[str, Callable]] = {
    "corrected": {},
    "original": {"kl_main": kl_as_original, "kl_aux": kl_as_original, "mse": mse_as_original},
}


# --- knobs: the weights and options of the terms ---------------------------------------------------
def _positive(value: float) -> Optional[str]:
    return None if value > 0 else "a positive value"


def _unit_interval(value: float) -> Optional[str]:
    return None if 0.0 <= value < 1.0 else "a value in [0, 1)"


@dataclass(frozen=True)
class Knob:
    """A weight or an option of the objective, with its default and help; `aliases` are its older names."""

    name: str
    default: Union[float, str]
    help: str
    aliases: tuple[str, ...] = ()
    teacher: bool = False                       # only distillation runs have it (a flag of their script)
    choices: tuple[str, ...] = ()               # for a text option
    check: Optional[Callable[[float], Optional[str]]] = None  # what is expected when a value is refused


KNOBS: tuple[Knob, ...] = (
    Knob("lambda_seg", 0.1, "weight of the auxiliary head: its segmentation term and its KL term"),
    Knob("lambda_adv_aux", 0.0002, "adversarial weight on the aux level, D1 (0 with --lambda-adv-main 0: "
         "no target batch, the source-only baseline)", aliases=("lambda_adv_target1",)),
    Knob("lambda_adv_main", 0.001, "adversarial weight on the main level, D2", aliases=("lambda_adv_target2",)),
    Knob("gan", "Vanilla", "adversarial loss: BCE with logits (Vanilla) or least squares (LS)", choices=GAN_MODES),
    Knob("lambda_kl", 0.1, "weight of KL(teacher || student) on the main head (and lambda_seg x on the aux head)",
         teacher=True),
    Knob("lambda_mse", 0.01, "weight of the MSE between the aux heads' class probabilities", teacher=True),
    Knob("lambda_pseudo", 1.0, "weight of the cross entropy against the teacher's arg-max (pseudo-teacher labels)",
         aliases=("lambda_targetce",), teacher=True),
    Knob("lambda_target", 1.0, "weight of all distillation terms on target images",
         aliases=("target_distill",), teacher=True),
    Knob("kd_temperature", 1.0, "temperature T of the KL terms (multiplied by T^2)", teacher=True, check=_positive),
    Knob("pseudo_threshold", 0.0, "ignore pixels whose teacher confidence is below this (0: every pixel)",
         teacher=True, check=_unit_interval),
    Knob("objective", "corrected", "forms of the terms: 'corrected' (the paper's formulas) or 'original' (as the "
         "original code computed them: KL identically 0, MSE on log-probabilities; docs/method.md#original)",
         teacher=True, choices=tuple(FORMS)),
)
KNOB = {k.name: k for k in KNOBS}
ALIASES = {alias: k.name for k in KNOBS for alias in k.aliases}  # older name -> name


# --- phases and paradigms -------------------------------------------------------------------------
SEGMENTATION = ("seg_main", "seg_aux")
ADVERSARIAL = ("adv_aux", "adv_main")
DISTILLATION = ("kl_main", "kl_aux", "mse", "pseudo")


@dataclass(frozen=True)
class PhaseSpec:
    """A stretch of training: the terms on source and on target batches, and the config field of its length."""

    name: str
    source: tuple[str, ...]
    target: tuple[str, ...]
    steps: str = "num_steps"  # TrainConfig field: the length of this phase's poly schedule


ADAPTATION = (PhaseSpec("adapt", SEGMENTATION, ADVERSARIAL),)  # teacher and student scripts (no teacher)
PARADIGMS: dict[str, tuple[PhaseSpec, ...]] = {
    "source": (PhaseSpec("source", SEGMENTATION + DISTILLATION, ADVERSARIAL),),                     # (a)
    "target": (PhaseSpec("target", SEGMENTATION, ADVERSARIAL + DISTILLATION),),                     # (b)
    "both": (PhaseSpec("both", SEGMENTATION + DISTILLATION, ADVERSARIAL + DISTILLATION),),          # (c)
    "sequential": (PhaseSpec("both", SEGMENTATION + DISTILLATION, ADVERSARIAL + DISTILLATION),      # (d)
                   PhaseSpec("target", SEGMENTATION, ADVERSARIAL + DISTILLATION, steps="num_steps_target")),
}


# --- one phase's objective, ready to evaluate ------------------------------------------------------
def term_weight(term: Term, domain: str, knobs: Mapping[str, Any]) -> float:
    """The factor of `term` on `domain` batches: its weights' product, times lambda_target for a teacher
    term on target images (the distillation terms on target are weighted as a group)."""
    weight = 1.0
    for name in term.weights:
        weight *= float(knobs[name])
    if term.teacher and domain == "target":
        weight *= float(knobs["lambda_target"])
    return weight


@dataclass(frozen=True)
class Objective:
    """The weighted terms of one phase on source and on target batches (terms of weight 0 are left out)."""

    source: tuple[tuple[Term, float], ...]
    target: tuple[tuple[Term, float], ...]
    knobs: Mapping[str, Any]

    def terms(self, domain: str) -> tuple[tuple[Term, float], ...]:
        """(term, weight) pairs of `domain` ('source' or 'target')."""
        return self.source if domain == "source" else self.target

    @property
    def uses_target(self) -> bool:
        """True when target batches carry any term (else no target batch is drawn)."""
        return bool(self.target)

    @property
    def needs_teacher(self) -> bool:
        """True when a term reads the teacher's outputs."""
        return any(t.teacher for t, _ in self.source + self.target)

    @property
    def synced_heads(self) -> frozenset[int]:
        """The heads read by the pass whose backward all-reduces the net's gradients under DDP (the target
        pass when there is one: the step accumulates the source pass without syncing)."""
        terms = self.target if self.uses_target else self.source
        return frozenset(h for t, _ in terms for h in t.heads)

    @property
    def adversarial_levels(self) -> tuple[int, ...]:
        """The levels (AUX, MAIN) whose discriminator is trained in this phase."""
        return tuple(sorted(t.discriminator for t, _ in self.target if t.discriminator is not None))


def build_objective(spec: PhaseSpec, knobs: Mapping[str, Any], forms: Mapping[str, Callable] | None = None,
                    terms: Mapping[str, Term] | None = None) -> Objective:
    """The objective of phase `spec` with the knob values `knobs` (a TrainConfig's, see `knob_values`).

    `forms` replaces term functions by name (default: the preset named by knobs['objective']); `terms`
    is the term table (default TERMS).
    """
    table = TERMS if terms is None else terms
    forms = FORMS[knobs.get("objective", "corrected")] if forms is None else forms

    def weighted(names: tuple[str, ...], domain: str) -> tuple[tuple[Term, float], ...]:
        out = []
        for name in names:
            term = table[name]
            if name in forms:
                term = dataclasses.replace(term, fn=forms[name])
            weight = term_weight(term, domain, knobs)
            if weight != 0:
                out.append((term, weight))
        return tuple(out)

    return Objective(weighted(spec.source, "source"), weighted(spec.target, "target"), dict(knobs))


def knob_values(config: Any) -> dict[str, Any]:
    """Every knob's value as held by `config` (an object with one attribute per knob)."""
    return {k.name: getattr(config, k.name) for k in KNOBS}
