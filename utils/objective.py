"""The objective of DAKD in one place: its loss terms, their weights and options, and the paradigms.

A *term* is one function of what a batch gives (the student's outputs, labels, the teacher's outputs,
the discriminators); its entry names the weights that multiply it. A *knob* is a weight or an option of
the terms, declared once in `Knobs`: its name is used unchanged by the training scripts' constants (upper
case), the flags (`--lambda-kl`), config.json, the checkpoints, the resume checks and log.jsonl (terms are
logged as `<term>_src` / `<term>_tgt`). A *form* replaces term functions by name (the original code's
terms). A *phase* lists which terms apply on source and on target batches; a *paradigm* is a sequence
of phases. What each term reads (which heads, the teacher, a discriminator) is found by evaluating it,
never declared. The formulas: docs/method.md#losses; how to add a term or a paradigm: docs/extending.md.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Optional

import torch
from torch import Tensor

from model import AUX, MAIN
from utils.loss import GAN_MODES, SOURCE_LABEL, adversarial_loss, kl_distill, mse_distill, pseudo_label_loss, seg_loss
from utils.settings import POSITIVE, UNIT_INTERVAL, WEIGHT, choice, declared, setting

LEVELS = ("aux", "main")  # names of the positions AUX, MAIN of a net's output pair (D1 judges aux, D2 main)
DOMAINS = {"source": "src", "target": "tgt"}  # the suffix of each domain's terms in log.jsonl


# --- terms ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TermInputs:
    """What a term may read: the student's (aux, main) log-probabilities and, when it applies, the rest."""

    student: tuple[Tensor, Tensor]
    knobs: Knobs
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
    return adversarial_loss(x.discriminate(AUX, x.student[AUX]), SOURCE_LABEL, x.knobs.gan)


def adv_main(x: TermInputs) -> Tensor:
    """Fool D2: its verdict on the main output against the *source* label."""
    return adversarial_loss(x.discriminate(MAIN, x.student[MAIN]), SOURCE_LABEL, x.knobs.gan)


def kl_main(x: TermInputs) -> Tensor:
    """KL(teacher || student) on the main heads, per pixel, summed over classes, mean over pixels."""
    return kl_distill(x.student[MAIN], x.teacher[MAIN], x.knobs.kd_temperature)


def kl_aux(x: TermInputs) -> Tensor:
    """KL(teacher || student) on the aux heads."""
    return kl_distill(x.student[AUX], x.teacher[AUX], x.knobs.kd_temperature)


def mse(x: TermInputs) -> Tensor:
    """Mean squared error between the aux heads' class probabilities (docs/method.md#losses says why)."""
    return mse_distill(x.student[AUX].exp(), x.teacher[AUX].exp())


def pseudo(x: TermInputs) -> Tensor:
    """Cross entropy of the main head against the teacher's arg-max (optionally only confident pixels)."""
    return pseudo_label_loss(x.student[MAIN], x.teacher[MAIN], threshold=x.knobs.pseudo_threshold)


@dataclass(frozen=True)
class Term:
    """A loss term: its log name, its function, the knobs whose product weighs it, and the further knobs
    that weigh it on target batches."""

    name: str
    fn: Callable[[TermInputs], Tensor]
    weights: tuple[str, ...] = ()
    on_target: tuple[str, ...] = ()


TERMS: dict[str, Term] = {t.name: t for t in (
    Term("seg_main", seg_main),
    Term("seg_aux", seg_aux, ("lambda_seg",)),
    Term("adv_aux", adv_aux, ("lambda_adv_aux",)),
    Term("adv_main", adv_main, ("lambda_adv_main",)),
    Term("kl_main", kl_main, ("lambda_kl",), on_target=("lambda_target",)),
    Term("kl_aux", kl_aux, ("lambda_kl", "lambda_seg"), on_target=("lambda_target",)),
    Term("mse", mse, ("lambda_mse",), on_target=("lambda_target",)),
    Term("pseudo", pseudo, ("lambda_pseudo",), on_target=("lambda_target",)),
)}


# --- forms: the terms as the original code computed them (--form original) -------------------------
def kl_as_original(x: TermInputs) -> Tensor:
    """The original KL term: `kl_div` with a log-probability target was exactly 0 under the PyTorch of its
    day (NaN under today's); a zero that keeps the graph, so the term adds nothing, as it did."""
    return x.student[MAIN].sum() * 0.0


def mse_as_original(x: TermInputs) -> Tensor:
    """The original MSE term: on the aux heads' log-probabilities, not their probabilities."""
    return mse_distill(x.student[AUX], x.teacher[AUX])


# form name -> replacement functions by term name
FORMS: dict[str, dict[str, Callable[[TermInputs], Tensor]]] = {
    "paper": {},
    "original": {"kl_main": kl_as_original, "kl_aux": kl_as_original, "mse": mse_as_original},
}


