"""What DistributedDataParallel must be told about the objective: whether the synced backward skips parameters."""
from __future__ import annotations

from collections.abc import Iterable

from utils.steps import LossWeights


def synced_pass_skips_a_head(w: LossWeights) -> bool:
    """True when the backward that all-reduces the net's gradients leaves one output head out.

    TrainStep accumulates the source pass under `no_sync` whenever a target pass follows, so the synced
    backward is the target pass. That pass uses the aux head only through the aux adversarial term or
    target distillation, and the main head (with the levels after the aux layer) only through the main
    adversarial term or target distillation. Without a target pass the synced backward is the source
    pass, which uses both heads.
    """
    if not (w.adapt or w.distill_target):
        return False
    return not w.distill_target and min(w.lambda_adv) <= 0


def find_unused_parameters(phases: Iterable[LossWeights]) -> bool:
    """DDP's `find_unused_parameters` for a net trained through these phases' objectives.

    On only where needed: it costs a walk over the autograd graph and one small extra all-reduce per
    step, and DDP warns at every run that turns it on without needing it.
    """
    return any(synced_pass_skips_a_head(w) for w in phases)
