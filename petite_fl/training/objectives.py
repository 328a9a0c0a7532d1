"""Training objectives: MSE (UNETR in PETITE), L1, and CVT-GAN's adversarial + 100 × L1."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from petite_fl.errors import ConfigError
from petite_fl.training.device import autocast

DEFAULT_LOSS = {"unetr": "mse", "cvtgan": "gan"}


class Objective:
    """One optimisation step of the network on a batch {input, target}.

    `penalty`, when set, is added to the network's loss (FedProx's proximal term, Ditto's
    pull toward the shared adapter): a function of the model returning a scalar tensor.
    """

    penalty: Callable[[nn.Module], torch.Tensor] | None = None

    def _with_penalty(self, model: nn.Module, loss: torch.Tensor) -> torch.Tensor:
        return loss + self.penalty(model) if self.penalty is not None else loss

    def step(self, model: nn.Module, batch: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
             scaler: torch.amp.GradScaler, amp: bool) -> dict[str, float]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Objectives with their own state (a discriminator) restore it here."""


class Supervised(Objective):
    def __init__(self, kind: str = "mse") -> None:
        self.loss = {"mse": F.mse_loss, "l1": F.l1_loss}[kind]

    def step(self, model, batch, optimizer, scaler, amp):
        x, y = batch["input"], batch["target"]
        optimizer.zero_grad(set_to_none=True)
        with autocast(x.device, amp):
            loss = self.loss(model(x).float(), y)
        scaler.scale(self._with_penalty(model, loss)).backward()
        scaler.step(optimizer)
        scaler.update()
        return {"loss": float(loss.detach())}


class Adversarial(Objective):
    """Conditional GAN (pix2pix-style, as 3D CVT-GAN): D sees (input, output) pairs."""

    def __init__(self, discriminator: nn.Module, l1_weight: float = 100.0, d_lr: float = 2e-4) -> None:
        self.d = discriminator
        self.l1_weight = l1_weight
        self.d_opt = torch.optim.Adam(self.d.parameters(), lr=d_lr, betas=(0.5, 0.999))

    def step(self, model, batch, optimizer, scaler, amp):
        x, y = batch["input"], batch["target"]
        with autocast(x.device, amp):
            fake = model(x).float()
        # Discriminator: real pairs → 1, generated pairs → 0.
        self.d.requires_grad_(True)
        self.d_opt.zero_grad(set_to_none=True)
        real_logits, fake_logits = self.d(torch.cat([x, y], 1)), self.d(torch.cat([x, fake.detach()], 1))
        d_loss = 0.5 * (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
                        + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))
        d_loss.backward()
        self.d_opt.step()
        # Generator: fool D, stay close to the target.
        self.d.requires_grad_(False)
        optimizer.zero_grad(set_to_none=True)
        logits = self.d(torch.cat([x, fake], 1))
        adv = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
        l1 = F.l1_loss(fake, y)
        g_loss = adv + self.l1_weight * l1
        scaler.scale(self._with_penalty(model, g_loss)).backward()
        scaler.step(optimizer)
        scaler.update()
        return {"loss": float(g_loss.detach()), "l1": float(l1.detach()), "d_loss": float(d_loss.detach())}

    def state_dict(self) -> dict[str, Any]:
        return {"discriminator": self.d.state_dict(), "d_opt": self.d_opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "discriminator" in state:
            self.d.load_state_dict(state["discriminator"])
        if "d_opt" in state:
            self.d_opt.load_state_dict(state["d_opt"])


def make_objective(train_cfg: Any, model_name: str, model_preset: str, device: torch.device) -> Objective:
    kind = str(train_cfg.loss)
    if kind == "auto":
        kind = DEFAULT_LOSS.get(model_name, "mse")
    if kind in ("mse", "l1"):
        return Supervised(kind)
    if kind == "gan":
        from petite_fl.models.cvtgan_discriminator import build_discriminator

        disc = build_discriminator(model_preset if model_preset in ("paper", "tiny") else "tiny").to(device)
        return Adversarial(disc, float(train_cfg.gan.l1_weight), float(train_cfg.gan.d_lr))
    raise ConfigError(f"train.loss must be auto, mse, l1 or gan, got '{kind}'")
