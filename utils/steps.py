"""One training iteration (docs/method.md#iteration): source terms, target terms, then the discriminators."""
from __future__ import annotations

import contextlib
from itertools import zip_longest

import torch
import torch.distributed as dist
from torch import Tensor, nn

from utils.loss import SOURCE_LABEL, TARGET_LABEL, adversarial_loss
from utils.objective import DOMAINS, LEVELS, Objective, TermInputs
from utils.runtime import autocast, unwrap


def poly_lr(base_lr: float, step: int, total_steps: int, power: float = 0.9) -> float:
    """The poly schedule `base_lr * (1 - step / total_steps) ** power`."""
    return base_lr * (1.0 - min(step, total_steps) / total_steps) ** power


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group: `lr` times the group's `lr_mult` (1 when absent)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)


def freeze_teacher(teacher: nn.Module) -> nn.Module:
    """Put a teacher in eval mode (batch-norm statistics fixed) with no gradients; return it."""
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def synced(module: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """DDP bookkeeping: without `sync`, gradients accumulate locally (`no_sync`); with it, the backward
    inside all-reduces them. Any module outside DDP: a no-op."""
    if not sync and hasattr(module, "no_sync"):
        return module.no_sync()
    return contextlib.nullcontext()


class _Totals:
    """The logged terms of a step: each the mean over the step's sub-batches, detached, on the device."""

    def __init__(self, sub_batches: int):
        self.n, self.values = sub_batches, {}

    def add(self, name: str, value: Tensor) -> None:
        self.values[name] = self.values.get(name, 0.0) + value.detach() / self.n


class TrainStep:
    """One optimisation step of the segmentation net and, when the phase adapts, of D1 and D2.

    `objective` says which terms apply on source and target batches and how they are weighted;
    `teacher`, when given, is frozen and supplies the distillation targets. `scaler` is the fp16 loss
    scaler of the run (disabled otherwise), kept across phases.
    """

    def __init__(self, net: nn.Module, discriminators: tuple[nn.Module, nn.Module], optimizer: torch.optim.Optimizer,
                 d_optimizers: tuple[torch.optim.Optimizer, torch.optim.Optimizer], objective: Objective,
                 device: torch.device, *, amp: str = "off", teacher: nn.Module | None = None,
                 channels_last: bool = False, scaler: torch.amp.GradScaler | None = None):
        self.net, self.discriminators, self.teacher = net, discriminators, teacher
        self.optimizer, self.d_optimizers = optimizer, d_optimizers
        self.objective, self.device, self.amp, self.channels_last = objective, device, amp, channels_last
        self.scaler = scaler or torch.amp.GradScaler(device.type, enabled=(amp == "fp16"))
        if teacher is not None:
            freeze_teacher(teacher)

    def __call__(self, source_batches: list[dict], target_batches: list[dict]) -> dict[str, Tensor]:
        """One step over `len(source_batches)` accumulated sub-batches (iter_size); returns the named terms
        (unweighted), the discriminators' losses and `total` (the net's weighted objective), detached."""
        objective, n = self.objective, len(source_batches)
        gan = objective.knobs["gan"]
        self.discard()
        log = _Totals(n)
        for i, (src, tgt) in enumerate(zip_longest(source_batches, target_batches or [])):
            last = i == n - 1  # DDP all-reduces in the last backward through each module only
            # 1. source batch: segmentation (+ distillation); the discriminators are frozen
            _requires_grad(self.discriminators, False)
            with synced(self.net, last and not objective.uses_target):
                pred_s = self._backward_terms("source", src, log)
            if not objective.uses_target:
                continue
            # 2. target batch: fool the discriminators (+ distillation)
            with synced(self.net, last):
                pred_t = self._backward_terms("target", tgt, log)
            # 3. discriminators: source outputs -> SOURCE_LABEL, target outputs -> TARGET_LABEL, each half
            _requires_grad(self.discriminators, True)
            for level in objective.adversarial_levels:
                disc = self.discriminators[level]
                with synced(disc, False):
                    d_src = adversarial_loss(self._discriminate(disc, pred_s[level].detach()), SOURCE_LABEL, gan) / 2
                    self._backward(d_src, n)
                with synced(disc, last):
                    d_tgt = adversarial_loss(self._discriminate(disc, pred_t[level].detach()), TARGET_LABEL, gan) / 2
                    self._backward(d_tgt, n)
                log.add(f"d_{LEVELS[level]}", d_src + d_tgt)
        return log.values

    def _backward_terms(self, domain: str, batch: dict, log: _Totals) -> tuple[Tensor, Tensor]:
        """Forward `batch`, evaluate the objective's terms of `domain`, backward their weighted sum;
        return the net's (aux, main) log-probabilities."""
        images = self._images(batch)
        pred = self._forward(self.net, images)
        terms = self.objective.terms(domain)
        inputs = TermInputs(
            student=pred, knobs=self.objective.knobs,
            labels=batch["label"].to(self.device, non_blocking=True) if "label" in batch else None,
            teacher=self._teacher(images) if any(t.teacher for t, _ in terms) else None,
            discriminate=lambda level, log_probs: self._discriminate(unwrap(self.discriminators[level]), log_probs))
        total = pred[1].new_zeros(())
        for term, weight in terms:
            value = term.fn(inputs)
            log.add(f"{term.name}_{DOMAINS[domain]}", value)
            total = total + weight * value
        log.add("total", total)
        self._backward(total, log.n)
        return pred

    def apply(self) -> None:
        """Step the optimizers on the accumulated gradients (call after a finite `__call__`)."""
        self.scaler.step(self.optimizer)
        for level in self.objective.adversarial_levels:  # a discriminator without gradients: fp16's scaler refuses it
            self.scaler.step(self.d_optimizers[level])
        self.scaler.update()

    def discard(self) -> None:
        """Drop the accumulated gradients (before a step, and for a step that is skipped)."""
        self.optimizer.zero_grad(set_to_none=True)
        for opt in self.d_optimizers:
            opt.zero_grad(set_to_none=True)

    # --- devices and precision -------------------------------------------------------------------------
    def _images(self, batch: dict) -> Tensor:
        images = batch["image"].to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def _forward(self, module: nn.Module, images: Tensor) -> tuple[Tensor, Tensor]:
        with autocast(self.device, self.amp):
            aux, main = module(images)
        return aux.float(), main.float()

    @torch.no_grad()
    def _teacher(self, images: Tensor) -> tuple[Tensor, Tensor]:
        return self._forward(self.teacher, images)

    def _discriminate(self, disc: nn.Module, log_probs: Tensor) -> Tensor:
        with autocast(self.device, self.amp):
            return disc(log_probs.exp()).float()

    def _backward(self, loss: Tensor, sub_batches: int) -> None:
        self.scaler.scale(loss / sub_batches).backward()


def _requires_grad(modules: tuple[nn.Module, ...], flag: bool) -> None:
    for module in modules:
        for p in module.parameters():
            p.requires_grad_(flag)


def step_status(losses: dict[str, Tensor], stop_signal: int | None = None,
                distributed: bool = False) -> tuple[str | None, int | None]:
    """The first NaN/Inf loss term (None when all are finite) and the stop signal received (None when none).

    With `distributed`, both are agreed across the ranks: a term bad on any rank is bad on all, and a signal
    received by any rank stops all of them at the same step. One host sync (and one all-reduce).
    """
    names = list(losses)
    finite = torch.isfinite(torch.stack([losses[k].detach().float().reshape(()) for k in names])).float()
    flags = torch.cat([finite, finite.new_tensor([-float(stop_signal or 0)])])
    if distributed:
        dist.all_reduce(flags, op=dist.ReduceOp.MIN)
    *ok, negative_signal = flags.tolist()
    bad = next((name for name, fine in zip(names, ok) if fine < 1), None)
    return bad, int(-negative_signal) or None
