"""The strategy contract: what a site does in a round, and what the server does with it.

A strategy is split in two halves that never share memory: the site half
(`current_adapter`, `local_update`) runs in the ClientApp on the site's data and keeps
personal tensors on the site's disk; the server half (`aggregate`) sees only what the
sharing rule lets leave a site. Every strategy here weights by training-sample count.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from petite_fl.errors import ConfigError
from petite_fl.federation.aggregate import weighted_average
from petite_fl.federation.sharing import SharingRule


@dataclass
class LocalTraining:
    """What the site offers a strategy for one round: its model and a way to train it."""

    names: list[str]                                   # every trainable PEFT tensor
    load: Callable[[Mapping[str, torch.Tensor]], None]  # put an adapter into the model
    read: Callable[[], dict[str, torch.Tensor]]        # the model's adapter now
    # train(steps, penalty, schedule_offset, schedule_total) -> mean loss of the last steps
    train: Callable[..., float]
    round: int                                         # 1-based
    steps: int                                         # the round's local-step budget
    total_rounds: int


@dataclass
class Update:
    upload: dict[str, torch.Tensor]        # leaves the site (the shared tensors)
    personal: dict[str, torch.Tensor]      # stays on the site's disk until the next round
    logs: dict[str, float] = field(default_factory=dict)


def proximal(anchor: Mapping[str, torch.Tensor], weight: float) -> Callable[[torch.nn.Module], torch.Tensor] | None:
    """weight/2 · Σ‖θ − anchor‖² over the anchored tensors (FedProx's μ, Ditto's λ)."""
    if weight <= 0 or not anchor:
        return None
    fixed = {n: t.detach().clone() for n, t in anchor.items()}

    def penalty(model: torch.nn.Module) -> torch.Tensor:
        params = dict(model.named_parameters())
        total = sum(((params[n] - t.to(params[n].device, params[n].dtype)) ** 2).sum() for n, t in fixed.items())
        return 0.5 * weight * total

    return penalty


class Strategy:
    """FedAvg-family behaviour with a sharing rule; subclasses change the site half.

    `algorithm` is the registry key of the class; `name` is the config's label (run names,
    `describe`, logs), so `shared-encoder` is fedavg with a sharing rule, not a class.
    """

    algorithm: ClassVar[str] = ""

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        self.cfg = cfg
        self.name = str(cfg.get("name") or self.algorithm)
        self.rule = SharingRule.from_config(cfg.get("sharing") or {})
        self.proximal_mu = float(cfg.get("proximal_mu") or 0.0)
        if self.proximal_mu < 0:
            raise ConfigError(f"strategy.proximal_mu must be ≥ 0, got {self.proximal_mu}")

    # -- both sides ---------------------------------------------------------------
    def split(self, trainable: Mapping[str, str]) -> tuple[list[str], list[str]]:
        """(shared, personal) tensor names from {tensor name: part}."""
        return self.rule.split(trainable)

    def upload_steps(self, rnd: int, steps: int, total_rounds: int) -> list[tuple[int, int, int]]:
        """The optimiser runs that shape a round's upload, as (schedule offset, steps, schedule length):
        what the server's bound on an honest update (`checks.honest_update_bound`) sums over."""
        return [((rnd - 1) * steps, steps, total_rounds * steps)]

    def federated_rounds(self, total_rounds: int) -> int:
        """Rounds whose uploads the server averages; later rounds train at the sites only."""
        return total_rounds

    # -- site side -------------------------------------------------------------------
    def current_adapter(self, init: Mapping[str, torch.Tensor], received: Mapping[str, torch.Tensor],
                        personal: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The site's model now: the global shared tensors over its own personal ones."""
        return {**init, **personal, **received}

    def local_update(self, job: LocalTraining, init: Mapping[str, torch.Tensor],
                     received: Mapping[str, torch.Tensor], personal: Mapping[str, torch.Tensor]) -> Update:
        job.load(self.current_adapter(init, received, personal))
        loss = job.train(job.steps, proximal(received, self.proximal_mu),
                         (job.round - 1) * job.steps, job.total_rounds * job.steps)
        now = job.read()
        shared = set(received)
        return Update({n: t for n, t in now.items() if n in shared},
                      {n: t for n, t in now.items() if n not in shared}, {"train_loss": loss})

    # -- server side -------------------------------------------------------------------
    def aggregate(self, current: Mapping[str, torch.Tensor],
                  updates: Sequence[tuple[dict[str, torch.Tensor], int]]) -> dict[str, torch.Tensor]:
        """New global shared tensors from the sites' uploads and sample counts."""
        if not current:
            return {}
        return weighted_average(updates)

    def describe(self) -> str:
        share = ", ".join(map(str, self.rule.share)) or "nothing"
        keep = ", ".join(map(str, self.rule.keep_local))
        text = f"{self.name}: shares {share}" + (f" except {keep}" if keep else "")
        return text + (f"; FedProx μ={self.proximal_mu:g}" if self.proximal_mu else "")
