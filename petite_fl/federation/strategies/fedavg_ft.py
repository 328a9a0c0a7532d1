"""`fedavg-ft`: FedAvg, then local fine-tuning of the global adapter (the Fed-NDIF recipe).

Fed-NDIF (arXiv 2503.16635) trains one denoiser by FedAvg, then fine-tunes it at each
site on that site's own scans, and beats both local models and the federated model
alone. At the same budget as every other arm: of R rounds the first R − k are FedAvg and
the last k = max(1, ⌈R · finetune.fraction⌉) are local fine-tuning. The first local
round receives the last global adapter; from then on each site trains its own copy,
kept on its disk, and nothing leaves it; the server's global stays as round R − k left it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from petite_fl.errors import ConfigError
from petite_fl.federation.strategies.base import LocalTraining, Strategy, Update
from petite_fl.federation.strategies.registry import register


def finetune_fraction(cfg: Mapping[str, Any]) -> float:
    """strategy.finetune.fraction: the share of the rounds spent on local fine-tuning, at the end."""
    fraction = float((cfg.get("finetune") or {}).get("fraction", 0.25))
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"strategy.finetune.fraction must be in (0, 1), got {fraction}")
    return fraction


def shared_rounds(total_rounds: int, fraction: float, label: str, before: str) -> int:
    """The R − k rounds before the k = max(1, ⌈R · fraction⌉) local ones: one split of the budget for
    fedavg-ft and `petite compare`'s pooled-ft, so their sites fine-tune for the same steps."""
    if total_rounds <= 0:
        return 0
    local = max(1, math.ceil(total_rounds * fraction - 1e-9))
    if total_rounds - local < 1:
        raise ConfigError(f"strategy {label} needs at least one {before} round before its {local} local "
                          f"round(s): federation.rounds={total_rounds} is too few")
    return total_rounds - local


@register
class FedAvgFT(Strategy):
    algorithm = "fedavg-ft"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.fraction = finetune_fraction(cfg)
        if not self.rule.share:
            raise ConfigError("strategy 'fedavg-ft' needs a shared global adapter: strategy.sharing.share is empty")

    def federated_rounds(self, total_rounds: int) -> int:
        return shared_rounds(total_rounds, self.fraction, "fedavg-ft", "FedAvg")

    def current_adapter(self, init, received, personal):
        # after the FedAvg rounds the site's own fine-tuned copy is its model
        return {**init, **received, **personal}

    def local_update(self, job: LocalTraining, init, received, personal) -> Update:
        if job.round <= self.federated_rounds(job.total_rounds):
            return super().local_update(job, init, received, personal)
        job.load(self.current_adapter(init, received, personal))
        loss = job.train(job.steps, None, (job.round - 1) * job.steps, job.total_rounds * job.steps)
        return Update({}, job.read(), {"train_loss": loss})

    def describe(self) -> str:
        return super().describe() + f"; the last {self.fraction:.0%} of rounds local fine-tuning of the global"
