"""What a site uploads per round, measured on the real records for any model size.

The same builders the apps use (`to_record` of the strategy's shared tensors, and the
backbone's own record), applied to tensors of a model's real shapes, so the ratio holds
for the paper-size networks that CPU runs never train.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import torch
from flwr.app import ArrayRecord, RecordDict

from petite_fl.federation.flower.records import ARRAYS, record_bytes, to_record
from petite_fl.federation.strategies import build_strategy
from petite_fl.models.registry import build_backbone
from petite_fl.peft.apply import apply_peft
from petite_fl.peft.spec import spec_from_config


def upload_share(model: str, preset: str, peft_cfg: Mapping[str, Any],
                 strategy_cfgs: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """{strategy: {upload_bytes, backbone_bytes, percent}} for one backbone and PEFT spec."""
    out = {}
    for name, cfg in strategy_cfgs.items():
        r = round_payload(model, preset, peft_cfg, cfg)
        out[name] = {"upload_bytes": r["upload_bytes"], "backbone_bytes": r["backbone_bytes"],
                     "percent": r["percent_of_backbone"]}
    return out


@functools.lru_cache(maxsize=4)
def backbone_record_bytes(model: str, preset: str) -> int:
    """Bytes of the record the server distributes the backbone in (sent once per site)."""
    with torch.device("meta"):
        net = build_backbone(model, preset)
    state = {n: torch.zeros(t.shape, dtype=t.dtype) for n, t in net.state_dict().items()}
    return record_bytes(RecordDict({ARRAYS: ArrayRecord(state)}))


def round_payload(model: str, preset: str, peft_cfg: Mapping[str, Any], strategy_cfg: Mapping[str, Any],
                  transport: str = "float32") -> dict[str, Any]:
    """Bytes per site per round, both ways, of one PEFT spec under one strategy and transport.

    Built on PyTorch's meta device, then the shared tensors are made as zeros of their real
    shapes and put through `to_record`, the apps' own builder: a record's size depends on
    names, shapes and dtype, not on values, so paper-size networks take seconds, not minutes.
    The download (the global shared tensors) has the same names and shapes as the upload.
    """
    with torch.device("meta"):
        net = build_backbone(model, preset)
        state = apply_peft(net, spec_from_config(peft_cfg, net))
    params = dict(net.named_parameters())
    shared, _ = build_strategy(strategy_cfg).split(state.trainable)
    tensors = {n: torch.zeros(params[n].shape, dtype=params[n].dtype) for n in shared}
    up = record_bytes(RecordDict({ARRAYS: to_record(tensors, transport)})) if tensors else 0
    backbone = backbone_record_bytes(model, preset)
    trainable = sum(params[n].numel() for n in state.names)
    frozen = sum(p.numel() for n, p in params.items() if n not in state.trainable)
    return {"spec": state.spec.label, "upload_bytes": up, "download_bytes": up, "backbone_bytes": backbone,
            "percent_of_backbone": 100.0 * up / backbone, "trainable_parameters": trainable,
            "shared_parameters": sum(params[n].numel() for n in shared),
            "trainable_percent": 100.0 * trainable / (frozen if state.spec.kind != "full" else trainable)}
