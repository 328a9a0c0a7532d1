"""The settings every job reads before it trains, checked in one place before any work: the
intensity scaling (`data.loader.scaling`, a registered name) and the learning-rate schedule
(`train.warmup`, a fraction of the budget). Each problem is one line naming its key."""

from __future__ import annotations

from omegaconf import DictConfig

from petite_fl.data.scalings import get_scaling
from petite_fl.training.schedule import warmup_fraction


def check_settings(cfg: DictConfig) -> None:
    get_scaling(cfg.data.loader.scaling)
    warmup_fraction(cfg.train)
