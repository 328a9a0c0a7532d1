"""Whether one site's update may be averaged: a pure check, decided before any averaging.

The coordinator trusts no reply it has not validated: the weight must be a positive
whole number, the update made on the run's backbone, its tensors exactly the shared set
(names, shapes, dtypes), finite, and no farther from the global than an honest site's
optimiser can move it in one round (`honest_update_bound`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
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


def adam_step_bound(t: int, betas: tuple[float, float]) -> float:
    """The most AdamW's step t (1-based, fresh optimiser state) can move one coordinate, in units of lr.

    Cauchy–Schwarz on m_t = (1−β1)·Σ β1^(t−k)·g_k against v_t = (1−β2)·Σ β2^(t−k)·g_k², with
    Adam's bias corrections: whatever the gradients, |m̂_t|/√v̂_t ≤ this (1 at t = 1, 1.16 at t = 20,
    2.2 at t = 100). Adam's ε only makes the step smaller.
    """
    b1, b2 = betas
    r = b1 * b1 / b2
    return ((1 - b1) / math.sqrt(1 - b2) * math.sqrt((1 - r**t) / (1 - r))
            * math.sqrt(1 - b2**t) / (1 - b1**t))


def honest_update_bound(*, lr: float, runs: Sequence[Sequence[float]], n: int, weight_decay: float,
                        global_norm: float, roundoff: float = 0.0, quantum: float = 0.0,
                        betas: tuple[float, float] = (0.9, 0.999)) -> float:
    """The farthest (L2) an honest site's upload can be from the global it was sent.

    `runs` holds, per optimiser run that shaped the upload, the learning-rate factor of each
    of its steps (warm-up + cosine, as the site's trainer applies it). Each coordinate moves by
    at most lr·factor·`adam_step_bound` per step, plus AdamW's decay lr·factor·wd·|θ|; the
    wire adds its rounding (`roundoff`, relative, at the site and back) and SecAgg+ its
    quantization (`quantum` per value). A site that runs petite-fl cannot exceed it, and an
    honest update scaled up by a large factor does (the norm bound of #15).
    """
    steps = sum(f * adam_step_bound(t + 1, betas) for run in runs for t, f in enumerate(run))
    adam = lr * steps * math.sqrt(max(1, n))
    decay = lr * sum(f for run in runs for f in run) * weight_decay * (global_norm + adam)
    moved = adam + decay
    return 1.01 * (moved + roundoff * (2 * global_norm + moved) + quantum * math.sqrt(max(1, n)))


def max_update_norm(setting: Any, honest: float) -> float:
    """federation.robust.max_update_norm: `auto` is the honest bound of this round, else a fixed number."""
    if setting is None or str(setting) == "auto":
        return honest
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