# --- knobs: the weights and options of the terms ---------------------------------------------------
knob = partial(setting, group="objective")


@dataclass
class Knobs:
    """The weights and options of the terms, each declared once (its default, kind and help); the
    distillation script alone offers those marked `distill_only`. `aliases` are older names."""

    lambda_seg: float = knob(0.1, WEIGHT, "weight of the auxiliary head: its segmentation term and its KL term")
    lambda_adv_aux: float = knob(0.0002, WEIGHT, "adversarial weight on the aux level, D1 (0 with "
                                 "--lambda-adv-main 0: no target batch, the source-only baseline)",
                                 aliases=("lambda_adv_target1",))
    lambda_adv_main: float = knob(0.001, WEIGHT, "adversarial weight on the main level, D2",
                                  aliases=("lambda_adv_target2",))
    gan: str = knob("Vanilla", choice(*GAN_MODES), "adversarial loss: BCE with logits (Vanilla) or least squares (LS)")
    lambda_kl: float = knob(0.1, WEIGHT, "weight of KL(teacher || student) on the main head (and lambda_seg x on "
                            "the aux head)", distill_only=True)
    lambda_mse: float = knob(0.01, WEIGHT, "weight of the MSE between the aux heads' class probabilities",
                             distill_only=True)
    lambda_pseudo: float = knob(1.0, WEIGHT, "weight of the cross entropy against the teacher's arg-max "
                                "(pseudo-teacher labels)", aliases=("lambda_targetce",), distill_only=True)
    lambda_target: float = knob(1.0, WEIGHT, "weight of all distillation terms on target images",
                                aliases=("target_distill",), distill_only=True)
    kd_temperature: float = knob(1.0, POSITIVE, "temperature T of the KL terms (multiplied by T^2)",
                                 distill_only=True)
    pseudo_threshold: float = knob(0.0, UNIT_INTERVAL, "ignore pixels whose teacher confidence is below this "
                                   "(0: every pixel)", distill_only=True)
    form: str = knob("paper", choice(*FORMS, older={"corrected": "paper"}), "the terms' form: 'paper' (the "
                     "paper's formulas) or 'original' (as the original code computed them: KL identically 0, "
                     "MSE on log-probabilities; docs/method.md#the-original-objective)",
                     aliases=("objective",), distill_only=True)


def knobs_of(settings: Any) -> Knobs:
    """The knobs held by `settings` (any object with one attribute per knob, e.g. a TrainConfig)."""
    return Knobs(**{d.name: getattr(settings, d.name) for d in declared(Knobs)})


# --- phases and paradigms -------------------------------------------------------------------------
SEGMENTATION = ("seg_main", "seg_aux")
ADVERSARIAL = ("adv_aux", "adv_main")
DISTILLATION = ("kl_main", "kl_aux", "mse", "pseudo")


def main_length(settings: Any) -> int:
    """Length of a first phase's poly schedule: --num-steps."""
    return settings.num_steps


def target_phase_length(settings: Any) -> int:
    """Length of the target-only phase of the sequential paradigm: --num-steps-target."""
    return settings.num_steps_target


@dataclass(frozen=True)
class PhaseSpec:
    """A stretch of training: the terms on source and on target batches, and the length of its schedule."""

    name: str
    source: tuple[str, ...]
    target: tuple[str, ...]
    length: Callable[[Any], int] = main_length  # settings -> steps of this phase's poly schedule


ADAPTATION = (PhaseSpec("adapt", SEGMENTATION, ADVERSARIAL),)  # teacher and student scripts (no teacher)
PARADIGMS: dict[str, tuple[PhaseSpec, ...]] = {
    "source": (PhaseSpec("source", SEGMENTATION + DISTILLATION, ADVERSARIAL),),                     # (a)
    "target": (PhaseSpec("target", SEGMENTATION, ADVERSARIAL + DISTILLATION),),                     # (b)
    "both": (PhaseSpec("both", SEGMENTATION + DISTILLATION, ADVERSARIAL + DISTILLATION),),          # (c)
    "sequential": (PhaseSpec("both", SEGMENTATION + DISTILLATION, ADVERSARIAL + DISTILLATION),      # (d)
                   PhaseSpec("target", SEGMENTATION, ADVERSARIAL + DISTILLATION, length=target_phase_length)),
}


# --- what a term reads, found by evaluating it ------------------------------------------------------
@dataclass(frozen=True)
class Reads:
    """What a term's value depends on: the student heads it has a gradient path to, whether it reads the
    teacher's outputs, and the levels whose discriminator it asks."""

    heads: frozenset[int]
    teacher: bool
    discriminators: frozenset[int]


