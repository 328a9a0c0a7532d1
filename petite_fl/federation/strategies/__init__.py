"""Federated strategies (registry, one file each)."""

from petite_fl.federation.strategies.base import LocalTraining, Strategy, Update
from petite_fl.federation.strategies.registry import available_strategies, build_strategy, centralised

__all__ = ["LocalTraining", "Strategy", "Update", "available_strategies", "build_strategy", "centralised"]
