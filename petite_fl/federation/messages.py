"""The messages of a federated run, typed: what the server and a site say to each other.

Every message is a frozen dataclass here; the core (`server.coordinator`, `site.endpoint`)
builds and reads only these. Their wire format lives at the Flower edge
(`federation.flower.codec`), which also validates what it reads (types, ranges,
finiteness), so a malformed reply becomes one line of refusal at the server instead of an
exception deep inside a round.

Flow: `Hello` (the wire protocol's version and the run's site config, once per run) → `HelloRes`
(the site's protocol version first, then who it is); `BackboneOffer` to
sites that lack the backbone → `BackboneRes`; rounds of `TrainIns` → `TrainRes`;
`EvaluateIns` → `EvaluateRes`. Train messages travel in Flower's legacy FitIns/FitRes
layout when a protection needs it (`TrainIns.legacy`: SecAgg+ and client-side DP clipping
are Flower mods that read only that layout).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from petite_fl import __version__
from petite_fl.errors import PetiteError

Tensors = dict[str, torch.Tensor]

#: The version of the wire protocol, carried by the hello and by its reply. Bump it, in the same commit,
#: with ANY change of a message's fields or of their meaning: a key added, renamed, removed or read
#: differently, a new message kind, a setting a site must now honour. Never move the hello's and the
#: reply's `protocol` and `petite_fl` keys (their "config" record): every version reads them first.
PROTOCOL = 1
#: The first numbered protocol: a peer that sends none runs a petite-fl from before it.
FIRST_PROTOCOL = 1
VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+!_-]{0,39}")  # a PEP 440 version, safe in a line sent to a peer


class ProtocolMismatch(PetiteError):
    """The peer speaks another wire protocol: one line naming both sides' versions (numbers and a
    version string only, so a site may send it whole)."""


def _speaks(protocol: Any, version: Any) -> str:
    if protocol is None:
        return f"no versioned wire protocol (a petite-fl from before wire protocol {FIRST_PROTOCOL})"
    if isinstance(protocol, bool) or not isinstance(protocol, int):
        return "an unreadable wire protocol version"
    shown = version if isinstance(version, str) and VERSION.fullmatch(version) else "unknown"
    return f"{protocol} (petite-fl {shown})"


def check_protocol(protocol: Any, version: Any, us: str, them: str) -> None:
    """Refuse a peer (`them`: "the coordinator", "site scanner4") whose `protocol` is not ours, before any
    other field of its message is read: a peer of another version may have other fields."""
    if isinstance(protocol, int) and not isinstance(protocol, bool) and protocol == PROTOCOL:
        return
    line = (f"this {us} speaks petite-fl wire protocol {PROTOCOL} (petite-fl {__version__}), {them} "
            f"{_speaks(protocol, version)}; install the same petite-fl version at both")
    raise ProtocolMismatch(line, public=f"refused: {line}")


# -- handshake ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    """Server → site, once per run: its wire protocol, the run's name and the settings a site trains with."""

    KIND: ClassVar[str] = "query.hello"
    run: str
    config: dict[str, Any]  # the resolved sections of the run config a site uses (see runconfig.SITE_SECTIONS)
    protocol: int = PROTOCOL          # read first: a site of another protocol refuses before any other field
    petite_fl: str = __version__      # the coordinator's petite-fl, named in that refusal


@dataclass(frozen=True)
class HelloRes:
    """Site → server: who it is, what it holds and how much it trains on."""

    site: str
    held: tuple[str, ...]
    num_examples: int
    device: str
    protocol: int = PROTOCOL          # read first: the coordinator leaves out a site of another protocol
    petite_fl: str = __version__


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
