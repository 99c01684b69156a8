"""What DistributedDataParallel must be told about the objective: whether the synced backward skips parameters."""
from __future__ import annotations

from collections.abc import Iterable

from utils.objective import AUX, MAIN, Objective


def synced_pass_skips_a_head(objective: Objective) -> bool:
    """True when the backward that all-reduces the net's gradients leaves an output head out.

    Then DDP must look for unused parameters: a head left out (the aux head, or the main head with the
    levels after the aux tap) gets no gradient in that backward, and DDP would wait for it forever
    ("Expected to have finished reduction"). A term that does not declare its heads counts as reading
    none, which errs on the safe side.
    """
    return objective.synced_heads != {AUX, MAIN}


def find_unused_parameters(objectives: Iterable[Objective]) -> bool:
    """DDP's `find_unused_parameters` for a net trained through these phases' objectives.

    On only where needed: it costs a walk over the autograd graph per step, and DDP warns at every run
    that turns it on without needing it.
    """
    return any(synced_pass_skips_a_head(o) for o in objectives)
