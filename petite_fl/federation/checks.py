"""Whether one site's update may be averaged: a pure check, decided before any averaging.

The coordinator trusts no reply it has not validated: the weight must be a positive
whole number, the update made on the run's backbone, its tensors exactly the shared set
(names, shapes, dtypes), finite, and no farther from the global than an honest site's
optimiser can move it in one round.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Verdict:
    """`reason` is None for an update that may be averaged; `norm` is its distance to the global."""

    reason: str | None
    norm: float | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None


def max_update_norm(setting: Any, lr: float, steps: int, n: int) -> float:
    """The L2 norm beyond which an update is implausible for an honest site.

    `auto`: an Adam-family step moves each parameter by at most about the learning rate,
    so `steps` steps move n parameters by at most lr·steps·√n; ten times that.
    """
    if setting is None or str(setting) == "auto":
        return 10.0 * float(lr) * steps * max(1, n) ** 0.5
    return float(setting)


def check_update(upload: Mapping[str, torch.Tensor], weight: Any, made_on: str,
                 expected: Mapping[str, torch.Tensor], sha: str, bound: float) -> Verdict:
    """Why `upload` cannot be averaged against the global `expected`, or an ok verdict with its norm."""
    if not isinstance(weight, int) or isinstance(weight, bool) or weight <= 0:
        return Verdict(f"reply with an invalid num-examples ({weight!r})")
    if made_on != sha:
        return Verdict(f"update made on backbone {made_on[:12]}…, not on {sha[:12]}…")
    if set(upload) != set(expected):
        diff = sorted(set(upload) ^ set(expected))[:3]
        return Verdict(f"tensor names differ from the shared set ({diff})")
    sq = 0.0
    for name, t in upload.items():
        ref = expected[name]
        if tuple(t.shape) != tuple(ref.shape):
            return Verdict(f"tensor '{name}' has shape {tuple(t.shape)}, expected {tuple(ref.shape)}")
        if t.dtype != ref.dtype:
            return Verdict(f"tensor '{name}' has dtype {t.dtype}, expected {ref.dtype}")
        if not torch.isfinite(t).all():
            return Verdict(f"tensor '{name}' has NaN or Inf values")
        sq += float(((t.double() - ref.double()) ** 2).sum())
    norm = sq**0.5
    if norm > bound:
        return Verdict(f"update norm {norm:.4g} exceeds federation.robust.max_update_norm ({bound:.4g})", norm)
    return Verdict(None, norm)
