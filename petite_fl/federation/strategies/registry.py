"""Strategies by name (one file each); `strategy.name` in configs/strategy/ picks one."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from petite_fl.errors import ConfigError
from petite_fl.federation.strategies.base import Strategy

_STRATEGIES: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    _STRATEGIES[cls.name] = cls
    return cls


def available_strategies() -> list[str]:
    _load()
    return sorted(_STRATEGIES)


def build_strategy(cfg: Mapping[str, Any]) -> Strategy:
    _load()
    name = str(cfg.get("name"))
    if name == "pooled":  # configs/strategy/pooled.yaml names the centralised bound, not a federation
        raise ConfigError("strategy=pooled trains on every site's scans in one place: it is `petite compare`'s "
                          "centralised bound (simulation only), not a federated strategy")
    if name not in _STRATEGIES:
        raise ConfigError(f"strategy.name '{name}' is not one of {', '.join(sorted(_STRATEGIES))}")
    return _STRATEGIES[name](cfg)


def _load() -> None:
    from petite_fl.federation.strategies import (  # noqa: F401
        fedavg,
        fedavg_ft,
        local,
        personalized,
        shared_encoder,
    )
