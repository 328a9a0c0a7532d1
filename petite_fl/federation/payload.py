"""What a site uploads per round, measured on the real records for any model size.

The same builders the apps use (`to_record` of the strategy's shared tensors, and the
backbone's own record), applied to a freshly built model, so the ratio holds for the
paper-size networks that CPU runs never train.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from flwr.app import ArrayRecord, RecordDict

from petite_fl.federation.records import ARRAYS, record_bytes, to_record
from petite_fl.federation.strategies import build_strategy
from petite_fl.models.registry import build_backbone
from petite_fl.peft.apply import adapter_state_dict, apply_peft
from petite_fl.peft.spec import spec_from_config


def upload_share(model: str, preset: str, peft_cfg: Mapping[str, Any],
                 strategy_cfgs: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """{strategy: {upload_bytes, backbone_bytes, percent}} for one backbone and PEFT spec."""
    torch.manual_seed(0)
    net = build_backbone(model, preset)
    backbone = record_bytes(RecordDict({ARRAYS: ArrayRecord(net.state_dict())}))
    state = apply_peft(net, spec_from_config(peft_cfg, net))
    tensors = adapter_state_dict(net, state)
    out = {}
    for name, cfg in strategy_cfgs.items():
        shared, _ = build_strategy(cfg).split(state.trainable)
        up = record_bytes(RecordDict({ARRAYS: to_record({n: tensors[n] for n in shared})})) if shared else 0
        out[name] = {"upload_bytes": up, "backbone_bytes": backbone, "percent": 100.0 * up / backbone}
    return out
