"""Central differential privacy for the shared tensors, with Flower's DP wrappers and accountant.

Flower's `DifferentialPrivacyServerSideFixedClipping` / `...ClientSideFixedClipping`
clip each site's update (upload − global) to `clipping_norm` (on the server, or at the
site by `fixedclipping_mod`) and add Gaussian noise of stdev z·C/n to the plain mean of
the n updates (DP-FedAvg, McMahan et al., ICLR 2018). The guarantee is client-level: it
hides whether one *site* took part, not one patient. Flower's RDP accountant turns the
rounds into (ε, δ); with five sites and no sampling, expect a large ε (see the README).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from flwr.app import Message, MetricRecord, RecordDict
from flwr.serverapp import (
    GaussianPrivacyEvent,
    NeighboringRelation,
    PrivacyConfig,
    RdpAccountant,
    SamplingMethod,
)
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
)

from petite_fl.federation.flower.records import ARRAYS, from_record, to_record
from petite_fl.federation.server.protections import Protected, Protection

_WEIGHT = "dp-weight"  # every site weighs 1: the noise is calibrated for a plain mean


def _message(tensors: Mapping[str, torch.Tensor]) -> Message:
    return Message(RecordDict({ARRAYS: to_record(tensors), "metrics": MetricRecord({_WEIGHT: 1})}),
                   dst_node_id=0, message_type="train")


def private_mean(p: Protection, current: Mapping[str, torch.Tensor], uploads: Sequence[Mapping[str, torch.Tensor]],
                 seed: int | None = None) -> dict[str, torch.Tensor]:
    """Clip (server mode), take the plain mean and add noise, all by Flower's wrapper.

    The noise generator is seeded with 128 bits from the operating system's CSPRNG for every
    release, never from the run's configuration: a seed anyone can read (the run's `seed` is
    in every site's config) would let them regenerate the noise and subtract it. `seed` is
    for tests of the noise's distribution only.
    """
    n_sites = len(uploads)
    inner = FedAvg(weighted_by_key=_WEIGHT, arrayrecord_key=ARRAYS)
    if p.dp == "server":
        dp: Any = DifferentialPrivacyServerSideFixedClipping(inner, p.noise_multiplier, p.clipping_norm, n_sites)
        # What configure_train would store; petite-fl sends its own messages (see coordinator.py).
        dp.current_arrays = to_record(current)
    else:
        dp = DifferentialPrivacyClientSideFixedClipping(inner, p.noise_multiplier, p.clipping_norm, n_sites)
    # Flower draws the noise from numpy's global generator: seed it for this release alone, and
    # give the caller's generator back untouched (the rest of the run stays deterministic).
    saved = np.random.get_state()
    np.random.seed(np.frombuffer(os.urandom(16), dtype=np.uint32) if seed is None else seed % 2**32)
    try:
        arrays, _ = dp.aggregate_train(0, [_message(u) for u in uploads])
    finally:
        np.random.set_state(saved)
    if arrays is None:
        raise ValueError("Flower's DP wrapper returned no aggregate")
    out = from_record(arrays)
    return {n: out[n].to(current[n].dtype) for n in current}


class PrivacyLedger:
    """The (ε, δ) spent so far: Flower's RDP accountant over the rounds released with noise."""

    def __init__(self, p: Protection, population: int, events: Sequence[Sequence[Any]] = ()) -> None:
        self.p, self.population = p, population
        self.events: list[tuple[float, int]] = []
        self.accountant = RdpAccountant(PrivacyConfig(
            target_delta=p.delta, population_size=population,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION))
        for z, n in events:
            self.add(int(n), float(z))

    def add(self, n_sites: int, noise_multiplier: float | None = None) -> None:
        z = self.p.noise_multiplier if noise_multiplier is None else noise_multiplier
        self.accountant.compose(GaussianPrivacyEvent(noise_multiplier=z, sample_size=n_sites,
                                                     population_size=self.population))
        self.events.append((z, n_sites))

    def spent(self) -> dict[str, Any]:
        if not self.events:
            return {"epsilon": 0.0, "delta": self.p.delta, "releases": 0}
        s = self.accountant.get_privacy_spent()
        return {"epsilon": float(s.epsilon), "delta": float(s.delta), "releases": int(s.num_releases)}


class CentralDP(Protected):
    """Central DP around a strategy: uniform weights, clipping (client mode: checked), noise, ledger."""

    def __init__(self, inner: Any, p: Protection, population: int) -> None:
        super().__init__(inner)
        self.p, self.population = p, population
        self.ledger = PrivacyLedger(p, population)

    def ins_fields(self) -> dict[str, Any]:
        fields = {**super().ins_fields(), "uniform_weight": True}
        if self.p.dp == "client":  # Flower's fixedclipping_mod clips at the site
            fields["clipping_norm"] = self.p.clipping_norm
        return fields

    def refuse(self, norm: float | None) -> str | None:
        # client mode: the site's fixedclipping_mod must have bounded the norm the check measured
        if self.p.dp == "client" and norm is not None and norm > self.p.clipping_norm * (1 + 1e-3):
            return f"update norm {norm:.4g} is not clipped to federation.dp.clipping_norm={self.p.clipping_norm:g}"
        return super().refuse(norm)

    def aggregate(self, current, updates):
        if not current:
            return {}
        # Under SecAgg+ the updates are n copies of the unmasked average: a plain mean of them is
        # itself, so Flower's wrapper calibrates the noise for the n sites in the sum.
        out = private_mean(self.p, current, [u for u, _ in updates])  # noise from the OS, never the config
        self.ledger.add(len(updates))
        return out

    def privacy_events(self) -> list[Any]:
        return list(self.ledger.events)

    def restore_privacy(self, events) -> None:
        self.ledger = PrivacyLedger(self.p, self.population, events)

    def privacy_spent(self) -> dict[str, Any] | None:
        return self.ledger.spent()
