"""One training iteration (SPEC section 4): segmentation, output-space adaptation and distillation terms."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from utils.loss import (
    SOURCE_LABEL,
    TARGET_LABEL,
    adversarial_loss,
    kl_distill,
    mse_distill,
    pseudo_label_loss,
    seg_loss,
)
from utils.runtime import autocast

LEVELS = ("aux", "main")


@dataclass(frozen=True)
class LossWeights:
    """The weights of every term of the objective for one training phase."""

    lambda_seg: float = 0.1
    lambda_adv: tuple[float, float] = (0.0002, 0.001)  # (aux level, main level)
    gan: str = "Vanilla"
    distill_source: bool = False
    distill_target: bool = False
    lambda_kl: float = 0.1
    lambda_mse: float = 0.01
    lambda_pseudo: float = 1.0
    lambda_target: float = 1.0
    temperature: float = 1.0
    pseudo_threshold: float = 0.0

    @property
    def adapt(self) -> bool:
        """True when the adversarial terms are on (otherwise no target batch is needed for them)."""
        return any(w > 0 for w in self.lambda_adv)


def poly_lr(base_lr: float, step: int, total_steps: int, power: float = 0.9) -> float:
    """The poly schedule `base_lr * (1 - step / total_steps) ** power`."""
    return base_lr * (1.0 - min(step, total_steps) / total_steps) ** power


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel/DataParallel wrapper (or the module itself)."""
    return getattr(module, "module", module)


def _sync_unless(module: nn.Module, skip_sync: bool) -> contextlib.AbstractContextManager:
    # DDP: accumulate locally, all-reduce once on the iteration's last backward through this module.
    if skip_sync and hasattr(module, "no_sync"):
        return module.no_sync()
    return contextlib.nullcontext()


def distillation_terms(student: tuple[torch.Tensor, torch.Tensor], teacher: tuple[torch.Tensor, torch.Tensor],
                       w: LossWeights) -> dict[str, torch.Tensor]:
    """KL (main + lambda_seg x aux), MSE of the aux probabilities and pseudo-teacher-label CE (main)."""
    (s_aux, s_main), (t_aux, t_main) = student, teacher
    return {
        "kl": kl_distill(s_main, t_main, w.temperature) + w.lambda_seg * kl_distill(s_aux, t_aux, w.temperature),
        # On probabilities: log-probabilities of near-zero classes reach -30 and more, and their squared
        # differences (~1e3 for untrained nets) would swamp every other term.
        "mse": mse_distill(s_aux.exp(), t_aux.exp()),
        "pseudo": pseudo_label_loss(s_main, t_main, threshold=w.pseudo_threshold),
    }


def weighted_distillation(terms: dict[str, torch.Tensor], w: LossWeights) -> torch.Tensor:
    """lambda_kl * KL + lambda_mse * MSE + lambda_pseudo * CE of `distillation_terms`."""
    return w.lambda_kl * terms["kl"] + w.lambda_mse * terms["mse"] + w.lambda_pseudo * terms["pseudo"]


