"""Applying a spec to a backbone, and the adapter state that results.

The backbone is frozen first; every method then adds its own parameters, and exactly
those become trainable. Only they form the adapter's state dict (except `full`, whose
"adapter" is the whole network).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from petite_fl.errors import PetiteError
from petite_fl.models.base import Backbone
from petite_fl.peft.registry import get_method
from petite_fl.peft.spec import PeftSpec


@dataclass(frozen=True)
class PeftModelState:
    """What `apply_peft` did: the spec and the names of the trainable tensors, by part."""

    spec: PeftSpec
    trainable: dict[str, str]  # parameter name -> part

    @property
    def names(self) -> list[str]:
        return sorted(self.trainable)


def apply_peft(model: Backbone, spec: PeftSpec) -> PeftModelState:
    """Freeze the backbone and inject the spec's methods, in place."""
    if spec.kind == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return PeftModelState(spec, {n: model.part_of(n) for n, _ in model.named_parameters()})
    backbone_ids = {id(p) for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for part in ("encoder", "decoder"):
        method = getattr(spec, part)
        if method:
            m = get_method(method)
            m.inject(model, part, m.parse_args(model, part, spec.args.get(method, {})))
    if spec.bitfit:
        bitfit = get_method("bitfit")
        for part in ("encoder", "decoder"):
            bitfit.inject(model, part, None, backbone_params=backbone_ids)
    trainable = {}
    for name, param in model.named_parameters():
        # A method may add a tensor it keeps frozen (FFA-LoRA's A): rebuilt from the spec, never trained.
        new = id(param) not in backbone_ids and not getattr(param, "petite_frozen", False)
        param.requires_grad_(new)
        if new:
            trainable[name] = model.part_of(name)
    return PeftModelState(spec, trainable)


def adapter_state_dict(model: nn.Module, state: PeftModelState) -> dict[str, torch.Tensor]:
    """Just the trained tensors, detached, on CPU, contiguous (safetensors-ready)."""
    params = dict(model.named_parameters())
    return {n: params[n].detach().to("cpu").contiguous().clone() for n in state.names}


def load_adapter_state(model: nn.Module, state: PeftModelState, tensors: dict[str, torch.Tensor]) -> None:
    """Load an adapter onto a model prepared with the same spec; names must match exactly."""
    expected, given = set(state.names), set(tensors)
    if expected != given:
        missing, extra = sorted(expected - given)[:5], sorted(given - expected)[:5]
        raise PetiteError(f"adapter does not match the PEFT spec '{state.spec.label}': "
                          f"missing {missing}, unexpected {extra}")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in tensors.items():
            if params[name].shape != tensor.shape:
                raise PetiteError(f"adapter tensor '{name}' has shape {tuple(tensor.shape)}, "
                                  f"the model expects {tuple(params[name].shape)}")
            params[name].copy_(tensor.to(params[name].dtype))


def merge_peft(model: nn.Module, state: PeftModelState) -> None:
    """Fold mergeable methods into the weights (inference); hook order is kept."""
    for method in state.spec.methods():
        with torch.no_grad():
            get_method(method).merge(model)


def count_parameters(model: nn.Module, state: PeftModelState) -> tuple[int, int]:
    """(trainable, backbone) parameter counts; the percentage is their ratio."""
    params = dict(model.named_parameters())
    trainable = sum(params[n].numel() for n in state.names)
    full = state.spec.kind == "full"
    backbone = sum(p.numel() for n, p in params.items()
                   if full or (n not in state.trainable and not getattr(p, "petite_frozen", False)))
    return trainable, backbone
