"""The wire format of the typed messages: each kind's encoder and decoder, in one table.

The core builds and reads dataclasses (`federation.messages`); only this module knows the
record keys. A decoder validates what it reads (types, ranges, finiteness) field by field
(`federation.fields`), so that a malformed reply is one line of refusal naming the message
and the field. Replies are encoded and decoded knowing the instruction they answer
(`asked`): a train reply travels in Flower's legacy FitRes layout when its instruction did.
The hello and its reply are read protocol version first (`messages.check_protocol`): a peer of another
version gets the line naming both versions, never an error about a field it lays out differently.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any, TypeVar

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.common import Code, FitIns, FitRes, Status
from flwr.compat.common import recorddict_compat as compat

from petite_fl.federation.fields import (
    Unreadable,
    bad_name,
    config_of,
    flag,
    get,
    json_field,
    name,
    number_metrics,
    text,
    whole,
)
from petite_fl.federation.flower.records import (
    FITINS,
    FITRES,
    check_secagg_range,
    from_parameters,
    from_record,
    to_parameters,
    to_record,
)
from petite_fl.federation.messages import (
    VERSION,
    BackboneOffer,
    BackboneRes,
    EvaluateIns,
    EvaluateRes,
    Hello,
    HelloRes,
    TrainIns,
    TrainRes,
    check_protocol,
)

_ARRAYS, _CONFIG, _METRICS = "arrays", "config", "metrics"
_NUM_EXAMPLES = "num-examples"  # Flower's own name for the averaging weight
#: the config key Flower's fixedclipping_mod reads the clipping norm from
_CLIP_KEY = "clipping_norm"

M = TypeVar("M")


# -- handshake ------------------------------------------------------------------------------


def _versions(m: Hello | HelloRes) -> dict[str, Any]:
    """The two keys every version of the hello and its reply carries in the same place (`messages.PROTOCOL`).
    "run" and "config" keep their place too: a site from before versions still reads such a hello and
    answers, unversioned, so that the coordinator names both versions (docs: the versioned wire)."""
    return {"protocol": m.protocol, "petite_fl": m.petite_fl}


def _protocol_first(content: RecordDict, us: str, them: str) -> None:
    """Refuse a peer of another protocol before reading any other field (`messages.check_protocol`)."""
    c = content.config_records.get(_CONFIG) or {}
    check_protocol(c.get("protocol"), c.get("petite_fl"), us, them)


def _version(c: dict[str, Any], what: str) -> str:
    value = get(c, "petite_fl", what)
    if not isinstance(value, str) or not VERSION.fullmatch(value):
        raise Unreadable(f"{what}: 'petite_fl' is not a petite-fl version")
    return value


def _encode_hello(m: Hello, asked: Any = None) -> RecordDict:
    return RecordDict({_CONFIG: ConfigRecord({**_versions(m), "run": m.run, "config": json.dumps(m.config)})})


def _decode_hello(content: RecordDict, asked: Any = None) -> Hello:
    _protocol_first(content, "site", "the coordinator")
    c = config_of(content, "hello")
    config = json_field(c, "config", "hello")
    if not isinstance(config, dict):
        raise Unreadable("hello: 'config' is not a mapping")
    return Hello(name(c, "run", "hello"), config, c["protocol"], _version(c, "hello"))


def _encode_hello_res(m: HelloRes, asked: Hello | None = None) -> RecordDict:
    return RecordDict({_CONFIG: ConfigRecord({**_versions(m), "site": m.site, "held": ",".join(m.held),
                                              "num_examples": m.num_examples, "device": m.device})})


def _decode_hello_res(content: RecordDict, asked: Hello | None = None) -> HelloRes:
    said = (content.config_records.get(_CONFIG) or {}).get("site")
    _protocol_first(content, "coordinator", f"site {said}" if bad_name(said) is None else "a site")
    c = config_of(content, "hello reply")
    held = get(c, "held", "hello reply")
    if not isinstance(held, str):
        raise Unreadable(f"hello reply: 'held' must be a comma-separated string, got {held!r}")
    return HelloRes(text(c, "site", "hello reply"), tuple(h for h in held.split(",") if h),
                    whole(c, "num_examples", "hello reply", 1), text(c, "device", "hello reply"),
                    c["protocol"], _version(c, "hello reply"))


def _encode_offer(m: BackboneOffer, asked: Any = None) -> RecordDict:
    return RecordDict({_ARRAYS: ArrayRecord(m.tensors),
                       _CONFIG: ConfigRecord({"run": m.run, "meta": json.dumps(m.meta)})})


def declared_tensors(content: RecordDict) -> dict[str, Any]:
    """An offered backbone's tensors as their headers declare them: shape-only (meta) tensors, nothing
    decoded or allocated, so that a site's policy can refuse a backbone too large before Flower's
    decoder allocates what a 100-byte header claims. Each tensor's npy header (what the decoder
    allocates from) must agree with the shape its record declares."""
    import torch
    from flwr.common.constant import SType
    from numpy.lib import format as npy

    record = content.array_records.get(_ARRAYS)
    if record is None or not len(record):
        raise Unreadable("backbone offer: no tensors")
    out = {}
    for key, array in record.items():
        stream = io.BytesIO(array.data)
        try:
            version = npy.read_magic(stream) if array.stype == SType.NUMPY else None
            read_header = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}[version]
            shape = tuple(read_header(stream)[0])
        except (KeyError, ValueError, TypeError, EOFError) as exc:
            raise Unreadable(f"backbone offer: tensor {key[:80]!r} has no readable header "
                             f"({type(exc).__name__})") from None
        if shape != tuple(array.shape):
            raise Unreadable(f"backbone offer: tensor {key[:80]!r} declares shape {str(shape)[:60]} in its header "
                             f"and {str(tuple(array.shape))[:60]} in its record")
        out[key] = torch.empty(shape, device="meta")
    return out


def _decode_offer(content: RecordDict, asked: Any = None) -> BackboneOffer:
    c = config_of(content, "backbone offer")
    meta = json_field(c, "meta", "backbone offer")
    if not isinstance(meta, dict) or not {"model", "config", "sha256"} <= set(meta):
        raise Unreadable("backbone offer: 'meta' lacks model, config or sha256")
    if _ARRAYS not in content.array_records:
        raise Unreadable("backbone offer: no tensors")
    return BackboneOffer(name(c, "run", "backbone offer"), content.array_records[_ARRAYS].to_torch_state_dict(), meta)


def _encode_backbone_res(m: BackboneRes, asked: BackboneOffer | None = None) -> RecordDict:
    return RecordDict({_CONFIG: ConfigRecord({"stored": m.stored})})


def _decode_backbone_res(content: RecordDict, asked: BackboneOffer | None = None) -> BackboneRes:
    stored = text(config_of(content, "backbone reply"), "stored", "backbone reply")
    if asked is not None and stored != asked.meta["sha256"]:
        raise Unreadable(f"backbone reply: stored {stored[:12]}…, not the offered backbone")
    return BackboneRes(stored)


# -- rounds ---------------------------------------------------------------------------------


def _train_fields(m: TrainIns) -> dict[str, Any]:
    out = {"run": m.run, "round": m.round, "rounds": m.rounds, "steps": m.steps,
           "sha256": m.sha256, "validate": m.validate,
           "weight": "uniform" if m.uniform_weight else "examples", "transport": m.transport}
    if m.secagg_range is not None:
        out["secagg_clipping_range"] = m.secagg_range
    if m.max_weight is not None:
        out["max_weight"] = m.max_weight
    if m.clipping_norm is not None:
        out[_CLIP_KEY] = m.clipping_norm
    return out


def fitins(m: TrainIns) -> FitIns:
    """The legacy FitIns of a train instruction (SecAgg+'s workflow hands it out itself)."""
    return FitIns(to_parameters(m.tensors, m.names), {**_train_fields(m), "names": json.dumps(m.names)})


def _encode_train(m: TrainIns, asked: Any = None) -> RecordDict:
    if m.legacy:
        return compat.fitins_to_recorddict(fitins(m), keep_input=True)
    return RecordDict({_ARRAYS: to_record(m.tensors, m.transport), _CONFIG: ConfigRecord(_train_fields(m))})


def _decode_train(content: RecordDict, asked: Any = None) -> TrainIns:
    what = "train message"
    if FITINS in content.array_records:
        ins = compat.recorddict_to_fitins(content, keep_input=True)
        c = dict(ins.config)
        tensors = from_parameters(ins.parameters, json_field(c, "names", what))
    else:
        c = config_of(content, what)
        tensors = from_record(content.array_records.get(_ARRAYS), text(c, "transport", what))
    return TrainIns(name(c, "run", what), whole(c, "round", what, 1), whole(c, "rounds", what, 1),
                    whole(c, "steps", what, 1), text(c, "sha256", what), flag(c, "validate", what),
                    text(c, "weight", what) == "uniform", tensors, str(c.get("transport", "float32")),
                    float(c[_CLIP_KEY]) if _CLIP_KEY in c else None,
                    float(c["secagg_clipping_range"]) if "secagg_clipping_range" in c else None,
                    whole(c, "max_weight", what, 1) if "max_weight" in c else None)


def _encode_train_res(m: TrainRes, asked: TrainIns) -> RecordDict:
    if asked.legacy:  # a FitRes: what SecAgg+ masks and fixedclipping_mod clips
        check_secagg_range(m.tensors, asked.secagg_range)
        res = FitRes(Status(Code.OK, "ok"), to_parameters(m.tensors, asked.names), m.num_examples,
                     {**m.metrics, "backbone_sha256": m.backbone_sha256})
        return compat.fitres_to_recorddict(res, keep_input=True)
    arrays = to_record(m.tensors, asked.transport) if m.tensors else ArrayRecord()
    return RecordDict({_ARRAYS: arrays, _METRICS: MetricRecord({**m.metrics, _NUM_EXAMPLES: m.num_examples}),
                       _CONFIG: ConfigRecord({"backbone_sha256": m.backbone_sha256})})


def _decode_train_res(content: RecordDict, asked: TrainIns) -> TrainRes:
    """Tensors keep the dtype they came in, for the server's checks to judge."""
    what = "train reply"
    if FITRES in content.array_records:
        res = compat.recorddict_to_fitres(content, keep_input=True)
        m = dict(res.metrics)
        return TrainRes(from_parameters(res.parameters, asked.names), whole({"n": res.num_examples}, "n", what, 1),
                        text(m, "backbone_sha256", what), number_metrics(m, what, ("backbone_sha256",)))
    m = dict(content.metric_records[_METRICS]) if _METRICS in content.metric_records else {}
    c = config_of(content, what)
    return TrainRes(from_record(content.array_records.get(_ARRAYS), asked.transport),
                    whole(m, _NUM_EXAMPLES, what, 1), text(c, "backbone_sha256", what),
                    number_metrics(m, what, (_NUM_EXAMPLES,)))


def _encode_evaluate(m: EvaluateIns, asked: Any = None) -> RecordDict:
    return RecordDict({_ARRAYS: to_record(m.tensors, m.transport), _CONFIG: ConfigRecord({
        "run": m.run, "round": m.round, "sha256": m.sha256, "splits": ",".join(m.splits),
        "transport": m.transport})})


def _decode_evaluate(content: RecordDict, asked: Any = None) -> EvaluateIns:
    what = "evaluate message"
    c = config_of(content, what)
    transport = text(c, "transport", what)
    return EvaluateIns(name(c, "run", what), whole(c, "round", what, 0), text(c, "sha256", what),
                       tuple(text(c, "splits", what).split(",")),
                       from_record(content.array_records.get(_ARRAYS), transport), transport)


def _encode_evaluate_res(m: EvaluateRes, asked: EvaluateIns | None = None) -> RecordDict:
    config = ConfigRecord({"adapter": m.adapter}) if m.adapter else ConfigRecord()
    return RecordDict({_METRICS: MetricRecord(m.metrics), _CONFIG: config})


def _decode_evaluate_res(content: RecordDict, asked: EvaluateIns | None = None) -> EvaluateRes:
    """Numbers are checked here; their meaning (counts, one value per subject) by `server.evaluation`."""
    what = "evaluate reply"
    m = dict(content.metric_records[_METRICS]) if _METRICS in content.metric_records else {}
    c = content.config_records.get(_CONFIG)
    adapter = c.get("adapter") if c is not None else None
    return EvaluateRes(number_metrics(m, what, lists=True), str(adapter) if isinstance(adapter, str) else None)


#: message type → (encoder, decoder); both take the instruction a reply answers as `asked`
CODECS: dict[type, tuple[Callable[..., RecordDict], Callable[..., Any]]] = {
    Hello: (_encode_hello, _decode_hello),
    HelloRes: (_encode_hello_res, _decode_hello_res),
    BackboneOffer: (_encode_offer, _decode_offer),
    BackboneRes: (_encode_backbone_res, _decode_backbone_res),
    TrainIns: (_encode_train, _decode_train),
    TrainRes: (_encode_train_res, _decode_train_res),
    EvaluateIns: (_encode_evaluate, _decode_evaluate),
    EvaluateRes: (_encode_evaluate_res, _decode_evaluate_res),
}


def encode(message: Any, asked: Any = None) -> RecordDict:
    """A typed message as the records Flower carries (a reply: knowing the instruction it answers)."""
    return CODECS[type(message)][0](message, asked)


def decode(kind: type[M], content: RecordDict, asked: Any = None) -> M:
    """Records read back as a message of `kind`, validated field by field (raises `Unreadable`)."""
    return CODECS[kind][1](content, asked)
