"""The messages of a federated run, typed, with their one wire format.

Every message the server and a site exchange is a dataclass here, and only its own
`to_record` / `from_record` know the record keys; `from_record` validates what it reads
(types, ranges, finiteness), so a malformed reply becomes one line of refusal at the
server instead of an exception deep inside a round. The core (`coordinator`, `endpoint`)
never sees a record; Flower is imported only when a record is built or read.

Flow: `Hello` (the run's site config, once per run) → `HelloRes`; `BackboneOffer` to
sites that lack the backbone → `BackboneRes`; rounds of `TrainIns` → `TrainRes`;
`EvaluateIns` → `EvaluateRes`. Train messages travel in Flower's legacy FitIns/FitRes
layout when a protection needs it (SecAgg+ and client-side DP clipping are Flower mods
that read only that layout).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from petite_fl.federation.fields import Unreadable, config_of, flag, get, json_field, name, number_metrics, text, whole

Tensors = dict[str, torch.Tensor]
_ARRAYS, _CONFIG, _METRICS = "arrays", "config", "metrics"
_NUM_EXAMPLES = "num-examples"  # Flower's own name for the averaging weight
#: the config key Flower's fixedclipping_mod reads the clipping norm from
_CLIP_KEY = "clipping_norm"


# -- handshake ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    """Server → site, once per run: the run's name and the settings a site trains with."""

    KIND: ClassVar[str] = "query.hello"
    run: str
    config: dict[str, Any]  # the resolved sections of the run config a site uses (see runconfig.SITE_SECTIONS)

    def to_record(self):
        from flwr.app import ConfigRecord, RecordDict

        return RecordDict({_CONFIG: ConfigRecord({"run": self.run, "config": json.dumps(self.config)})})

    @classmethod
    def from_record(cls, content) -> Hello:
        c = config_of(content, "hello")
        config = json_field(c, "config", "hello")
        if not isinstance(config, dict):
            raise Unreadable("hello: 'config' is not a mapping")
        return cls(name(c, "run", "hello"), config)


@dataclass(frozen=True)
class HelloRes:
    """Site → server: who it is, what it holds and how much it trains on."""

    site: str
    held: tuple[str, ...]
    num_examples: int
    device: str

    def to_record(self, asked: Hello | None = None):
        from flwr.app import ConfigRecord, RecordDict

        return RecordDict({_CONFIG: ConfigRecord({"site": self.site, "held": ",".join(self.held),
                                                  "num_examples": self.num_examples, "device": self.device})})

    @classmethod
    def from_record(cls, content, asked: Hello | None = None) -> HelloRes:
        c = config_of(content, "hello reply")
        held = get(c, "held", "hello reply")
        if not isinstance(held, str):
            raise Unreadable(f"hello reply: 'held' must be a comma-separated string, got {held!r}")
        return cls(text(c, "site", "hello reply"), tuple(h for h in held.split(",") if h),
                   whole(c, "num_examples", "hello reply", 1), text(c, "device", "hello reply"))


@dataclass(frozen=True)
class BackboneOffer:
    """Server → a site without it: the frozen backbone and its metadata (model, config, hash)."""

    KIND: ClassVar[str] = "query.backbone"
    run: str
    tensors: Tensors
    meta: dict[str, Any]

    def to_record(self):
        from flwr.app import ArrayRecord, ConfigRecord, RecordDict

        return RecordDict({_ARRAYS: ArrayRecord(self.tensors),
                           _CONFIG: ConfigRecord({"run": self.run, "meta": json.dumps(self.meta)})})

    @classmethod
    def from_record(cls, content) -> BackboneOffer:
        c = config_of(content, "backbone offer")
        meta = json_field(c, "meta", "backbone offer")
        if not isinstance(meta, dict) or not {"model", "config", "sha256"} <= set(meta):
            raise Unreadable("backbone offer: 'meta' lacks model, config or sha256")
        if _ARRAYS not in content.array_records:
            raise Unreadable("backbone offer: no tensors")
        return cls(name(c, "run", "backbone offer"), content.array_records[_ARRAYS].to_torch_state_dict(), meta)


