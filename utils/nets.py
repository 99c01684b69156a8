"""The networks of a training run: the segmentation net, D1 and D2, the frozen teacher, and their DDP wrappers."""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from model import (
    AUX,
    INITS,
    MAIN,
    Discriminator,
    build_from_checkpoint,
    build_seg_model,
    fetch_pretrained,
    load_weights,
    published_archs,
)
from utils.config import TrainConfig
from utils.errors import CheckpointError, ConfigError
from utils.objective import Objective
from utils.runtime import DistInfo, compile_nets, once_per_node
from utils.steps import freeze_teacher


def build_nets(cfg: TrainConfig, device: torch.device, info: DistInfo):
    """The segmentation net (initialised per --pretrained / --restore-from), D1, D2 and the teacher (or None)."""
    pretrained = None if cfg.pretrained == "none" or cfg.restore_from or cfg.resume else cfg.pretrained
    if pretrained in INITS and cfg.arch in published_archs(pretrained) and info.enabled:
        once_per_node(info, device, lambda: fetch_pretrained(cfg.arch, init=pretrained))  # once per node
    try:
        net = build_seg_model(cfg.arch, num_classes=cfg.num_classes, aux_layer=cfg.aux_layer, pretrained=pretrained,
                              zero_residual=cfg.zero_init_residual)
    except CheckpointError as err:
        raise CheckpointError(f"--pretrained {cfg.pretrained}: {err} (--pretrained PATH takes a downloaded file; "
                              "--pretrained none starts from random weights)") from err
    if cfg.restore_from and not cfg.resume:
        load_weights(net, cfg.restore_from, allow_pickle=cfg.allow_pickle)
    discs = (Discriminator(cfg.num_classes), Discriminator(cfg.num_classes))
    teacher = None
    if cfg.distill:
        teacher = build_from_checkpoint(cfg.teacher, allow_pickle=cfg.allow_pickle)
        if teacher.num_classes != cfg.num_classes:
            raise CheckpointError(f"--teacher {cfg.teacher}: the teacher predicts {teacher.num_classes} classes, "
                                  f"the student {cfg.num_classes}")
        freeze_teacher(teacher.to(device))
    net, discs = net.to(device), tuple(d.to(device) for d in discs)
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
        if teacher is not None:
            teacher = teacher.to(memory_format=torch.channels_last)
    compile_nets((net, teacher), enabled=cfg.compile)
    return net, discs, teacher


def synced_pass_skips_a_head(objective: Objective) -> bool:
    """True when the backward that all-reduces the net's gradients leaves an output head out.

    Then DDP must look for unused parameters: a head left out (the aux head, or the main head with the
    levels after the aux tap) gets no gradient in that backward, and DDP would wait for it forever
    ("Expected to have finished reduction"). The heads come from what the terms were found to read.
    """
    return objective.synced_heads != {AUX, MAIN}


def find_unused_parameters(objectives: Iterable[Objective]) -> bool:
    """DDP's `find_unused_parameters` for a net trained through these phases' objectives.

    On only where needed: it costs a walk over the autograd graph per step, and DDP warns at every run
    that turns it on without needing it.
    """
    return any(synced_pass_skips_a_head(o) for o in objectives)


def wrap_ddp(cfg: TrainConfig, info: DistInfo, device: torch.device, net: nn.Module, discs,
             objectives: Iterable[Objective]):
    """The net and discriminators in DistributedDataParallel when several processes train (else unchanged)."""
    if cfg.sync_bn and device.type != "cuda":  # torch's SyncBatchNorm refuses CPU tensors at the first forward
        raise ConfigError("--sync-bn needs CUDA devices (torch's SyncBatchNorm has no CPU kernel); "
                          "drop it for a CPU run")
    if not info.enabled:
        return net, discs
    from torch.nn.parallel import DistributedDataParallel as DDP

    if cfg.sync_bn:
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    ids = [device.index] if device.type == "cuda" else None
    net = DDP(net, device_ids=ids, find_unused_parameters=find_unused_parameters(objectives))
    discs = tuple(DDP(d, device_ids=ids) for d in discs)
    return net, discs
