"""The learning-rate schedule of a run: linear warm-up over a fraction of its whole budget, then cosine to 0.

The warm-up is a fraction of the run's whole local budget (`train.warmup`), not a number of
steps: a fixed 20-step warm-up never reached the peak rate in a 16-step budget, and spent
20 of 36 steps climbing to it. The budget is every optimiser step the run's model takes at
one place: `petite pretrain` / `finetune` their steps, the pooled arm its steps, a federated
site `rounds × local_steps`, of which round r trains steps [(r − 1)·S, r·S) of this one
schedule. The coordinator's bound on an honest update (`federation/server/checks.py`)
reads the same factors.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from petite_fl.errors import ConfigError


def warmup_fraction(train_cfg: Any) -> float:
    """`train.warmup`, checked: a fraction in [0, 1) of a run's budget (one line otherwise)."""
    raw = train_cfg.get("warmup") if hasattr(train_cfg, "get") else getattr(train_cfg, "warmup", None)
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"train.warmup must be a fraction in [0, 1) of a run's steps, got {raw!r}") from None
    if isinstance(raw, bool) or not 0.0 <= value < 1.0:
        raise ConfigError(f"train.warmup must be a fraction in [0, 1) of a run's steps, got {raw!r}")
    return value


def cosine_with_warmup(warmup: int, total: int) -> Callable[[int], float]:
    """The factor of the peak rate at step `step` (0-based): linear up to 1 over `warmup` steps,
    then half a cosine down to 0 at step `total`."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


@dataclass(frozen=True)
class Schedule:
    """Warm-up over `warmup` × `total` steps (rounded, at least one when the fraction is > 0), then cosine."""

    warmup: float
    total: int

    @classmethod
    def from_config(cls, train_cfg: Any, total: int) -> Schedule:
        return cls(warmup_fraction(train_cfg), int(total))

    @property
    def warmup_steps(self) -> int:
        if self.warmup <= 0 or self.total <= 0:
            return 0
        return min(self.total, max(1, round(self.warmup * self.total)))

    def factor(self, step: int) -> float:
        """The peak rate's factor at `step` (0-based) of the budget."""
        return cosine_with_warmup(self.warmup_steps, self.total)(step)

    def factors(self, offset: int, steps: int) -> list[float]:
        """The factors of steps [offset, offset + steps): one round's slice of the budget."""
        f = cosine_with_warmup(self.warmup_steps, self.total)
        return [f(offset + s) for s in range(steps)]

    def describe(self) -> dict[str, Any]:
        """What a run's summary records of its schedule (for the report to state it)."""
        return {"warmup_fraction": self.warmup, "warmup_steps": self.warmup_steps, "total_steps": self.total,
                "decay": "cosine to 0 over the remaining steps"}
