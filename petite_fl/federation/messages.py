"""The messages of a federated run, typed: what the server and a site say to each other.

Every message is a frozen dataclass here; the core (`server.coordinator`, `site.endpoint`)
builds and reads only these. Their wire format lives at the Flower edge
(`federation.flower.codec`), which also validates what it reads (types, ranges,
finiteness), so a malformed reply becomes one line of refusal at the server instead of an
exception deep inside a round.

Flow: `Hello` (the run's site config, once per run) → `HelloRes`; `BackboneOffer` to
sites that lack the backbone → `BackboneRes`; rounds of `TrainIns` → `TrainRes`;
`EvaluateIns` → `EvaluateRes`. Train messages travel in Flower's legacy FitIns/FitRes
layout when a protection needs it (`TrainIns.legacy`: SecAgg+ and client-side DP clipping
are Flower mods that read only that layout).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

Tensors = dict[str, torch.Tensor]


# -- handshake ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    """Server → site, once per run: the run's name and the settings a site trains with."""

    KIND: ClassVar[str] = "query.hello"
    run: str
    config: dict[str, Any]  # the resolved sections of the run config a site uses (see runconfig.SITE_SECTIONS)


@dataclass(frozen=True)
class HelloRes:
    """Site → server: who it is, what it holds and how much it trains on."""

    site: str
    held: tuple[str, ...]
    num_examples: int
    device: str


@dataclass(frozen=True)
class BackboneOffer:
    """Server → a site without it: the frozen backbone and its metadata (model, config, hash)."""

    KIND: ClassVar[str] = "query.backbone"
    run: str
    tensors: Tensors
    meta: dict[str, Any]


@dataclass(frozen=True)
class BackboneRes:
    stored: str  # the SHA-256 the site now holds


# -- rounds ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainIns:
    """Server → site: one round's global shared tensors and budget."""

    KIND: ClassVar[str] = "train"
    run: str
    round: int
    rounds: int
    steps: int
    sha256: str                       # the backbone the update must be made on
    validate: bool                    # evaluate the model the round starts from
    uniform_weight: bool              # every site weighs 1 (DP's plain mean), else its training scans
    tensors: Tensors
    transport: str = "float32"        # precision of floating tensors on the wire
    clipping_norm: float | None = None    # client-side DP clipping (Flower's fixedclipping_mod)
    secagg_range: float | None = None     # SecAgg+ clipping range: a site refuses values beyond it
    max_weight: int | None = None         # the most this site weighs (the coordinator's bound on its claim)

    @property
    def legacy(self) -> bool:
        """In Flower's FitIns layout, which its SecAgg+ and clipping mods read."""
        return self.clipping_norm is not None or self.secagg_range is not None

    @property
    def names(self) -> list[str]:
        return sorted(self.tensors)


@dataclass(frozen=True)
class TrainRes:
    """Site → server: its shared tensors after the round, its weight and its metrics."""

    tensors: Tensors
    num_examples: int
    backbone_sha256: str              # the backbone the update was made on
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class EvaluateIns:
    """Server → site: the final global shared tensors; evaluate on these splits."""

    KIND: ClassVar[str] = "evaluate"
    run: str
    round: int
    sha256: str
    splits: tuple[str, ...]
    tensors: Tensors
    transport: str = "float32"


@dataclass(frozen=True)
class EvaluateRes:
    """Site → server: final metrics (means, and per test subject by position) and its adapter file."""

    metrics: dict[str, Any]
    adapter: str | None = None


#: what each instruction is answered with
REPLIES: dict[type, type] = {Hello: HelloRes, BackboneOffer: BackboneRes, TrainIns: TrainRes, EvaluateIns: EvaluateRes}
#: message type → instruction class (the site side reads by type)
BY_KIND: dict[str, type] = {cls.KIND: cls for cls in REPLIES}
