"""The run's protections: which a run uses, which combinations are refused (and why), and the
strategy wrapped in them, the way Flower wraps a strategy in DP.

Two protections act on the shared tensors, both through Flower's own implementations:
SecAgg+ (the server learns only the sum of the sites' uploads) and central differential
privacy (clipped updates plus Gaussian noise on the average). Refusals are decided here,
once, so that the server, the sites and the README table agree.

The coordinator always talks to a `Protected` strategy: with no protection it only
delegates; `flower/privacy.py` (central DP) and `flower/secagg.py` (SecAgg+) subclass it
to add what they need: fields of the train instruction (clipping norm, SecAgg+ range,
uniform weights), a stricter check of each update, noise in `aggregate`, and the
privacy spent so far (kept in the run's checkpoint).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig

from petite_fl.errors import ConfigError
from petite_fl.federation.strategies import Strategy

DP_MODES = ("off", "server", "client")
AGGREGATES = ("mean", "median", "trimmed-mean")
MIN_SECAGG_SITES = 3  # with two, each site learns the other's upload from the sum and its own


@dataclass(frozen=True)
class Protection:
    secagg: bool
    num_shares: float | int
    reconstruction_threshold: float | int
    clipping_range: float
    quantization_range: int
    dp: str                  # off | server | client
    noise_multiplier: float
    clipping_norm: float
    delta: float
    aggregate: str = "mean"  # mean | median | trimmed-mean (federation.robust.aggregate)
    trim_fraction: float = 0.2

    @property
    def legacy_messages(self) -> bool:
        """Train messages in Flower's FitIns/FitRes layout, which its SecAgg+ and clipping mods read."""
        return self.secagg or self.dp == "client"

    def describe(self) -> str:
        parts = []
        if self.secagg:
            parts.append("SecAgg+")
        if self.dp != "off":
            parts.append(f"central DP ({self.dp}-side clipping to {self.clipping_norm:g}, "
                         f"noise ×{self.noise_multiplier:g})")
        if self.aggregate != "mean":
            parts.append(f"coordinate-wise {self.aggregate}"
                         + (f" (cut {self.trim_fraction:g} of the sites at each end)"
                            if self.aggregate == "trimmed-mean" else ""))
        return " + ".join(parts) or "none"


def _number(value: Any, field: str) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{field} must be a number, got {value!r}")
    return value


def protection_from_config(cfg: DictConfig) -> Protection:
    """The run's protections, refusing settings and combinations that would not protect."""
    fed = cfg.federation
    sec = fed.get("secagg") or {}
    dp = fed.get("dp") or {}
    robust = fed.get("robust") or {}
    mode = dp.get("mode", "off")
    mode = "off" if mode in (None, False) else str(mode)  # YAML 1.1 reads a bare `off` as false
    if mode not in DP_MODES:
        raise ConfigError(f"federation.dp.mode must be one of {', '.join(DP_MODES)}, got '{mode}'")
    p = Protection(
        secagg=bool(sec.get("enabled", False)),
        num_shares=_number(sec.get("num_shares", 1.0), "federation.secagg.num_shares"),
        reconstruction_threshold=_number(sec.get("reconstruction_threshold", 0.7),
                                         "federation.secagg.reconstruction_threshold"),
        clipping_range=float(_number(sec.get("clipping_range", 8.0), "federation.secagg.clipping_range")),
        quantization_range=int(_number(sec.get("quantization_range", 2**22), "federation.secagg.quantization_range")),
        dp=mode,
        noise_multiplier=float(_number(dp.get("noise_multiplier", 1.0), "federation.dp.noise_multiplier")),
        clipping_norm=float(_number(dp.get("clipping_norm", 0.1), "federation.dp.clipping_norm")),
        delta=float(_number(dp.get("delta", 1e-5), "federation.dp.delta")),
        aggregate=str(robust.get("aggregate", "mean")),
        trim_fraction=float(_number(robust.get("trim_fraction", 0.2), "federation.robust.trim_fraction")),
    )
    if p.aggregate not in AGGREGATES:
        raise ConfigError(f"federation.robust.aggregate must be one of {', '.join(AGGREGATES)}, got '{p.aggregate}'")
    if not 0 <= p.trim_fraction < 0.5:
        raise ConfigError(f"federation.robust.trim_fraction must be in [0, 0.5), got {p.trim_fraction}")
    if p.clipping_range <= 0:
        raise ConfigError(f"federation.secagg.clipping_range must be > 0, got {p.clipping_range}")
    if p.dp != "off":
        if p.noise_multiplier <= 0:
            raise ConfigError(f"federation.dp.noise_multiplier must be > 0 (no noise is no privacy), "
                              f"got {p.noise_multiplier}")
        if p.clipping_norm <= 0:
            raise ConfigError(f"federation.dp.clipping_norm must be > 0, got {p.clipping_norm}")
        if not 0 < p.delta < 1:
            raise ConfigError(f"federation.dp.delta must be in (0, 1), got {p.delta}")
    return p


def check_combination(p: Protection, strategy_name: str, shares_anything: bool, n_sites: int) -> None:
    """Refuse what cannot be protected as asked; the README's table lists the same cases."""
    if (p.secagg or p.dp != "off") and not shares_anything:
        what = "federation.secagg.enabled=true" if p.secagg else f"federation.dp.mode={p.dp}"
        raise ConfigError(f"{what} protects the shared tensors, but strategy '{strategy_name}' shares nothing; "
                          "use fedavg, shared-encoder or personalized")
    if p.secagg and p.dp == "server":
        raise ConfigError("federation.dp.mode=server clips each site's update on the server, which SecAgg+ hides "
                          "from it; use federation.dp.mode=client with federation.secagg.enabled=true")
    if p.aggregate != "mean" and (p.secagg or p.dp != "off"):
        what = "SecAgg+ shows the server only the sum" if p.secagg else "DP's noise is calibrated to the mean"
        raise ConfigError(f"federation.robust.aggregate={p.aggregate} needs each site's update, but {what}: "
                          "use federation.robust.aggregate=mean with it")
    if p.secagg and n_sites < MIN_SECAGG_SITES:
        raise ConfigError(f"federation.secagg.enabled=true needs at least {MIN_SECAGG_SITES} sites "
                          f"(federation.sites has {n_sites}): with two, each site can subtract its own upload "
                          "from the sum and read the other's")


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
