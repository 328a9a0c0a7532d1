"""A strategy with the run's protections around it, the way Flower wraps a strategy in DP.

The coordinator always talks to a `Protected` strategy: with no protection it only
delegates; `flower/privacy.py` (central DP) and `flower/secagg.py` (SecAgg+) subclass it
to add what they need: fields of the train instruction (clipping norm, SecAgg+ range,
uniform weights), a stricter check of each update, noise in `aggregate`, and the
privacy spent so far (kept in the run's checkpoint).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from petite_fl.federation.strategies import Strategy


class Protected:
    """Delegates to `inner` (a strategy, or another protection) except where a protection adds."""

    def __init__(self, inner: Strategy | Protected) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:  # name, rule, split, describe, federated_rounds …
        return getattr(self.inner, name)

    def aggregate(self, current: Mapping[str, torch.Tensor],
                  updates: Sequence[tuple[dict[str, torch.Tensor], int]]) -> dict[str, torch.Tensor]:
        return self.inner.aggregate(current, updates)

    def ins_fields(self) -> dict[str, Any]:
        """Extra fields of every TrainIns (see messages.TrainIns)."""
        return self.inner.ins_fields() if isinstance(self.inner, Protected) else {}

    def refuse(self, norm: float | None) -> str | None:
        """Why an update that passed `check_update` is still refused under this protection."""
        return self.inner.refuse(norm) if isinstance(self.inner, Protected) else None

    def privacy_events(self) -> list[Any]:
        return self.inner.privacy_events() if isinstance(self.inner, Protected) else []

    def restore_privacy(self, events: Sequence[Any]) -> None:
        if isinstance(self.inner, Protected):
            self.inner.restore_privacy(events)

    def privacy_spent(self) -> dict[str, Any] | None:
        return self.inner.privacy_spent() if isinstance(self.inner, Protected) else None


class RobustAggregate(Protected):
    """The strategy's sharing and site half, with a coordinate-wise median or trimmed mean instead of
    its weighted mean (`federation.robust.aggregate`); every update was checked before."""

    def __init__(self, inner: Strategy | Protected, how: str, trim_fraction: float) -> None:
        super().__init__(inner)
        self.how, self.trim_fraction = how, trim_fraction

    def aggregate(self, current, updates):
        from petite_fl.federation.aggregate import robust_average

        return robust_average(updates, self.how, self.trim_fraction) if current else {}


def protect_plain(strategy: Strategy, protection: Any) -> Protected:
    """The strategy as every carrier wraps it first: delegated, or with a robust aggregate."""
    if protection.aggregate != "mean":
        return RobustAggregate(strategy, protection.aggregate, protection.trim_fraction)
    return Protected(strategy)
