"""One training iteration (docs/method.md#iteration): source terms, target terms, then the discriminators.

The step computes gradients and returns the terms; the run's optimisers (utils/optim.py) zero them
before and apply them after.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from itertools import zip_longest

import torch
import torch.distributed as dist
from torch import Tensor, nn

from utils.loss import SOURCE_LABEL, TARGET_LABEL, adversarial_loss
from utils.objective import DOMAINS, LEVELS, MAIN, Objective, TermInputs
from utils.runtime import autocast, unwrap


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


def _unscaled(loss: Tensor) -> Tensor:
    return loss


class TrainStep:
    """The gradients of one step for the segmentation net and, when the phase adapts, for D1 and D2.

    `objective` says which terms apply on source and target batches and how they are weighted;
    `teacher`, when given, is frozen and supplies the distillation targets; `scale` prepares a loss for its
    backward (the run's fp16 loss scaling). Gradients accumulate into `.grad`: zero them before a step.
    """

    def __init__(self, net: nn.Module, discriminators: tuple[nn.Module, nn.Module], objective: Objective,
                 device: torch.device, *, amp: str = "off", teacher: nn.Module | None = None,
                 channels_last: bool = False, scale: Callable[[Tensor], Tensor] = _unscaled):
        self.net, self.discriminators, self.teacher = net, discriminators, teacher
        self.objective, self.device, self.amp, self.channels_last, self.scale = (
            objective, device, amp, channels_last, scale)
        if teacher is not None:
            freeze_teacher(teacher)

    def __call__(self, source_batches: list[dict], target_batches: list[dict]) -> dict[str, Tensor]:
        """Backward over `len(source_batches)` accumulated sub-batches (iter_size); return the named terms
        (unweighted), the discriminators' losses and `total` (the net's weighted objective), detached."""
        objective, n = self.objective, len(source_batches)
        gan = objective.knobs.gan
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
        inputs = TermInputs(
            student=pred, knobs=self.objective.knobs,
            labels=batch["label"].to(self.device, non_blocking=True) if "label" in batch else None,
            teacher=self._teacher(images) if self.objective.reads_teacher(domain) else None,
            discriminate=lambda level, log_probs: self._discriminate(unwrap(self.discriminators[level]), log_probs))
        total = pred[MAIN].new_zeros(())
        for term in self.objective.terms(domain):
            value = term.fn(inputs)
            log.add(f"{term.name}_{DOMAINS[domain]}", value)
            total = total + term.weight * value
        log.add("total", total)
        self._backward(total, log.n)
        return pred

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
        self.scale(loss / sub_batches).backward()


def _requires_grad(modules: tuple[nn.Module, ...], flag: bool) -> None:
    for module in modules:
        for p in module.parameters():
            p.requires_grad_(flag)


class RunningStatistics:
    """The batch-norm running statistics of a net, copied before a step so that a skipped step can put them
    back: the forward of a step whose loss is not finite must not leave NaN or Inf in them."""

    def __init__(self, net: nn.Module):
        self.buffers = [buffer for module in net.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)
                        for buffer in (module.running_mean, module.running_var, module.num_batches_tracked)
                        if buffer is not None]
        self.copies = [buffer.clone() for buffer in self.buffers]

    def keep(self) -> None:
        """Copy the statistics as they are now."""
        for copy, buffer in zip(self.copies, self.buffers):
            copy.copy_(buffer)

    def put_back(self) -> None:
        """Restore the statistics kept last."""
        for copy, buffer in zip(self.copies, self.buffers):
            buffer.copy_(copy)


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