@dataclass(frozen=True)
class BackboneRes:
    stored: str  # the SHA-256 the site now holds

    def to_record(self, asked: BackboneOffer | None = None):
        from flwr.app import ConfigRecord, RecordDict

        return RecordDict({_CONFIG: ConfigRecord({"stored": self.stored})})

    @classmethod
    def from_record(cls, content, asked: BackboneOffer | None = None) -> BackboneRes:
        stored = text(config_of(content, "backbone reply"), "stored", "backbone reply")
        if asked is not None and stored != asked.meta["sha256"]:
            raise Unreadable(f"backbone reply: stored {stored[:12]}…, not the offered backbone")
        return cls(stored)


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

    @property
    def legacy(self) -> bool:
        """In Flower's FitIns layout, which its SecAgg+ and clipping mods read."""
        return self.clipping_norm is not None or self.secagg_range is not None

    @property
    def names(self) -> list[str]:
        return sorted(self.tensors)

    def _fields(self) -> dict[str, Any]:
        out = {"run": self.run, "round": self.round, "rounds": self.rounds, "steps": self.steps,
               "sha256": self.sha256, "validate": self.validate,
               "weight": "uniform" if self.uniform_weight else "examples", "transport": self.transport}
        if self.secagg_range is not None:
            out["secagg_clipping_range"] = self.secagg_range
        if self.clipping_norm is not None:
            out[_CLIP_KEY] = self.clipping_norm
        return out

    def fitins(self):
        """The legacy FitIns (SecAgg+'s workflow hands it out itself)."""
        from flwr.common import FitIns

        from petite_fl.federation.flower.records import to_parameters

        return FitIns(to_parameters(self.tensors, self.names), {**self._fields(), "names": json.dumps(self.names)})

    def to_record(self):
        from flwr.app import ConfigRecord, RecordDict

        if self.legacy:
            from flwr.compat.common import recorddict_compat as compat

            return compat.fitins_to_recorddict(self.fitins(), keep_input=True)
        from petite_fl.federation.flower.records import to_record

        return RecordDict({_ARRAYS: to_record(self.tensors, self.transport), _CONFIG: ConfigRecord(self._fields())})

    @classmethod
    def from_record(cls, content) -> TrainIns:
        from petite_fl.federation.flower.records import FITINS, from_parameters, from_record

        what = "train message"
        if FITINS in content.array_records:
            from flwr.compat.common import recorddict_compat as compat

            ins = compat.recorddict_to_fitins(content, keep_input=True)
            c = dict(ins.config)
            tensors = from_parameters(ins.parameters, json_field(c, "names", what))
        else:
            c = config_of(content, what)
            tensors = from_record(content.array_records.get(_ARRAYS), text(c, "transport", what))
        return cls(name(c, "run", what), whole(c, "round", what, 1), whole(c, "rounds", what, 1),
                   whole(c, "steps", what, 1), text(c, "sha256", what), flag(c, "validate", what),
                   text(c, "weight", what) == "uniform", tensors, str(c.get("transport", "float32")),
                   float(c[_CLIP_KEY]) if _CLIP_KEY in c else None,
                   float(c["secagg_clipping_range"]) if "secagg_clipping_range" in c else None)


