"""Sample-weighted averaging of PEFT tensors (FedAvg, McMahan et al., AISTATS 2017), and the
robust coordinate-wise alternatives (`federation.robust.aggregate`).

Hand-written (a few lines) because Flower's strategies average whole ArrayRecords, while
petite-fl averages only the shared subset and must reject inconsistent updates itself
before Flower's own checks end the ServerApp.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from petite_fl.errors import PetiteError


def weighted_average(updates: Sequence[tuple[dict[str, torch.Tensor], int]]) -> dict[str, torch.Tensor]:
    """Average tensors over sites, each weighted by its number of training samples."""
    if not updates:
        raise PetiteError("no updates to aggregate")
    names = set(updates[0][0])
    for i, (tensors, weight) in enumerate(updates):
        if set(tensors) != names:
            raise PetiteError(f"update {i} has tensors {sorted(set(tensors) ^ names)[:5]} the others lack")
        if weight <= 0:
            raise PetiteError(f"update {i} has a non-positive sample count {weight}")
    total = float(sum(w for _, w in updates))
    out = {}
    for name in sorted(names):
        first = updates[0][0][name]
        acc = torch.zeros(first.shape, dtype=torch.float64)
        for tensors, weight in updates:
            t = tensors[name]
            if t.shape != first.shape:
                raise PetiteError(f"tensor '{name}' has shape {tuple(t.shape)} at one site, "
                                  f"{tuple(first.shape)} at another")
            acc += t.detach().to("cpu", torch.float64) * (weight / total)
        out[name] = acc.to(first.dtype)
    return out


def robust_average(updates: Sequence[tuple[dict[str, torch.Tensor], int]], how: str,
                   trim_fraction: float = 0.2) -> dict[str, torch.Tensor]:
    """Coordinate-wise median or trimmed mean of the sites' tensors (unweighted: a weight is a claim).

    Whatever the poisoned sites send, every value stays within the honest sites' range while they
    are a minority (median) or no more than the sites cut at each end (trimmed mean; Yin et al.,
    ICML 2018). numpy's median
    and scipy's `trim_mean` (which cuts int(fraction × sites) at each end) do the work.
    """
    import numpy as np
    from scipy.stats import trim_mean

    if not updates:
        raise PetiteError("no updates to aggregate")
    out = {}
    for name in sorted(updates[0][0]):
        first = updates[0][0][name]
        stack = np.stack([t[name].detach().to("cpu", torch.float64).numpy() for t, _ in updates])
        value = np.median(stack, axis=0) if how == "median" else trim_mean(stack, trim_fraction, axis=0)
        out[name] = torch.from_numpy(np.asarray(value)).reshape(first.shape).to(first.dtype)
    return out


def payload_bytes(tensors: dict[str, torch.Tensor]) -> int:
    """Bytes of tensor data a message carries (names and framing excluded)."""
    return int(sum(t.numel() * t.element_size() for t in tensors.values()))
