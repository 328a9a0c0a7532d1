"""Tensors in and out of Flower records, and the bytes they take on the wire.

Tensors travel in the run's transport precision (`federation.transport`): float32 by
default, or float16 / bfloat16 to halve the PEFT bytes of every round. Flower's
`ArrayRecord` refuses bfloat16, so bfloat16 travels as its raw 16 bits (an int16 array)
and is read back as such; the receiver gets float32 tensors either way and keeps its
own state in float32. Byte counts are taken from the records actually sent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from flwr.app import ArrayRecord, RecordDict
from flwr.common import Parameters, ndarrays_to_parameters, parameters_to_ndarrays

from petite_fl.errors import PetiteError
from petite_fl.federation.fields import check_transport

ARRAYS = "arrays"
#: Flower's legacy layout (FitIns/FitRes as records), read by its SecAgg+ and DP-clipping mods
FITINS, FITRES = "fitins.parameters", "fitres.parameters"
#: federation.transport → the dtype of floating tensors on the wire
TRANSPORTS = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.int16}


def to_record(tensors: Mapping[str, torch.Tensor], transport: str = "float32") -> ArrayRecord:
    """A state dict as an ArrayRecord in the transport precision (names kept)."""
    check_transport(transport)
    out = {}
    for name, t in tensors.items():
        t = t.detach().to("cpu")
        if t.is_floating_point():
            if transport == "bfloat16":
                t = t.to(torch.bfloat16).view(torch.int16)
            else:
                t = t.to(torch.float16 if transport == "float16" else torch.float32)
        out[name] = t.contiguous()
    return ArrayRecord(out) if out else ArrayRecord()


def from_record(record: ArrayRecord | None, transport: str = "float32") -> dict[str, torch.Tensor]:
    """Tensors of a record sent with `to_record(…, transport)`, as float32.

    A floating tensor that did not travel in the announced precision is refused: the
    sender is misconfigured, and reading it anyway would hide that.
    """
    check_transport(transport)
    if record is None or not len(record):
        return {}
    wire = TRANSPORTS[transport]
    out = {}
    for name, t in record.to_torch_state_dict().items():
        if transport == "float32" and not t.is_floating_point():
            out[name] = t  # integer buffers (never shared today) travel as they are
            continue
        if t.dtype != wire:
            raise PetiteError(f"tensor '{name}' travelled as {t.dtype}, not as {transport} (federation.transport)")
        out[name] = (t.view(torch.bfloat16) if transport == "bfloat16" else t).float()
    return out


def record_bytes(content: RecordDict) -> int:
    """Bytes of every array a message carries (its tensor payload)."""
    return int(sum(rec.count_bytes() for rec in content.array_records.values()))


def _value_bytes(value: object) -> int:
    if isinstance(value, (bytes, str)):
        return len(value)
    if isinstance(value, list):
        return sum(_value_bytes(v) for v in value)
    return 8  # int, float, bool: as Flower counts them


def content_bytes(content: RecordDict) -> int:
    """Bytes of every record a message carries: arrays, configs and metrics.

    SecAgg+'s keys and masked vectors travel as bytes in config records. Counted by hand for
    configs because Flower's `ConfigRecord.count_bytes` fails on an empty list (flwr 1.42).
    """
    arrays = sum(rec.count_bytes() for rec in content.array_records.values())
    configs = sum(len(k) + _value_bytes(v) for rec in content.config_records.values() for k, v in rec.items())
    metrics = sum(len(k) + _value_bytes(v) for rec in content.metric_records.values() for k, v in rec.items())
    return int(arrays + configs + metrics)


def to_parameters(tensors: Mapping[str, torch.Tensor], names: Sequence[str]) -> Parameters:
    """Legacy Parameters are an unnamed list: the order is the sorted shared names, sent alongside."""
    return ndarrays_to_parameters([tensors[n].detach().cpu().numpy() for n in names])


def from_parameters(parameters: Parameters, names: Sequence[str], like: Mapping[str, torch.Tensor] | None = None,
                    ) -> dict[str, torch.Tensor]:
    arrays = parameters_to_ndarrays(parameters)
    if len(arrays) != len(names):
        raise PetiteError(f"{len(arrays)} arrays for {len(names)} shared tensor names")
    out = {}
    for n, a in zip(names, arrays, strict=True):
        t = torch.from_numpy(np.array(a, copy=True))
        out[n] = t.to(like[n].dtype) if like is not None else t
    return out


def check_secagg_range(tensors: Mapping[str, torch.Tensor], clipping_range: float | None) -> None:
    """Refuse a value SecAgg+ would clip silently."""
    if clipping_range is None:
        return
    for name, t in tensors.items():
        peak = float(t.abs().max()) if t.numel() else 0.0
        if peak > clipping_range:
            raise PetiteError(f"shared tensor '{name}' has a value of magnitude {peak:.3g}, beyond "
                              f"federation.secagg.clipping_range={clipping_range:g}: SecAgg+ would clip it "
                              "silently; raise the range")
