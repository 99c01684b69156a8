"""The run's optimisers in one place: built, scheduled, stepped, saved and restored here.

SGD for the net and Adam for each discriminator (docs/method.md#training-iteration), on the poly
schedule `lr * (1 - step / steps) ** power`; the fp16 loss scaler (disabled otherwise) is kept from
phase to phase. The training step only computes gradients.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from model import AUX, MAIN, param_groups


def poly_lr(base_lr: float, step: int, total_steps: int, power: float = 0.9) -> float:
    """The poly schedule `base_lr * (1 - step / total_steps) ** power`."""
    return base_lr * (1.0 - min(step, total_steps) / total_steps) ** power


class Optimisers:
    """SGD for the net, Adam for D1 and D2, their poly schedule and the fp16 loss scaler of one run.

    The net's parameter groups come from the net (`model.param_groups`: DeepLab-v2's classifiers at 10x the
    base rate, `lr_mult`), and the schedule keeps their ratio.

    `start_phase` builds fresh optimisers for a phase (each phase restarts them and its schedule);
    `zero_grad`, `scale` (a loss before its backward), `schedule` and `step` drive one iteration.
    """

    def __init__(self, net: nn.Module, discriminators: tuple[nn.Module, nn.Module], settings: Any, device_type: str):
        """`settings`: learning_rate, learning_rate_d, momentum, weight_decay, power and amp (a TrainConfig)."""
        self.net, self.discriminators, self.settings = net, discriminators, settings
        self.scaler = torch.amp.GradScaler(device_type, enabled=settings.amp == "fp16")
        self.net_opt: torch.optim.Optimizer | None = None
        self.disc_opts: tuple[torch.optim.Optimizer, ...] = ()
        self.phase_steps, self.levels = 1, ()

    def start_phase(self, phase_steps: int, levels: tuple[int, ...]) -> None:
        """Fresh optimisers and a poly schedule over `phase_steps`; `levels` are the discriminators trained."""
        s = self.settings
        self.net_opt = torch.optim.SGD(param_groups(self.net), lr=s.learning_rate, momentum=s.momentum,
                                       weight_decay=s.weight_decay)
        self.disc_opts = tuple(torch.optim.Adam(d.parameters(), lr=s.learning_rate_d, betas=(0.9, 0.99))
                               for d in self.discriminators)
        self.phase_steps, self.levels = phase_steps, levels

    def schedule(self, step: int) -> dict[str, float]:
        """Set the learning rates of `step` of the phase; return them as logged (`lr`, `lr_D`)."""
        s = self.settings
        lr = poly_lr(s.learning_rate, step, self.phase_steps, s.power)
        lr_d = poly_lr(s.learning_rate_d, step, self.phase_steps, s.power)
        for group in self.net_opt.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)  # older checkpoints' groups have none
        for opt in self.disc_opts:
            for group in opt.param_groups:
                group["lr"] = lr_d
        return {"lr": lr, "lr_D": lr_d}

    def zero_grad(self) -> None:
        """Drop the gradients of every parameter (before a step, and after a step that is skipped)."""
        self.net_opt.zero_grad(set_to_none=True)
        for opt in self.disc_opts:
            opt.zero_grad(set_to_none=True)

    def scale(self, loss: Tensor) -> Tensor:
        """`loss` as its backward should see it (multiplied by the fp16 loss scale; unchanged otherwise)."""
        return self.scaler.scale(loss)

    def step(self) -> None:
        """Update the net and the phase's discriminators from the accumulated gradients."""
        self.scaler.step(self.net_opt)
        for level in self.levels:  # a discriminator without gradients: fp16's scaler refuses it
            self.scaler.step(self.disc_opts[level])
        self.scaler.update()

    def state_dict(self) -> dict:
        """The optimisers' and the scaler's state, under the keys a last.pth has always used."""
        return {"optimizer": self.net_opt.state_dict(), "optimizer_d1": self.disc_opts[AUX].state_dict(),
                "optimizer_d2": self.disc_opts[MAIN].state_dict(), "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` saved (the phase's optimisers must have been started)."""
        self.net_opt.load_state_dict(state["optimizer"])
        self.disc_opts[AUX].load_state_dict(state["optimizer_d1"])
        self.disc_opts[MAIN].load_state_dict(state["optimizer_d2"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