class TrainStep:
    """Runs one optimisation step of the segmentation net and, when adapting, of the two discriminators.

    `discriminators` is (D1 for the aux level, D2 for the main level); `teacher`, when given, is frozen and
    supplies the distillation targets. Returns the named loss terms (unweighted) and `total`, the weighted
    objective of the segmentation net, as detached tensors (no host sync
    except one finiteness check).
    """

    def __init__(self, net: nn.Module, discriminators: tuple[nn.Module, nn.Module], optimizer: torch.optim.Optimizer,
                 d_optimizers: tuple[torch.optim.Optimizer, torch.optim.Optimizer], weights: LossWeights,
                 device: torch.device, *, amp: str = "off", teacher: nn.Module | None = None,
                 channels_last: bool = False, scaler: torch.amp.GradScaler | None = None):
        self.net = net
        self.discriminators = discriminators
        self.optimizer = optimizer
        self.d_optimizers = d_optimizers
        self.w = weights
        self.device = device
        self.amp = amp
        self.teacher = teacher
        self.channels_last = channels_last
        self.scaler = scaler or torch.amp.GradScaler(device.type, enabled=(amp == "fp16"))
        if teacher is not None:
            freeze_teacher(teacher)

    # --- pieces -------------------------------------------------------------------------------------
    def _images(self, batch: dict) -> torch.Tensor:
        images = batch["image"].to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def _forward(self, module: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast(self.device, self.amp):
            aux, main = module(images)
        return aux.float(), main.float()

    @torch.no_grad()
    def _teacher(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._forward(self.teacher, images)

    def _distillation_terms(self, student, teacher, w: LossWeights) -> dict[str, torch.Tensor]:
        # a method so that benchmark.py's old-way reproduction (utils/oldway.py) can swap the terms
        return distillation_terms(student, teacher, w)

    def _discriminate(self, disc: nn.Module, log_probs: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.amp):
            return disc(log_probs.exp()).float()

    def _backward(self, loss: torch.Tensor, scale: float) -> None:
        self.scaler.scale(loss * scale).backward()

    # --- the iteration ------------------------------------------------------------------------------
    def __call__(self, source_batches: list[dict], target_batches: list[dict]) -> dict[str, torch.Tensor]:
        """One step over `len(source_batches)` accumulated sub-batches (iter_size)."""
        w = self.w
        use_target = w.adapt or w.distill_target
        self.optimizer.zero_grad(set_to_none=True)
        for opt in self.d_optimizers:
            opt.zero_grad(set_to_none=True)
        n = len(source_batches)
        totals: dict[str, torch.Tensor] = {}

        def add(name: str, value: torch.Tensor) -> None:
            totals[name] = totals.get(name, 0.0) + value.detach() / n

        for i, (src, tgt) in enumerate(zip(source_batches, target_batches or [None] * n)):
            last = i == n - 1
            # 1) segmentation net on the source batch, discriminators frozen
            self._set_requires_grad(self.discriminators, False)
            images = self._images(src)
            labels = src["label"].to(self.device, non_blocking=True)
            with _sync_unless(self.net, skip_sync=use_target or not last):
                pred_s = self._forward(self.net, images)
                seg_aux, seg_main = seg_loss(pred_s[0], labels), seg_loss(pred_s[1], labels)
                loss = seg_main + w.lambda_seg * seg_aux
                add("seg_main", seg_main)
                add("seg_aux", seg_aux)
                if w.distill_source:
                    terms = self._distillation_terms(pred_s, self._teacher(images), w)
                    loss = loss + weighted_distillation(terms, w)
                    for k, v in terms.items():
                        add(f"{k}_src", v)
                add("total", loss)
                self._backward(loss, 1.0 / n)
            if not use_target:
                continue
            # 2) segmentation net on the target batch: fool the discriminators, match the teacher
            images_t = self._images(tgt)
            with _sync_unless(self.net, skip_sync=not last):
                pred_t = self._forward(self.net, images_t)
                loss = pred_t[1].new_zeros(())
                for level, disc, lam, pred in zip(LEVELS, self.discriminators, w.lambda_adv, pred_t):
                    if lam > 0:
                        adv = adversarial_loss(self._discriminate(unwrap(disc), pred), SOURCE_LABEL, w.gan)
                        loss = loss + lam * adv
                        add(f"adv_{level}", adv)
                if w.distill_target:
                    terms = self._distillation_terms(pred_t, self._teacher(images_t), w)
                    loss = loss + w.lambda_target * weighted_distillation(terms, w)
                    for k, v in terms.items():
                        add(f"{k}_tgt", v)
                add("total", loss)
                self._backward(loss, 1.0 / n)
            # 3) discriminators: source outputs -> SOURCE_LABEL, target outputs -> TARGET_LABEL
            if w.adapt:
                self._set_requires_grad(self.discriminators, True)
                for level, disc, lam, ps, pt in zip(LEVELS, self.discriminators, w.lambda_adv, pred_s, pred_t):
                    if lam <= 0:
                        continue
                    with _sync_unless(disc, skip_sync=True):
                        d_src = adversarial_loss(self._discriminate(disc, ps.detach()), SOURCE_LABEL, w.gan) / 2
                        self._backward(d_src, 1.0 / n)
                    with _sync_unless(disc, skip_sync=not last):
                        d_tgt = adversarial_loss(self._discriminate(disc, pt.detach()), TARGET_LABEL, w.gan) / 2
                        self._backward(d_tgt, 1.0 / n)
                    add(f"d_{level}", d_src + d_tgt)
        return totals

    def apply(self) -> None:
        """Step the optimizers on the accumulated gradients (call after a finite `__call__`)."""
        self.scaler.step(self.optimizer)
        for opt, lam in zip(self.d_optimizers, self.w.lambda_adv):
            if lam > 0:  # a level with no adversarial term has no gradients: fp16's scaler refuses that step
                self.scaler.step(opt)
        self.scaler.update()

    def discard(self) -> None:
        """Drop the accumulated gradients of a step that is skipped."""
        self.optimizer.zero_grad(set_to_none=True)
        for opt in self.d_optimizers:
            opt.zero_grad(set_to_none=True)

    @staticmethod
    def _set_requires_grad(modules: tuple[nn.Module, ...], flag: bool) -> None:
        for module in modules:
            for p in module.parameters():
                p.requires_grad_(flag)


def freeze_teacher(teacher: nn.Module) -> nn.Module:
    """Put a teacher in eval mode (batch-norm statistics fixed) with no gradients; return it."""
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def step_status(losses: dict[str, torch.Tensor], stop_signal: int | None = None,
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