@dataclass(frozen=True)
class TrainRes:
    """Site → server: its shared tensors after the round, its weight and its metrics."""

    tensors: Tensors
    num_examples: int
    backbone_sha256: str              # the backbone the update was made on
    metrics: dict[str, float] = field(default_factory=dict)

    def to_record(self, asked: TrainIns):
        from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

        if asked.legacy:  # a FitRes: what SecAgg+ masks and fixedclipping_mod clips
            from flwr.common import Code, FitRes, Status
            from flwr.compat.common import recorddict_compat as compat

            from petite_fl.federation.flower.records import check_secagg_range, to_parameters

            check_secagg_range(self.tensors, asked.secagg_range)
            res = FitRes(Status(Code.OK, "ok"), to_parameters(self.tensors, asked.names), self.num_examples,
                         {**self.metrics, "backbone_sha256": self.backbone_sha256})
            return compat.fitres_to_recorddict(res, keep_input=True)
        from petite_fl.federation.flower.records import to_record

        arrays = to_record(self.tensors, asked.transport) if self.tensors else ArrayRecord()
        return RecordDict({_ARRAYS: arrays, _METRICS: MetricRecord({**self.metrics, _NUM_EXAMPLES: self.num_examples}),
                           _CONFIG: ConfigRecord({"backbone_sha256": self.backbone_sha256})})

    @classmethod
    def from_record(cls, content, asked: TrainIns) -> TrainRes:
        """Read a reply; tensors keep the dtype they came in, for the server's checks to judge."""
        from petite_fl.federation.flower.records import FITRES, from_parameters, from_record

        what = "train reply"
        if FITRES in content.array_records:
            from flwr.compat.common import recorddict_compat as compat

            res = compat.recorddict_to_fitres(content, keep_input=True)
            m = dict(res.metrics)
            return cls(from_parameters(res.parameters, asked.names), whole({"n": res.num_examples}, "n", what, 1),
                       text(m, "backbone_sha256", what), number_metrics(m, what, ("backbone_sha256",)))
        m = dict(content.metric_records[_METRICS]) if _METRICS in content.metric_records else {}
        c = config_of(content, what)
        return cls(from_record(content.array_records.get(_ARRAYS), asked.transport),
                   whole(m, _NUM_EXAMPLES, what, 1), text(c, "backbone_sha256", what),
                   number_metrics(m, what, (_NUM_EXAMPLES,)))


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

    def to_record(self):
        from flwr.app import ConfigRecord, RecordDict

        from petite_fl.federation.flower.records import to_record

        return RecordDict({_ARRAYS: to_record(self.tensors, self.transport), _CONFIG: ConfigRecord({
            "run": self.run, "round": self.round, "sha256": self.sha256, "splits": ",".join(self.splits),
            "transport": self.transport})})

    @classmethod
    def from_record(cls, content) -> EvaluateIns:
        from petite_fl.federation.flower.records import from_record

        what = "evaluate message"
        c = config_of(content, what)
        transport = text(c, "transport", what)
        return cls(name(c, "run", what), whole(c, "round", what, 0), text(c, "sha256", what),
                   tuple(text(c, "splits", what).split(",")),
                   from_record(content.array_records.get(_ARRAYS), transport), transport)


@dataclass(frozen=True)
class EvaluateRes:
    """Site → server: final metrics (means, and per test subject by position) and its adapter file."""

    metrics: dict[str, Any]
    adapter: str | None = None

    def to_record(self, asked: EvaluateIns | None = None):
        from flwr.app import ConfigRecord, MetricRecord, RecordDict

        config = ConfigRecord({"adapter": self.adapter}) if self.adapter else ConfigRecord()
        return RecordDict({_METRICS: MetricRecord(self.metrics), _CONFIG: config})

    @classmethod
    def from_record(cls, content, asked: EvaluateIns | None = None) -> EvaluateRes:
        """Numbers are checked here; their meaning (counts, one value per subject) by `evaluation`."""
        what = "evaluate reply"
        m = dict(content.metric_records[_METRICS]) if _METRICS in content.metric_records else {}
        c = content.config_records.get(_CONFIG)
        adapter = c.get("adapter") if c is not None else None
        return cls(number_metrics(m, what, lists=True), str(adapter) if isinstance(adapter, str) else None)


#: what each instruction is answered with
REPLIES: dict[type, type] = {Hello: HelloRes, BackboneOffer: BackboneRes, TrainIns: TrainRes, EvaluateIns: EvaluateRes}
#: message type → instruction class (the site side reads by type)
BY_KIND: dict[str, type] = {cls.KIND: cls for cls in REPLIES}
