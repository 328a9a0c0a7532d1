"""Strategy algorithms by name (one file each in this package).

A strategy config (configs/strategy/<label>.yaml) names its algorithm, the registered class
(`algorithm: fedavg`), apart from its label (`name: shared-encoder`, used in run names and
logs): a strategy that differs from another only by its sharing rule is a config file.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from petite_fl.errors import ConfigError
from petite_fl.federation.strategies.base import Strategy
from petite_fl.registry import Registry

STRATEGIES: Registry[type[Strategy]] = Registry("strategy algorithm", "petite_fl.federation.strategies")
#: The label of configs/strategy/pooled.yaml: `petite compare`'s centralised arm (one model), no algorithm.
POOLED = "pooled"
#: The labels of the arms that train on every site's scans in one place (configs/strategy/pooled*.yaml):
#: no federated algorithm; `petite compare` runs them in process, in simulation only.
CENTRALISED = (POOLED, "pooled-ft")


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: register a Strategy subclass under its `algorithm`."""
    return STRATEGIES.register(cls.algorithm, cls)


def available_strategies() -> list[str]:
    """The registered algorithms (not the config labels that select them)."""
    return STRATEGIES.names()


def algorithm_of(cfg: Mapping[str, Any]) -> str:
    """The algorithm a strategy config selects; a config without `algorithm` names it by `name`."""
    return str(cfg.get("algorithm") or cfg.get("name"))


def centralised(cfg: Mapping[str, Any]) -> bool:
    """A strategy config that trains on every site's scans in one place (`pooled`, `pooled-ft`): it names no
    federated algorithm (`algorithm: null`) or carries the pooled label. Only a simulation holds every
    site's data; a deployed federation refuses it."""
    return str(cfg.get("name", "")).startswith(POOLED) or ("algorithm" in cfg and cfg.get("algorithm") is None)


def build_strategy(cfg: Mapping[str, Any]) -> Strategy:
    if centralised(cfg):  # the data in one place: not a federation
        raise ConfigError(f"strategy={cfg.get('name')} trains on every site's scans in one place: it is a "
                          "centralised arm of `petite compare` (simulation only), not a federated strategy")
    return STRATEGIES.get(algorithm_of(cfg))(cfg)