class _Watched(tuple):
    """The teacher's outputs in a probe: notes that a term looked at them."""

    def __new__(cls, items, seen: list):
        obj = super().__new__(cls, items)
        obj.seen = seen
        return obj

    def __getitem__(self, index):
        self.seen.append(index)
        return super().__getitem__(index)

    def __iter__(self) -> Iterator:
        self.seen.append("all")
        return super().__iter__()


def what_it_reads(fn: Callable[[TermInputs], Tensor], knobs: Knobs, domain: str, num_classes: int = 19) -> Reads:
    """Evaluate `fn` once on small random stand-ins of a `domain` batch's inputs and see what it reads.

    Under DistributedDataParallel the backward that all-reduces the net's gradients must reach every
    parameter, or DDP must look for unused ones: that follows from the heads found here, for any term.
    """
    g = torch.Generator().manual_seed(0)

    def log_probs() -> Tensor:
        return torch.randn(1, num_classes, 8, 8, generator=g).log_softmax(dim=1)

    student = (log_probs().requires_grad_(), log_probs().requires_grad_())
    teacher_seen: list = []
    asked: set[int] = set()

    def discriminate(level: int, student_log_probs: Tensor) -> Tensor:
        asked.add(level)
        return student_log_probs.exp().mean(dim=1, keepdim=True)

    labels = torch.randint(0, num_classes, (1, 8, 8), generator=g) if domain == "source" else None
    inputs = TermInputs(student, knobs, labels, _Watched((log_probs(), log_probs()), teacher_seen), discriminate)
    value = fn(inputs)
    grads = torch.autograd.grad(value, student, allow_unused=True) if value.requires_grad else (None, None)
    return Reads(frozenset(level for level, grad in enumerate(grads) if grad is not None), bool(teacher_seen),
                 frozenset(asked))


# --- one phase's objective, ready to evaluate ------------------------------------------------------
@dataclass(frozen=True)
class ActiveTerm:
    """A term as one phase uses it on one domain: its log name, function (in the run's form), weight, reads."""

    name: str
    fn: Callable[[TermInputs], Tensor]
    weight: float
    reads: Reads


def term_weight(term: Term, domain: str, knobs: Knobs) -> float:
    """The factor of `term` on `domain` batches: the product of its weights (and of `on_target` on target)."""
    weight = 1.0
    for name in term.weights + (term.on_target if domain == "target" else ()):
        weight *= float(getattr(knobs, name))
    return weight


@dataclass(frozen=True)
class Objective:
    """The weighted terms of one phase on source and on target batches (terms of weight 0 are left out)."""

    source: tuple[ActiveTerm, ...]
    target: tuple[ActiveTerm, ...]
    knobs: Knobs

    def terms(self, domain: str) -> tuple[ActiveTerm, ...]:
        """The active terms of `domain` ('source' or 'target')."""
        return self.source if domain == "source" else self.target

    @property
    def uses_target(self) -> bool:
        """True when target batches carry any term (else no target batch is drawn)."""
        return bool(self.target)

    def reads_teacher(self, domain: str) -> bool:
        """True when a term of `domain` reads the teacher's outputs (else the teacher is not run)."""
        return any(t.reads.teacher for t in self.terms(domain))

    @property
    def needs_teacher(self) -> bool:
        """True when any term reads the teacher's outputs."""
        return self.reads_teacher("source") or self.reads_teacher("target")

    @property
    def synced_heads(self) -> frozenset[int]:
        """The heads read by the pass whose backward all-reduces the net's gradients under DDP (the target
        pass when there is one: the step accumulates the source pass without syncing)."""
        return frozenset().union(*(t.reads.heads for t in self.terms("target" if self.uses_target else "source")))

    @property
    def adversarial_levels(self) -> tuple[int, ...]:
        """The levels (AUX, MAIN) whose discriminator is trained in this phase."""
        return tuple(sorted(frozenset().union(*(t.reads.discriminators for t in self.target))))


def build_objective(spec: PhaseSpec, knobs: Knobs, num_classes: int = 19,
                    forms: Mapping[str, Callable] | None = None, terms: Mapping[str, Term] | None = None) -> Objective:
    """The objective of phase `spec` with the knob values `knobs`.

    `forms` replaces term functions by name (default: the form named by `knobs.form`); `terms` is the term
    table (default TERMS). Each term is evaluated once on stand-in inputs to learn what it reads.
    """
    table = TERMS if terms is None else terms
    forms = FORMS[knobs.form] if forms is None else forms

    def active(names: tuple[str, ...], domain: str) -> tuple[ActiveTerm, ...]:
        out = []
        for name in names:
            term = table[name]
            fn = forms.get(name, term.fn)
            weight = term_weight(term, domain, knobs)
            if weight != 0:
                out.append(ActiveTerm(name, fn, weight, what_it_reads(fn, knobs, domain, num_classes)))
        return tuple(out)

    return Objective(active(spec.source, "source"), active(spec.target, "target"), knobs_of(knobs))
