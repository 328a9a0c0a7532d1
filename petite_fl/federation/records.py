"""Tensors in and out of Flower records, and the bytes they take on the wire.

Flower's `ArrayRecord` refuses bfloat16, so tensors travel as float32 (or their own
dtype when it is float16/float32) and come back in the dtype the receiver's model uses.
Byte counts are taken from the records actually sent, not from a formula.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from flwr.app import ArrayRecord, RecordDict

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"


def to_record(tensors: Mapping[str, torch.Tensor]) -> ArrayRecord:
    """A state dict as an ArrayRecord (names kept; bfloat16 cast to float32)."""
    out = {}
    for name, t in tensors.items():
        t = t.detach().to("cpu")
        if t.dtype == torch.bfloat16:
            t = t.float()
        out[name] = t.contiguous()
    return ArrayRecord(out) if out else ArrayRecord()


def from_record(record: ArrayRecord | None) -> dict[str, torch.Tensor]:
    if record is None or not len(record):
        return {}
    return dict(record.to_torch_state_dict())


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
